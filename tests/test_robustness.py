"""Shifted validation, evaluate-folder selection and the out-of-domain reference images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pneumo.evaluation_run import evaluate_folder, select_records
from pneumo.imaging import load_image
from pneumo.inference import Predictor
from pneumo.ood import photographs, synthetic
from pneumo.robustness import PERTURBATIONS, format_table, shifted_validation


def _xray_like(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = 0.3 + 0.4 * yy + 0.15 * np.sin(8 * xx) + 0.05 * rng.standard_normal((size, size))
    return Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8))


@pytest.fixture
def labelled(tmp_path):
    root = tmp_path / "data"
    for label, n in (("NORMAL", 4), ("PNEUMONIA", 6)):
        (root / "test" / label).mkdir(parents=True)
        (root / "train" / label).mkdir(parents=True)
        for i in range(n):
            _xray_like(i + (100 if label == "PNEUMONIA" else 0)).save(root / "test" / label / f"p{label}{i}.png")
            _xray_like(i + 7).save(root / "train" / label / f"q{label}{i}.png")
    return root


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbations_change_the_image_but_keep_it_a_grayscale_image(name):
    im = _xray_like(0)
    out = PERTURBATIONS[name](im)
    assert out.mode == "L"
    a, b = np.asarray(im, dtype=float), np.asarray(out, dtype=float)
    if a.shape == b.shape:
        assert np.abs(a - b).mean() > 0.1, f"{name} left the image unchanged"
    else:
        assert name.startswith("crop") and b.shape[0] < a.shape[0]


def test_select_records_defaults_to_test_split_and_rejects_unknown(labelled):
    recs, described = select_records(labelled)
    assert len(recs) == 10 and all(r.split == "test" for r in recs) and "test" in described
    with pytest.raises(ValueError, match="no 'val' split"):
        select_records(labelled, "val")


def test_evaluate_folder_writes_report_through_the_onnx_path(labelled, tiny_model, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_folder(labelled, out, model=tiny_model)
    assert m["n"] == 10 and m["n_pos"] == 6
    for f in ("report.txt", "metrics.json", "predictions.csv", "roc.png", "gallery.png"):
        assert (out / f).stat().st_size > 0
    assert "Healthy" in m["report"] and "Pneumonia" in m["report"]


def test_shifted_validation_reports_every_condition(labelled, tiny_model):
    recs, _ = select_records(labelled)
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    res = shifted_validation(Predictor.load(tiny_model), [r.path for r in recs], y)
    assert set(PERTURBATIONS) <= set(res) and {"clean", "shifted (mean)"} <= set(res)
    assert res["clean"]["mean_abs_change"] == 0.0
    assert 0.0 <= res["clean"]["flagged_out_of_domain"] <= 1.0
    # an untrained net still reacts to a 2-sigma blur: the probe measures change, it is not a constant
    assert res["blur sigma 2"]["mean_abs_change"] > 0
    assert "| clean |" in format_table(res)


def test_reference_outliers_decode_through_the_loader():
    samples = list(synthetic()) + list(photographs())[:5]
    assert len(samples) >= 25
    for name, data in samples:
        img = load_image(data, 32, name=name)
        assert img.shape == (32, 32)


def test_split_csv_of_another_folder_is_refused_clearly(labelled, tmp_path):
    from pneumo.data import make_split

    csv_path = make_split(labelled, tmp_path / "split.csv", val_fraction=0.3)  # paths like train/NORMAL/...
    assert csv_path
    recs, _ = select_records(labelled, "val", tmp_path / "split.csv")
    assert recs and all(r.split == "train" for r in recs)  # val rows are carved out of the train split
    with pytest.raises(ValueError, match="none of its val rows"):
        select_records(labelled / "train", "val", tmp_path / "split.csv")
