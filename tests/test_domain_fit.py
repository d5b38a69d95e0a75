"""pneumo.domain_fit: the pediatric guard refitted onto an existing model file, the network untouched; framed
copies of held-out X-rays pass it, what is no X-ray does not; the file reads back through predict's loader."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import encode_png, xray
from pneumo.domain import DOMAINS, NOT_PEDIATRIC, domain_rates
from pneumo.domain_fit import FIT_CONDITIONS, refit_domain_guard
from pneumo.evaluation.shifts import SUITE, perturbed_png
from pneumo.inference import Predictor
from pneumo.modelfile import ModelFileError, load_model_file

N_TRAIN, N_VAL = 30, 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A Kermany-like folder of chest-like images (one per patient) and its split CSV."""
    root = tmp_path_factory.mktemp("data")
    rows = []
    for i in range(N_TRAIN + N_VAL):
        label = "NORMAL" if i % 2 else "PNEUMONIA"
        rel = f"train/{label}/IM-{i:04d}-0001.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        xray(100 + i, 96).save(root / rel)
        rows.append([rel, "train" if i < N_TRAIN else "val", label, f"IM-{i:04d}", "none"])
    split = root / "split.csv"
    with split.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "split", "label", "patient_id", "subtype"], *rows])
    return root, split


def _refit(tiny_model, dataset, out: Path, **kwargs) -> Path:
    root, split = dataset
    return refit_domain_guard(tiny_model, root, split, out, components=8, quantile=0.95, **kwargs)


@pytest.fixture(scope="module")
def refitted(tiny_model, dataset, tmp_path_factory) -> Path:
    return _refit(tiny_model, dataset, tmp_path_factory.mktemp("refit") / "guarded.pneumo")


def test_refit_adds_the_pediatric_guard_and_keeps_everything_else(tiny_model, refitted):
    old, new = load_model_file(tiny_model), load_model_file(refitted)
    assert new.onnx == old.onnx and new.weights == old.weights  # the network is untouched
    ped = new.meta.domain_guard.pediatric
    assert old.meta.domain_guard.pediatric is None and ped is not None and ped.quantile == 0.95
    assert new.meta.domain_guard.model_copy(update={"pediatric": None}) == old.meta.domain_guard
    for k, v in old.arrays.items():  # the acquisition guard's arrays, byte for byte
        np.testing.assert_array_equal(new.arrays[k], v)
    assert new.arrays["pediatric_components"].shape == (ped.components, new.meta.feature_dim)
    record = new.meta.validation.domain
    assert set(record.held_out_flagged_not_pediatric) == {"clean", *FIT_CONDITIONS}
    assert new.meta.validation.model_dump(exclude={"domain"}) == old.meta.validation.model_dump()


def _rate(predictor: Predictor, sources) -> float:
    return domain_rates(list(predictor.predict_sources(sources)))["flagged_not_pediatric"]


def _val_paths(dataset) -> list[Path]:
    root, _ = dataset
    return [
        root / f"train/{'NORMAL' if i % 2 else 'PNEUMONIA'}/IM-{i:04d}-0001.png"
        for i in range(N_TRAIN, N_TRAIN + N_VAL)
    ]


def test_framed_held_out_images_pass_and_blanks_do_not(refitted, dataset):
    pred = Predictor.load(refitted)
    val = _val_paths(dataset)
    zoom = SUITE["zoom 0.8 (margin)"].perturb
    assert _rate(pred, [(p.name, p) for p in val]) <= 0.2
    assert _rate(pred, [(p.name, perturbed_png(p, zoom)) for p in val]) <= 0.2
    checker = ((np.indices((96, 96)).sum(0) // 12) % 2 * 255).astype(np.uint8)
    odd = [("checker", encode_png(checker)), ("text-like", encode_png(np.tile([0, 255], (96, 48)).astype(np.uint8)))]
    preds = list(pred.predict_sources(odd))
    assert all(p.domain == NOT_PEDIATRIC and p.in_domain is False for p in preds)


def test_predictions_carry_one_of_the_three_answers(refitted, dataset):
    preds = list(Predictor.load(refitted).predict_sources([(p.name, p) for p in _val_paths(dataset)]))
    assert all(p.domain in DOMAINS and p.in_domain == (p.domain != NOT_PEDIATRIC) for p in preds)


def test_the_framing_shifts_are_what_lets_framed_images_pass(tiny_model, refitted, dataset, tmp_path):
    """Fitted on the images as they are only, the guard calls more zoomed-out held-out images not pediatric."""
    clean_only = Predictor.load(_refit(tiny_model, dataset, tmp_path / "clean.pneumo", conditions=()))
    zoom = SUITE["zoom 0.8 (margin)"].perturb
    framed = [(p.name, perturbed_png(p, zoom)) for p in _val_paths(dataset)]
    assert _rate(clean_only, framed) > _rate(Predictor.load(refitted), framed) + 0.2


def test_a_site_file_is_refused(tiny_model, dataset, tmp_path, monkeypatch):
    from pneumo import domain_fit

    mf = load_model_file(tiny_model)
    site = mf.model_copy(update={"meta": mf.meta.model_copy(update={"site": object()})})
    monkeypatch.setattr(domain_fit, "load_model_file", lambda *a, **k: site)
    with pytest.raises(ModelFileError, match="site file"):
        _refit(tiny_model, dataset, tmp_path / "x.pneumo")
    assert not (tmp_path / "x.pneumo").exists()
