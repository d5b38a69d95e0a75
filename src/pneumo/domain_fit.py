"""Refit the pediatric guard (:mod:`pneumo.domain`) onto an existing model file, without retraining the network.

The guard reads the features the model's ONNX graph already gives, so a refit needs the graph, the training images
and their split, and nothing from PyTorch: training images of some patients, as they are and under every framing
shift of the suite (:data:`FIT_CONDITIONS`: zoomed out with a margin, zoomed in, squeezed, moved, cropped), give
the fit; the same conditions on the images of other training patients set the cut-off. Validation images are left
untouched, so that what ``benchmarks/domain_guard.py`` measures on them is held out.

    from pneumo.domain_fit import refit_domain_guard
    refit_domain_guard("model.pneumo", "../shared/data/chest_xray", "split.csv", "model-guarded.pneumo")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumo.domain import check_guard_arrays, classify_domain, fit_domain_guard, fit_pediatric_guard
from pneumo.evaluation.shifts import GEOMETRY, checked_copy
from pneumo.imaging import load_image
from pneumo.inference import Predictor
from pneumo.inputs import read_split_csv
from pneumo.modelfile import ModelFile, ModelFileError, load_model_file, save_model_file
from pneumo.preprocess import to_input

CLEAN = "clean"
# The framing conditions of the suite: every geometry shift, and the crop (a narrower field of view).
FIT_CONDITIONS: tuple[str, ...] = (*GEOMETRY, "crop 15%")


def image_features(predictor: Predictor, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """The network's domain features (the ``features`` output) of images already at the model's input size."""
    cfg = predictor.meta.preprocessing
    out = [
        predictor.session.run(["features"], {"image": to_input(list(images[i : i + batch_size]), cfg)})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, predictor.meta.feature_dim))


def condition_images(paths: Sequence[Path], condition: str, size: int) -> list[np.ndarray]:
    """``paths`` loaded at ``size`` as they are (``"clean"``) or under one condition of the suite, made exactly as
    ``pneumo robustness`` makes it."""
    if condition == CLEAN:
        return [load_image(p, size) for p in paths]
    return [checked_copy(p, condition, size) for p in paths]


def _split_train(
    data_dir: Path, split_csv: Path, max_images: int, held_out_fraction: float, seed: int
) -> tuple[list[Path], list[Path]]:
    """Training images of the split, by patient: ``(fit, held out)``, at most ``max_images`` in all."""
    rows = [r for r in read_split_csv(split_csv) if r.split == "train"]
    if not rows:
        raise ValueError(f"{split_csv}: no row with split=train")
    rng = np.random.default_rng(seed)
    patients = sorted({r.patient_id for r in rows})
    held_out = set(rng.choice(patients, max(1, round(held_out_fraction * len(patients))), replace=False).tolist())
    pick = np.sort(rng.choice(len(rows), min(max_images, len(rows)), replace=False))
    chosen = [rows[i] for i in pick]
    fit = [data_dir / r.path for r in chosen if r.patient_id not in held_out]
    cal = [data_dir / r.path for r in chosen if r.patient_id in held_out]
    if len(fit) < 2 or not cal:
        raise ValueError(f"{split_csv}: too few training images to fit the guard ({len(fit)} fit, {len(cal)} held out)")
    return fit, cal


def refit_domain_guard(
    model_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    split_csv: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    conditions: Sequence[str] = FIT_CONDITIONS,
    max_images: int = 800,
    held_out_fraction: float = 0.2,
    components: int = 32,
    quantile: float = 0.98,
    seed: int = 0,
) -> Path:
    """Write ``out_path``: the model file at ``model_path`` with a pediatric guard fitted on the ``train`` rows of
    ``split_csv`` (paths relative to ``data_dir``) under ``conditions``; everything else is kept byte for byte
    (graph, weights, calibration, the acquisition guard). A model without an acquisition guard gets one too, fitted
    on the same images as they are. Site files are refused: refit the base model, then run ``pneumo adapt``."""
    mf = load_model_file(model_path, parts=("onnx", "weights"))
    if mf.meta.site is not None:
        raise ModelFileError(f"{mf.path}: a site file; refit the domain guard of its base model, then adapt again")
    if mf.onnx is None:
        raise ModelFileError(f"{mf.path}: this model file has no ONNX graph; run `pneumo export` on it")
    predictor = Predictor(mf)
    size = mf.meta.preprocessing.image_size
    fit_paths, cal_paths = _split_train(Path(data_dir), Path(split_csv), max_images, held_out_fraction, seed)
    fit, cal = {}, {}
    for cond in (CLEAN, *conditions):
        fit[cond] = image_features(predictor, condition_images(fit_paths, cond, size))
        cal[cond] = image_features(predictor, condition_images(cal_paths, cond, size))
    pediatric, arrays = fit_pediatric_guard(
        np.concatenate(list(fit.values())), np.concatenate(list(cal.values())), components, quantile
    )
    guard, old = mf.meta.domain_guard, {k: v for k, v in mf.arrays.items() if not k.startswith("pediatric_")}
    if guard is None:
        guard, old = fit_domain_guard(fit[CLEAN], cal[CLEAN])
        old = {**{k: v for k, v in mf.arrays.items() if not k.startswith("pediatric_")}, **old}
    guard = guard.model_copy(update={"pediatric": pediatric})
    arrays = {**old, **arrays}
    check_guard_arrays(guard, arrays, feature_dim=mf.meta.feature_dim or None, source=out_path)
    # the held-out figures, answered as predict will answer them
    held_out_rates = {c: float(1 - classify_domain(f, guard, arrays)[1].mean()) for c, f in cal.items()}
    record = {
        "method": "pediatric guard: mahalanobis-pca on the network's features, fitted under framing shifts",
        "fitted_on": f"{len(fit_paths)} training images of {Path(split_csv).name}, as they are and under "
        + ", ".join(conditions),
        "cutoff_set_on": f"{len(cal_paths)} training images of other patients, the same conditions",
        "held_out_flagged_not_pediatric": held_out_rates,
    }
    meta = mf.meta.model_copy(update={"domain_guard": guard, "validation": mf.meta.validation.updated(domain=record)})
    out = save_model_file(out_path, ModelFile(meta=meta, onnx=mf.onnx, weights=mf.weights, arrays=arrays))
    Predictor.load(out)  # read back through the loader predict uses: a file it would refuse is never left unnoticed
    return out
