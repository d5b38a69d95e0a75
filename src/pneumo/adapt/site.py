"""``pneumo adapt``: a site acceptance kit. Refit the calibration, the operating threshold and, optionally, a REFER
band on a hospital's own labelled sample, with honest figures, and write a site model file.

The statistics (cross-validation by patient, bootstrap intervals, the conformal REFER band, the sample-size warning)
live in :mod:`pneumo.adapt.fit`, the run and its report in :mod:`pneumo.adapt.report`; this module is the entry point.
"""

from __future__ import annotations

from pathlib import Path

from pneumo.adapt.fit import DEFAULT_FOLDS, AdaptError
from pneumo.adapt.report import run_adaptation
from pneumo.errors import MissingExtraError

__all__ = ["AdaptError", "adapt_site"]


def adapt_site(
    site_folder: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    target_sensitivity: float = 0.98,
    report_dir: str | Path | None = None,
    refer: bool = False,
    refer_error: float | None = None,
    folds: int = DEFAULT_FOLDS,
    name: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    patients_csv: str | Path | None = None,
):
    """``pneumo adapt``: score the site sample through the base model's ONNX graph, cross-validate, fit on the whole
    sample, write the site file (and the report). Returns the :class:`pneumo.adapt.report.AdaptResult`.

    Raises :class:`~pneumo.errors.MissingExtraError` naming the ``adapt`` extra when its packages are missing,
    before any image is read, and :class:`~pneumo.adapt.fit.AdaptError` (a usage error: one line, exit 2) for a
    site sample or an option that cannot be used as given."""
    import importlib.util

    missing = [m for m in ("sklearn", "scipy", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"pneumo adapt needs the 'adapt' extra ({', '.join(missing)} not installed): pip install 'pneumo[adapt]'"
        )
    return run_adaptation(
        Path(site_folder),
        Path(out),
        model=model,
        target_sensitivity=target_sensitivity,
        report_dir=None if report_dir is None else Path(report_dir),
        refer_error=(refer_error if refer_error is not None else round(1.0 - target_sensitivity, 6)) if refer else None,
        folds=folds,
        name=name,
        n_boot=n_boot,
        seed=seed,
        batch_size=batch_size,
        patients_csv=None if patients_csv is None else Path(patients_csv),
    )
