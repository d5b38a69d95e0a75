"""pneumo ensemble: one graph whose outputs are the members' means, recalibrated on the members' common split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pneumo.cli import main
from pneumo.config import TrainConfig
from pneumo.data import make_split
from pneumo.errors import ModelFileError
from pneumo.evaluation.shifts import TRAINING_CHECKS
from pneumo.inference import Predictor
from pneumo.modelfile import load_model_file
from pneumo.training.ensemble import build_ensemble
from pneumo.training.train import fit
from test_train import make_dataset


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """A synthetic dataset, its patient split as a CSV, and two members (seeds 0 and 1) trained on that split."""
    root = tmp_path_factory.mktemp("ens")
    data = make_dataset(root / "data")
    split = root / "split.csv"
    make_split(data, split, val_fraction=0.25, seed=0)  # held-out acquisition blocks, as the bundled model's
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(
            data_dir=data, out=root / f"m{seed}", arch="cnn-small", pretrained=False, image_size=32, epochs=1,
            batch_size=8, threads=1, cache_dir=root / "cache", split_csv=split, seed=seed, subtype_head=True,
            content_scales=[0.9, 1.0],
        )  # fmt: skip
        runs.append(fit(cfg))
    return data, split, runs


def _outputs(onnx_bytes: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x}), strict=True))


def test_graph_averages_members_and_keeps_the_first_guard(members, tmp_path):
    data, split, runs = members
    out = build_ensemble(runs, tmp_path / "ens.pneumo", data, split, cache_dir=tmp_path / "cache")
    ens, m0, m1 = load_model_file(out), load_model_file(runs[0]), load_model_file(runs[1])
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    got, a, b = _outputs(ens.onnx, x), _outputs(m0.onnx, x), _outputs(m1.onnx, x)
    assert list(got) == list(a) == ["logits", "features", "subtype_logits", "cam"]
    for name in ("logits", "subtype_logits", "cam"):
        np.testing.assert_allclose(got[name], (a[name] + b[name]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["features"], a["features"])  # the first member's guard reads them
    assert not np.allclose(a["logits"], b["logits"])  # two different members, or the mean proves nothing
    assert ens.meta.members == [m0.meta.name, m1.meta.name]
    assert ens.meta.domain_guard == m0.meta.domain_guard and ens.weights is None
    assert ens.meta.preprocessing == m0.meta.preprocessing
    assert ens.meta.training["train_seconds"] == pytest.approx(
        m0.meta.training["train_seconds"] + m1.meta.training["train_seconds"], abs=0.11
    )


def test_operating_point_is_refitted_on_the_common_split(members, tmp_path):
    data, split, runs = members
    out = build_ensemble(runs, tmp_path / "ens.pneumo", data, split, cache_dir=tmp_path / "cache")
    meta = load_model_file(out).meta
    v = meta.validation
    assert meta.training["config"]["split_csv"] == split.name and meta.data["dataset"] == data.name
    assert str(split.parent) not in meta.model_dump_json()  # no path of the machine it was built on
    assert v.measured_on == f"internal validation: {split.name}"
    assert v.n == load_model_file(runs[0]).meta.validation.n
    assert set(v.geometry_shift) == {"worst", *TRAINING_CHECKS}
    assert None not in (v.bacterial_vs_viral_accuracy, v.operating_point, v.cpu_ms_per_image)
    member_blocks = load_model_file(runs[0]).meta.validation.blocks
    assert v.blocks is not None and member_blocks is not None  # the held-out periods, as a run records them
    assert v.blocks.per_block and set(v.blocks.per_block) == set(member_blocks.per_block or {})
    p = Predictor.load(out).predict_one(next(data.rglob("person1_virus_*.png")), "x")
    assert p.in_domain is not None and p.p_normal == pytest.approx(1 - p.probability)


def test_cli_and_refusals(members, tmp_path, tiny_model):
    data, split, runs = members
    out = tmp_path / "cli.pneumo"
    argv = ["ensemble", *map(str, runs), "--data", str(data), "--split", str(split), "--out", str(out)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert load_model_file(out).meta.members
    with pytest.raises(ModelFileError, match="preprocessing"):  # a 64 px model cannot share a 32 px input
        build_ensemble([runs[0], tiny_model], tmp_path / "x.pneumo", data, split)
    with pytest.raises(ModelFileError, match="at least two"):
        build_ensemble([runs[0]], tmp_path / "x.pneumo", data, split)
    with pytest.raises(ModelFileError, match="ensemble"):
        build_ensemble([out, runs[1]], tmp_path / "x.pneumo", data, split)
