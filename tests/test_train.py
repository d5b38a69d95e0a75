"""pneumo.training.train: a few real epochs on a tiny learnable synthetic dataset; resume, kill-resume, balance, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.cli import main
from pneumo.config import TrainConfig
from pneumo.evaluation.calibration import OperatingRule
from pneumo.evaluation.shifts import TRAINING_CHECKS, checked_copies
from pneumo.inference import Predictor
from pneumo.modelfile import LUNG_FIELD, VALIDATION_VERSION, heat_map_filler, load_model_file
from pneumo.training.train import balanced_indices, class_weights, fit

N_PER_CLASS = 24


def make_dataset(root: Path, n: int = N_PER_CLASS, size: int = 48, seed: int = 0) -> Path:
    """Kermany-style names; PNEUMONIA images carry a bright blob, so the task is learnable in two epochs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = 0.3 + 0.3 * yy + 0.05 * rng.standard_normal((size, size))
        Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).save(root / "NORMAL" / f"IM-{i:04d}-0001.png")
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        kind = "bacteria" if i % 2 == 0 else "virus"
        name = f"person{i}_{kind}_{i + 100}.png"
        Image.fromarray((np.clip(base + blob, 0, 1) * 255).astype(np.uint8)).save(root / "PNEUMONIA" / name)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _cfg(dataset: Path, out: Path, cache_dir: Path, **kw) -> TrainConfig:
    base = {
        "data_dir": dataset, "out": out, "arch": "cnn-small", "pretrained": False, "image_size": 32, "epochs": 2,
        "batch_size": 8, "threads": 1, "cache_dir": cache_dir, "val_fraction": 0.25,
    }  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _epochs(run: Path, column: str = "val_auc") -> list[int]:
    """Epochs that logged ``column`` in the run's metrics CSV."""
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get(column)]


@pytest.fixture(scope="module")
def binary_run(dataset, cache_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "binary"
    assert fit(_cfg(dataset, run, cache_dir)) == run / "model.pneumo"
    return run


def test_run_directory(binary_run):
    run = binary_run
    for rel in ("config.yaml", "logs/metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "model.pneumo"):
        assert (run / rel).is_file(), rel
    cfg = TrainConfig.load(run / "config.yaml")
    assert cfg.arch == "cnn-small" and cfg.image_size == 32 and cfg.epochs == 2
    assert _epochs(run) == [0, 1]
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        aucs = [float(r["val_auc"]) for r in csv.DictReader(f) if r.get("val_auc")]
    assert all(0 <= a <= 1 for a in aucs)
    assert max(aucs) >= 0.8  # the blob is easy to see: training really learns
    assert json.loads((run / "timing.json").read_text())["epochs"] == 2


def test_model_file_describes_itself(binary_run):
    mf = load_model_file(binary_run)
    m = mf.meta
    assert m.arch == "cnn-small" and m.task == "binary" and m.class_names == ["NORMAL", "PNEUMONIA"]
    assert m.preprocessing.image_size == 32 and m.preprocessing.normalization == "equalize"
    assert 0 < m.threshold < 1 and m.temperature > 0
    for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "ci95", "cpu_ms_per_image", "measured_on"):
        assert getattr(m.validation, k) is not None, k
    assert m.validation.version == VALIDATION_VERSION and "version" in m.validation.model_fields_set  # a new record
    # the threshold is the worst-case rule's, and the pooled rule's operating point is reported beside it
    op = m.validation.operating_point
    assert op.rule == "worst_case" and op.rules["worst_case"].threshold == m.threshold
    assert op.rules["pooled"].pooled.sensitivity >= m.target_sensitivity  # the pooled rule's promise
    wf = op.rules["worst_case"].worst_framing
    assert None not in (wf.sensitivity, wf.specificity, wf.specificity_of)
    shift = m.validation.geometry_shift
    assert set(shift) == {"worst", *TRAINING_CHECKS}  # the checks that steer training come from the suite
    assert shift["worst"].roc_auc == min(r.roc_auc for k, r in shift.items() if k != "worst")
    assert m.validation.n == m.data["val_images"] > 0
    assert m.domain_guard is not None and m.domain_guard.cutoff > 0
    assert "domain_val_distances" in mf.arrays
    assert m.data["train_images"] + m.data["val_images"] == 2 * N_PER_CLASS
    assert sum(m.data["train_class_counts"]) == m.data["train_images"]
    assert m.training["config"]["arch"] == "cnn-small"
    assert mf.onnx and mf.weights


def test_model_file_carries_normal_training_films_for_the_heat_map(binary_run, dataset, cache_dir):
    """The occlusion map's fillers are the run's NORMAL training images (not validation, not pneumonia) as the
    network sees them: REFERENCE_SAMPLES of them, drawn with seed 0."""
    from pneumo.explain.occlusion import normal_reference
    from pneumo.modelfile import OCCLUSION_REFERENCE
    from pneumo.training.splits import load_splits

    mf = load_model_file(binary_run)
    train, val, _ = load_splits(_cfg(dataset, binary_run.parent, cache_dir))
    want = normal_reference(train.images[train.targets == 0], mf.meta.preprocessing)  # the default: four films
    np.testing.assert_allclose(mf.arrays[OCCLUSION_REFERENCE], want, atol=1e-6)
    wrong = normal_reference(np.concatenate([train.images, val.images]), mf.meta.preprocessing)
    assert np.abs(wrong - want).max() > 1e-3, "the test needs the normals-only films to differ from the pooled ones"
    assert "training X-rays of 4 patients" in heat_map_filler(mf.arrays)  # pneumo info says what the file holds


@pytest.mark.parametrize("kind", ["synthetic", "grey"])
def test_finalisation_can_keep_patients_films_out_of_the_model_file(binary_run, dataset, cache_dir, tmp_path, kind):
    """``--heat-map-filler synthetic`` writes four films drawn from a model of the NORMAL training images (none of
    which is in the file) and says so; ``grey`` writes none."""
    import shutil

    from pneumo.explain.occlusion import synthetic_reference
    from pneumo.modelfile import OCCLUSION_DRAWN_FROM, OCCLUSION_REFERENCE
    from pneumo.preprocess import to_input
    from pneumo.training.splits import load_splits

    run = shutil.copytree(binary_run, tmp_path / "run")
    assert main(["finalize", str(run), "--heat-map-filler", kind]) == 0
    mf = load_model_file(run / "model.pneumo")
    assert mf.meta.training["config"]["heat_map_filler"] == kind
    if kind == "grey":
        assert OCCLUSION_REFERENCE not in mf.arrays and OCCLUSION_DRAWN_FROM not in mf.arrays
        assert "mean grey" in heat_map_filler(mf.arrays)
        return
    train, _, _ = load_splits(_cfg(dataset, binary_run, cache_dir))
    normals = train.images[train.targets == 0]
    pre = mf.meta.preprocessing
    films = mf.arrays[OCCLUSION_REFERENCE]
    np.testing.assert_allclose(films, synthetic_reference(normals, pre), atol=1e-5)
    assert int(mf.arrays[OCCLUSION_DRAWN_FROM]) == len(normals)
    seen = to_input(list(normals), pre)[:, 0]  # no film is any training image, as the network sees it
    assert min(np.abs(f - n).max() for f in films for n in seen) > 0.5 / 255 / pre.std
    assert f"drawn from a model of {len(normals)} normal training films" in heat_map_filler(mf.arrays)


def test_a_damaged_drawn_from_record_is_refused(binary_run):
    from pneumo.modelfile import OCCLUSION_DRAWN_FROM, OCCLUSION_REFERENCE, ModelFileError, check_arrays

    mf = load_model_file(binary_run / "model.pneumo")
    check_arrays({**mf.arrays, OCCLUSION_DRAWN_FROM: np.array(100)}, mf.meta, "m.pneumo")  # well formed
    without = {k: v for k, v in mf.arrays.items() if k != OCCLUSION_REFERENCE}
    for arrays in [{**mf.arrays, OCCLUSION_DRAWN_FROM: bad} for bad in (np.array(1), np.array([5, 6]), np.array(4.0))]:
        with pytest.raises(ModelFileError, match=OCCLUSION_DRAWN_FROM):
            check_arrays(arrays, mf.meta, "m.pneumo")
    with pytest.raises(ModelFileError, match=OCCLUSION_DRAWN_FROM):
        check_arrays({**without, OCCLUSION_DRAWN_FROM: np.array(100)}, mf.meta, "m.pneumo")


def test_trained_model_predicts(binary_run, dataset):
    pred = Predictor.load(binary_run)
    files = sorted(dataset.rglob("*.png"))
    results = list(pred.predict_sources((str(f), f) for f in files))
    assert len(results) == len(files) and not any(r.error for r in results)
    p_pneu = [r.probability for r, f in zip(results, files, strict=True) if f.parent.name == "PNEUMONIA"]
    p_norm = [r.probability for r, f in zip(results, files, strict=True) if f.parent.name == "NORMAL"]
    assert np.mean(p_pneu) > np.mean(p_norm)


def test_training_sees_what_inference_feeds(binary_run, monkeypatch):
    """The tensors the Lightning module feeds the network, in training and in validation, equal what ``to_input``
    makes of the same file at inference from the model file's own preprocessing (augmentation off)."""
    import torch

    from pneumo.imaging import load_image
    from pneumo.preprocess import to_input
    from pneumo.training.splits import load_splits
    from pneumo.training.train import CachedImages, PneumoModule

    pre = load_model_file(binary_run).meta.preprocessing
    cfg = TrainConfig.load(binary_run / "config.yaml")
    cfg = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"enabled": False})})
    train, val, _ = load_splits(cfg)
    module = PneumoModule(cfg)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    seen = []
    forward_all, forward = module.net.forward_all, module.net.forward
    monkeypatch.setattr(module.net, "forward_all", lambda x: seen.append(x.detach().clone()) or forward_all(x))
    monkeypatch.setattr(module.net, "forward", lambda x: seen.append(x.detach().clone()) or forward(x))
    checks = list(checked_copies(val.paths, cfg.image_size).values())
    for split, step, copies in ((train, module.training_step, ()), (val, module.validation_step, checks)):
        items = [CachedImages(split, copies=copies)[i] for i in range(4)]
        batch = (torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))
        seen.clear()
        step(batch, 0)  # the first call is on the images as they are (validation then checks shifted copies)
        expected = to_input([load_image(p, pre.image_size) for p in split.paths[:4]], pre)
        np.testing.assert_allclose(seen[0].numpy(), expected, atol=1e-5)


def test_subtype_task_via_cli(dataset, tmp_path, monkeypatch, capsys):
    from pneumo.cli import main

    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "sub"
    args = ["train", str(dataset), "--out", str(run), "--arch", "cnn-small", "--task", "subtype", "--image-size",
            "32", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--no-pretrained", "--balance", "weights",
            "--val-fraction", "0.25"]  # fmt: skip
    assert main(args) == 0
    assert "model.pneumo" in capsys.readouterr().out
    mf = load_model_file(run)
    assert mf.meta.task == "subtype" and mf.meta.class_names == ["NORMAL", "BACTERIA", "VIRUS"]
    assert mf.meta.validation.subtype_accuracy is not None
    assert TrainConfig.load(run / "config.yaml").balance == "weights"
    p = Predictor.load(run).predict_one(next(dataset.rglob("person1_virus_*.png")), "x")
    assert p.p_normal + p.p_bacterial + p.p_viral == pytest.approx(1.0)
    assert p.p_normal == pytest.approx(1 - p.probability)


def test_binary_task_with_subtype_head(dataset, cache_dir, tmp_path):
    run = tmp_path / "head"
    fit(_cfg(dataset, run, cache_dir, epochs=1, subtype_head=True))
    mf = load_model_file(run)
    assert mf.meta.task == "binary" and mf.meta.class_names == ["NORMAL", "PNEUMONIA"] and mf.meta.has_subtypes
    assert None not in (mf.meta.validation.subtype_accuracy, mf.meta.validation.bacterial_vs_viral_accuracy)
    worst = mf.meta.validation.geometry_shift["worst"]
    assert 0 <= worst.bacterial_vs_viral <= 1 and 0 <= worst.subtype_flipped <= 1
    assert any("bacterial vs viral" in ln and "worst under framing shift" in ln for ln in mf.meta.figures_summary())
    import onnxruntime as ort

    outputs = [o.name for o in ort.InferenceSession(mf.onnx).get_outputs()]
    assert outputs == ["logits", "features", "subtype_logits", "cam"]  # old outputs first, then the heat map
    p = Predictor.load(run).predict_one(next(dataset.rglob("person1_virus_*.png")), "x")
    assert p.p_normal + p.p_bacterial + p.p_viral == pytest.approx(1.0)
    assert p.p_normal == pytest.approx(1 - p.probability)  # the binary head decides, the subtype head splits


def test_lung_field_is_trained_exported_and_refinalized_with_the_network(dataset, cache_dir, tmp_path):
    """``lung_field``: the model file rebuilds the field (arch_kwargs and weights), and its ONNX graph answers the
    same whatever lies outside the field, as the PyTorch twin does; refinalising keeps it."""
    import onnxruntime as ort

    from pneumo.training.export import torch_twin
    from pneumo.training.refinalize import refinalize

    atlas = np.zeros((224, 224), np.uint8)
    atlas[60:160, 30:90] = atlas[60:160, 134:194] = 230  # two lung fields, the centre and the rim outside
    Image.fromarray(atlas).save(tmp_path / "atlas.png")
    run = tmp_path / "field"
    fit(_cfg(dataset, run, cache_dir, epochs=1, lung_field=0.5, augment={"lung_atlas": tmp_path / "atlas.png"}))
    mf = load_model_file(run)
    assert mf.meta.arch_kwargs == {"field_size": 32} and mf.meta.lung_field() == 0.5  # what `pneumo info` says
    (name, check), *others = mf.meta.validation.lung_checks.items()  # a run with an atlas records its lung checks
    assert not others and "validation" in name and "atlas" in name and check.n == mf.meta.data["val_images"]
    assert all(0 <= v <= 1 for v in (check.clean, check.lungs_hidden, check.only_lungs))
    field = torch_twin(mf).input_field.numpy()[0, 0]
    np.testing.assert_array_equal(mf.arrays[LUNG_FIELD], field)  # what the heat maps draw the edge of, without torch
    assert field[16, 8] > 0.9 and field[16, 16] < 0.2 and (field == 0).sum() > 100  # a lung, the centre, a rim
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    y = np.where(field == 0.0, 3.0, x).astype(np.float32)  # only what lies outside the field changed
    sess = ort.InferenceSession(mf.onnx, providers=["CPUExecutionProvider"])
    assert np.array_equal(*(sess.run(["logits"], {"image": v})[0] for v in (x, y)))
    (tmp_path / "atlas.png").unlink()  # a finished run's checkpoint carries its field: no atlas needed any more
    assert refinalize(run) == run / "model.pneumo"
    np.testing.assert_array_equal(torch_twin(load_model_file(run)).input_field.numpy()[0, 0], field)
    np.testing.assert_array_equal(load_model_file(run).arrays[LUNG_FIELD], field)
    assert load_model_file(run).meta.validation.lung_checks == mf.meta.validation.lung_checks  # kept, not lost
    with pytest.raises(ValueError, match=r"lung_field needs augment\.lung_atlas"):
        _cfg(dataset, run, cache_dir, lung_field=0.5)
    with pytest.raises(ValueError, match="lung_field_blur needs lung_field"):
        _cfg(dataset, run, cache_dir, lung_field_blur=16)


def test_resume_continues_and_appends(dataset, cache_dir, tmp_path):
    run = tmp_path / "resume"
    fit(_cfg(dataset, run, cache_dir, epochs=1, balance="none"))
    assert _epochs(run) == [0]
    fit(_cfg(dataset, run, cache_dir, epochs=2, balance="none"), resume=True)
    assert _epochs(run) == [0, 1]  # epoch 1 appended, not a restart at 0 and not a lost epoch 0
    assert json.loads((run / "timing.json").read_text())["epochs"] == 2


def test_balanced_indices_and_class_weights(dataset, tmp_path):
    targets = np.array([0] * 3 + [1] * 10 + [2] * 5)
    idx = balanced_indices(targets, seed=0)
    assert np.bincount(targets[idx]).tolist() == [10, 10, 10]
    assert set(np.flatnonzero(targets == 1)) <= set(idx)  # every original image is kept
    assert np.array_equal(idx, balanced_indices(targets, seed=0))
    assert np.array_equal(balanced_indices(np.array([1, 1, 0, 0]), 0), [0, 1, 2, 3])
    cfg = _cfg(dataset, tmp_path, tmp_path, balance="weights")
    w = class_weights(cfg, np.array([0] * 10 + [1] * 30))
    assert w == pytest.approx([2.0, 2 / 3])  # inverse frequency, mean-one over the samples
    assert class_weights(cfg.model_copy(update={"balance": "none"}), np.array([0, 1])) is None


def _train_cmd(dataset: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pneumo.cli", "train", str(dataset), "--out", str(run), "--arch", "cnn-small",
            "--image-size", "32", "--threads", "1", "--no-pretrained", "--batch-size", "4", "--val-fraction", "0.25",
            *extra]  # fmt: skip


@pytest.mark.slow
def test_resume_after_kill(dataset, tmp_path):
    import torch

    env = {**os.environ, "PNEUMO_CACHE_DIR": str(tmp_path / "cache")}
    run = tmp_path / "killed"
    epochs = 8
    # No early stopping: the blob task reaches AUC 1 at once, and patience would end the run before `epochs`.
    config = tmp_path / "base.yaml"
    _cfg(dataset, run, tmp_path / "cache", patience=100).dump(config)
    cmd = _train_cmd(dataset, run, "--epochs", str(epochs), "--config", str(config))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert last.exists(), proc.stderr.read().decode()[-2000:]
    assert not (run / "model.pneumo").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    on_disk = _epochs(run) if (run / "logs" / "metrics.csv").is_file() else []
    assert killed_at < epochs - 1, "training finished before it could be killed; make the epochs longer"

    done = subprocess.run(_train_cmd(dataset, run, "--epochs", str(epochs), "--resume"), env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "model.pneumo").is_file()
    # Continued after the killed epoch: the rows already on disk are kept and the new ones start at killed_at + 1,
    # every epoch once. (The logger buffers, so the kill may have lost rows of finished epochs; a restart from 0
    # would log 0.. again, which this catches when nothing was on disk, and the "Restored" line below otherwise.)
    assert on_disk == list(range(len(on_disk))) and len(on_disk) <= killed_at + 1
    assert _epochs(run) == on_disk + list(range(killed_at + 1, epochs))
    assert "Restored all states from the checkpoint" in done.stderr
    assert json.loads((run / "timing.json").read_text())["epochs"] == epochs


@pytest.mark.slow
def test_ddp_two_processes(dataset, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "PNEUMO_CACHE_DIR": str(tmp_path / "cache")}
    cmd = _train_cmd(dataset, run, "--epochs", "1", "--devices", "2", "--strategy", "ddp")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "model.pneumo").is_file()
    mf = load_model_file(run)
    assert mf.meta.data["train_images"] + mf.meta.data["val_images"] == 2 * N_PER_CLASS
    assert _epochs(run) == [0]
    assert Predictor.load(run).predict_one(next(dataset.rglob("*.png")), "x").error is None


def test_targets_per_task_in_the_loaded_splits(tmp_path):
    """What each task trains on, read from the file names by load_splits: 0/1 for the binary task; 0/1/2
    (normal/bacterial/viral) for the subtype task, without a pneumonia image whose name tells no subtype; and with
    a subtype head 3 for that image, which still trains the binary head."""
    from pneumo.training.splits import load_splits

    data = make_dataset(tmp_path / "data", n=8)
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(data / "PNEUMONIA" / "scan-from-elsewhere.png")
    code = {"none": 0, "bacteria": 1, "virus": 2, "unknown": 3}
    expected = {
        ("binary", False): lambda s: int(s != "none"),
        ("subtype", False): lambda s: code[s] if s != "unknown" else None,
        ("binary", True): code.__getitem__,
    }
    for (task, head), want in expected.items():
        cfg = _cfg(data, tmp_path / "run", tmp_path / "cache", task=task, subtype_head=head)
        train, val, summary = load_splits(cfg)
        got = {p: int(t) for split in (train, val) for p, t in zip(split.paths, split.targets, strict=True)}
        subtypes = {p: s for split in (train, val) for p, s in zip(split.paths, split.subtypes, strict=True)}
        assert len(got) == 17 - (task == "subtype"), (task, head)
        assert all(got[p] == want(subtypes[p]) for p in got), (task, head)
        assert "unknown" in subtypes.values() or task == "subtype"
        assert sum(summary["train_class_counts"]) == len(train.targets)


def test_library_config_resolves_like_the_cli(dataset, tmp_path):
    """``fit(TrainConfig(arch=...))`` needs no CLI: pretrained follows the architecture, a config file and
    overrides merge in the library."""
    from pneumo.training.models import resolve_pretrained
    from pneumo.training.train import PneumoModule

    plain = TrainConfig(data_dir=dataset, out=tmp_path, arch="resnet18")
    assert plain.pretrained is None and resolve_pretrained(plain).pretrained is False  # no shipped weights
    assert resolve_pretrained(plain.model_copy(update={"arch": "efficientnet_lite0"})).pretrained is True
    PneumoModule(plain)  # builds: no "no shipped ImageNet weights" error
    base = tmp_path / "base.yaml"
    TrainConfig(data_dir=dataset, out=tmp_path, epochs=3, augment={"scale": (0.9, 1.1), "hflip_p": 0.2}).dump(base)
    cfg = TrainConfig.resolve(base, {"epochs": None, "lr": 0.01, "augment": {"enabled": False}})
    assert cfg.epochs == 3 and cfg.lr == 0.01  # None overrides nothing
    assert cfg.augment.enabled is False and cfg.augment.scale == (0.9, 1.1) and cfg.augment.hflip_p == 0.2


def test_subtype_weight_scales_the_subtype_heads_loss(dataset, tmp_path):
    """loss = binary + subtype_weight * subtype: the loss is linear in the weight, with the subtype term's slope."""
    import torch

    from pneumo.training.train import PneumoModule

    x = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 1, 2, 0])  # normal, bacterial, viral
    losses = []
    for weight in (1.0, 2.0, 3.0):
        cfg = _cfg(dataset, tmp_path, tmp_path, subtype_head=True, subtype_weight=weight, augment={"enabled": False})
        torch.manual_seed(0)
        module = PneumoModule(cfg)
        torch.manual_seed(1)
        losses.append(float(module.training_step((x, y), 0)))
    slope = losses[1] - losses[0]
    assert slope > 0.1 and losses[2] - losses[1] == pytest.approx(slope, rel=1e-5)


def test_recency_draws_later_patients_more_often_and_as_many_in_all():
    """Numbered pneumonia images are redrawn with weights from 1 (earliest) to 1 + recency (latest); the others once."""
    from pneumo.training.train import recency_indices

    paths = [f"PNEUMONIA/person{n}_bacteria_{n}.jpeg" for n in range(1, 401)] + ["NORMAL/IM-0001-0001.jpeg", "x.png"]
    idx = recency_indices(paths, seed=0, recency=3.0)
    assert len(idx) == len(paths) and np.array_equal(idx, recency_indices(paths, seed=0, recency=3.0))
    counts = np.bincount(idx, minlength=len(paths))
    assert counts[400] == counts[401] == 1  # no patient number: each once
    early, late = counts[:100].sum(), counts[300:400].sum()
    # expected draws: 400 * (the quarter's share of the summed weights 1 + 3 * rank) = 54.9 and 145.1 (sd 7 and 10)
    assert 30 < early < 80 and 115 < late < 175, (early, late)
    assert np.array_equal(recency_indices(paths, seed=0, recency=0.0), np.arange(len(paths)))
    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(data_dir=".", out=".", recency=1.0, balance="oversample")


def test_operating_point_measures_the_subtype_split_under_each_shift():
    """finalize records the bacterial / viral split under every framing shift it checks, and its worst case."""
    from pneumo.training.finalize import fit_operating_point

    rng = np.random.default_rng(0)
    targets = np.array([0] * 10 + [1] * 20 + [2] * 10)
    z = np.where(targets > 0, 3.0, -3.0) + 0.1 * rng.standard_normal(40)
    logits = np.stack([np.zeros(40), z], axis=1)
    says_viral = targets == 2
    says_viral[10:14] = True  # 4 of 20 bacterial images called viral
    says_viral[30:32] = False  # 2 of 10 viral images called bacterial: 24 / 30 right
    sub = np.stack([np.zeros(40), np.where(says_viral, 0.0, 1.0), np.where(says_viral, 1.0, 0.0)], axis=1)
    zoomed = sub.copy()
    zoomed[14:18, 1:] = zoomed[14:18, :0:-1]  # 4 more bacterial images turn viral under the shift: 20 / 30
    shifted = {"zoom": logits, "squeeze": logits}
    _, _, _, m = fit_operating_point(
        logits, sub, shifted, targets, OperatingRule("pooled", 0.9), None, shifted_sub={"zoom": zoomed, "squeeze": sub}
    )
    assert m["bacterial_vs_viral_accuracy"] == pytest.approx(24 / 30)
    g = m["geometry_shift"]
    assert g["squeeze"]["bacterial_vs_viral"] == pytest.approx(24 / 30) and g["squeeze"]["subtype_flipped"] == 0
    assert g["zoom"]["bacterial_vs_viral"] == pytest.approx(20 / 30)
    assert g["zoom"]["subtype_flipped"] == pytest.approx(4 / 30)
    assert g["worst"]["bacterial_vs_viral"] == pytest.approx(20 / 30)
    assert g["worst"]["subtype_flipped"] == pytest.approx(4 / 30)
    _, _, _, without = fit_operating_point(logits, sub, shifted, targets, OperatingRule("pooled", 0.9), None)
    assert "bacterial_vs_viral" not in without["geometry_shift"]["worst"]


def test_finalize_writes_into_the_run_it_is_given(binary_run, tmp_path):
    """A copied or moved run is finalized where it is now, never into the directory it was trained in."""
    import shutil

    from pneumo.training.refinalize import refinalize

    before = (binary_run / "model.pneumo").read_bytes()
    moved = tmp_path / "moved"
    shutil.copytree(binary_run, moved)
    assert refinalize(moved, target_sensitivity=0.9) == moved / "model.pneumo"
    assert load_model_file(moved).meta.target_sensitivity == 0.9
    assert (binary_run / "model.pneumo").read_bytes() == before
    assert json.loads((moved / "validation.json").read_text())["threshold"] == load_model_file(moved).meta.threshold


def test_finalize_can_switch_the_threshold_rule(binary_run, tmp_path):
    """`pneumo finalize --threshold-rule pooled` puts the pooled rule's threshold in force; the recorded figures of
    both rules are the same as before (the rule only picks which one is used)."""
    import shutil

    from pneumo.cli import main

    run = tmp_path / "pooled"
    shutil.copytree(binary_run, run)
    before = load_model_file(binary_run).meta.validation.operating_point
    assert main(["finalize", str(run), "--threshold-rule", "pooled"]) in (0, None)
    meta = load_model_file(run).meta
    op = meta.validation.operating_point
    assert op.rule == "pooled" and meta.threshold == op.rules["pooled"].threshold
    assert op.rules["worst_case"].threshold == pytest.approx(before.rules["worst_case"].threshold)
    assert op.rules["pooled"].threshold == pytest.approx(before.rules["pooled"].threshold)
    assert main(["finalize", str(run), "--threshold-rule", "median"]) == 2  # refused as a usage error


def test_block_split_validation_reports_each_block(binary_run, dataset, tmp_path):
    """Finalised on a block split, the model file gives each held-out block's rate and the worst block, and says
    that its figures were measured on acquisition blocks."""
    import shutil

    from pneumo.data import make_split
    from pneumo.inputs import read_split_csv
    from pneumo.training.refinalize import refinalize

    split = tmp_path / "blocks.csv"
    make_split(dataset, split, val_fraction=0.25, by="blocks")
    run = tmp_path / "blocks_run"
    shutil.copytree(binary_run, run)
    refinalize(run, split_csv=split)
    validation = load_model_file(run).meta.validation
    assert validation.measured_on.startswith("internal validation (acquisition blocks)")
    blocks = validation.blocks
    held = {r.block for r in read_split_csv(split) if r.split == "val"}
    assert set(blocks.per_block) == held and len(held) == 9  # 3 blocks in each of IM-, bacteria, virus
    assert sum(b.n for b in blocks.per_block.values()) == sum(r.split == "val" for r in read_split_csv(split))
    worst = blocks.worst_specificity
    assert worst.value == min(b.specificity for b in blocks.per_block.values() if b.n_pneumonia == 0)


def test_without_a_split_csv_validation_holds_out_acquisition_blocks(tmp_path, caplog):
    """`pneumo train` without --split carves validation as `pneumo data split` does: whole blocks of each
    patient-numbering sequence by default (names outside every sequence at random, with a warning), at random by
    patient with split_by: patient; a run recorded before split_by existed was split at random and is read so."""
    from pneumo.config import TrainConfig
    from pneumo.data import block_split, scan_dataset, split_dataset
    from pneumo.training.splits import load_splits, recorded_split

    data = make_dataset(tmp_path / "data", n=20)
    records = scan_dataset(data).training_records()

    def val_of(sides):
        return sorted(str(r.path) for r, s in zip(records, sides, strict=True) if s == "val")

    by_blocks = block_split(records, val_fraction=0.25, n_blocks=3, seed=0)
    at_random = split_dataset(records, val_fraction=0.25, seed=0)
    assert val_of(by_blocks.splits) != val_of(at_random), "the test needs two different splits"
    _, val, summary = load_splits(_cfg(data, tmp_path / "run", tmp_path / "cache"))
    assert sorted(val.paths) == val_of(by_blocks.splits)
    assert summary["split_method"] == "acquisition blocks" and all(val.blocks)
    assert "acquisition blocks" in summary["split"]
    _, val, summary = load_splits(_cfg(data, tmp_path / "run", tmp_path / "cache", split_by="patient"))
    assert sorted(val.paths) == val_of(at_random) and summary["split_method"] == "random by patient"

    old = _cfg(data, tmp_path / "run", tmp_path / "cache").model_dump(mode="json")
    old.pop("split_by")  # a config.yaml written before split_by existed
    _, val, _ = load_splits(TrainConfig.resolve(recorded_split(old)))
    assert sorted(val.paths) == val_of(at_random)
    assert recorded_split({"split_csv": "s.csv"}) == {"split_csv": "s.csv"}
    assert recorded_split({"split_by": "blocks"}) == {"split_by": "blocks"}

    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(data / "NORMAL" / "scan-from-elsewhere.png")
    with caplog.at_level("WARNING", logger="pneumo.training.splits"):
        load_splits(_cfg(data, tmp_path / "run", tmp_path / "cache"))
    assert "1 of 41 images" in caplog.text and "AT RANDOM" in caplog.text
