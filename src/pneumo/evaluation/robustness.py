"""Running the shift suite (:mod:`pneumo.evaluation.shifts`): how a model holds up when framing, acquisition or what
lies outside the lungs changes, and its worst case.

Each perturbation is applied to the decoded validation image, which is then re-encoded and sent through the
same loader and predictor a user's file goes through. The conditions and their families are declared in
:mod:`pneumo.evaluation.shifts`; the controls (the lung box hidden) are reported beside the others, never in the
worst case, because there a low AUC is right.

The lung checks (:func:`lung_checks`: the lungs hidden, and everything but the lungs hidden) are reported beside the
clean figures of the same images, never in the worst case: on validation with the atlas placed as the training
copies are framed, on each extra set with the images' own lung masks when every image has one (and with the atlas).
When the atlas or the masks are absent (a user's clone has no shared data) they are left out with a note.

For a model with a subtype output and images whose subtype is known, the bacterial / viral split goes through the
same suite: its accuracy among the pneumonia images and the share of their calls that flip against the clean image.
Every condition carries its reliability bins, so calibration can be drawn per condition.

A model is judged on the **worst case** over the conditions, never on their mean, which hides one bad shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumo.decision import flip_rate, is_positive
from pneumo.domain import domain_rates
from pneumo.evaluation.metrics import bacterial_vs_viral_accuracy, binary_metrics, reliability_bins, says_viral
from pneumo.evaluation.shifts import (
    ACQUISITION,
    CONTROLS,
    GEOMETRY,
    LUNG_CHECKS,
    OCCLUSION,
    PERTURBATIONS,
    SUITE,
    Perturb,
    lung_png,
    perturbed_png,
)
from pneumo.evaluation.summary import shift_summary
from pneumo.inference import Predictor
from pneumo.labels import SUBTYPE_INDEX
from pneumo.lungs import LungMaskError, LungSource

__all__ = [
    "ACQUISITION",
    "CONTROLS",
    "GEOMETRY",
    "LUNG_CHECKS",
    "OCCLUSION",
    "PERTURBATIONS",
    "lung_checks",
    "shifted_validation",
    "worst_case",
]

WORST = "worst case"
NOTES = "notes"  # results key: what was left out and why (lung checks without the atlas or the masks)


def predict_perturbed(predictor: Predictor, paths: Sequence[Path], perturb: Perturb | None, mirror: bool = False):
    """Probabilities for every path after ``perturb`` (``None``: the file as it is)."""

    def source(p: Path):
        if perturb is None:
            return str(p), p
        return str(p), perturbed_png(p, perturb)

    preds = list(predictor.predict_sources((source(p) for p in paths), batch_size=32, mirror=mirror))
    return np.array([p.probability for p in preds]), preds


def predict_lungs(predictor: Predictor, paths: Sequence[Path], name: str, lungs: LungSource, mirror: bool = False):
    """Probabilities for every path under the lung check ``name``, on the lung regions ``lungs`` gives."""
    sources = ((str(p), lung_png(p, name, lungs)) for p in paths)
    preds = list(predictor.predict_sources(sources, batch_size=32, mirror=mirror))
    return np.array([p.probability for p in preds]), preds


def lung_checks(
    predictor: Predictor,
    paths: Sequence[Path],
    y: np.ndarray,
    lungs: LungSource,
    *,
    mirror: bool = False,
    base: np.ndarray | None = None,
) -> dict:
    """The lung checks on one labelled set: ``{"lungs": what the region is, "n": images, "clean": ..., "lungs
    hidden": ..., "only the lungs": ...}``, each figure set as in :func:`shifted_validation` (``roc_auc``,
    ``accuracy``, ...; changes against the clean images). "lungs hidden": a low AUC is right (a model that reads
    the lungs cannot separate the classes without them); "only the lungs": the clean AUC is right. ``base``: the
    clean probabilities, when already at hand. What ``pneumo robustness`` reports; for the model card, e.g.
    ``lung_checks(p, paths, y, LungSource.from_atlas())["lungs hidden"]["roc_auc"]``."""
    y = np.asarray(y)
    clean_preds = None
    if base is None:
        base, clean_preds = predict_perturbed(predictor, paths, None, mirror)
    out: dict = {"lungs": lungs.describe(), "n": len(y)}
    if clean_preds is not None:
        out["clean"] = _summary(y, base, predictor.threshold, None, clean_preds)
    for name in LUNG_CHECKS:
        prob, preds = predict_lungs(predictor, paths, name, lungs, mirror)
        out[name] = _summary(y, prob, predictor.threshold, base, preds)
    return out


def _lung_rows(
    predictor: Predictor, paths, y, lungs: LungSource, base: np.ndarray, mirror: bool, prefix: str = ""
) -> dict[str, dict]:
    """The lung checks as rows of the results: ``"<prefix>lungs hidden (atlas)"`` and so on."""
    checks = lung_checks(predictor, paths, y, lungs, mirror=mirror, base=base)
    return {f"{prefix}{name} ({lungs.name})": {**checks[name], "lungs": checks["lungs"]} for name in LUNG_CHECKS}


def _lung_sources(atlas) -> tuple[LungSource | None, list[str]]:
    """The atlas source (None when absent: refused if asked for by path, a note if the default is missing)."""
    if atlas is False:
        return None, []
    try:
        return LungSource.from_atlas(None if atlas is True else atlas), []
    except LungMaskError as exc:
        if atlas is not True:
            raise
        return None, [f"lung checks with the atlas left out: {exc}"]


def shifted_validation(
    predictor: Predictor,
    paths: Sequence[Path],
    y: np.ndarray,
    *,
    mirror: bool = False,
    extra: dict | None = None,
    conditions: dict[str, Perturb] | None = None,
    subtypes: Sequence[str] | None = None,
    atlas: str | Path | bool = True,
    lung_masks: str | Path | bool = True,
) -> dict[str, dict]:
    """Metrics on clean validation and under every condition (default: :data:`PERTURBATIONS` and the
    :data:`CONTROLS`), with the mean probability change and the share of decisions that flip against the clean
    image; first of all the worst case over the conditions that are not controls, each figure with the condition it
    comes from. ``extra`` maps a name to ``(paths, y)`` or
    ``(paths, y, subtypes)`` of further sets (e.g. original-size images), reported but not part of the worst case.

    ``subtypes`` gives each image's subtype as the file names tell it (``"bacteria"``, ``"virus"``, anything else
    unknown); with a model that has a subtype output it adds ``bacterial_vs_viral`` (accuracy among the images of
    known subtype) and ``subtype_flipped`` (share of their calls that differ from the clean image's).

    The lung checks (:func:`lung_checks`) follow the clean figures, on validation with the atlas and on each extra
    set with its images' own masks found under ``lung_masks`` (a folder; True: the shared data's, when there) and
    with the atlas; ``atlas`` is its file (True: the shared data's, when there; False: no lung checks at all). What
    is left out for want of the atlas or the masks is said under ``"notes"``."""
    y = np.asarray(y)
    sub = _subtype_codes(subtypes, len(y))
    base, preds = predict_perturbed(predictor, paths, None, mirror)
    base_split = _subtype_split(preds)
    base_calls = None if base_split is None else says_viral(*base_split)
    per = {"clean": _summary(y, base, predictor.threshold, base, preds, sub, base_calls)}
    atlas_lungs, notes = _lung_sources(atlas)
    lung_rows = {} if atlas_lungs is None else _lung_rows(predictor, paths, y, atlas_lungs, base, mirror)
    for name, f in ({**PERTURBATIONS, **CONTROLS} if conditions is None else conditions).items():
        prob, preds = predict_perturbed(predictor, paths, f, mirror)
        per[name] = _summary(y, prob, predictor.threshold, base, preds, sub, base_calls)
    judged = {k: r for k, r in per.items() if k != "clean" and k not in CONTROLS}
    results = {WORST: worst_case(judged), "clean": per.pop("clean"), **lung_rows, **per}
    for name, (xpaths, xy, *xsub) in (extra or {}).items():
        prob, preds = predict_perturbed(predictor, xpaths, None, mirror)
        xcodes = _subtype_codes(xsub[0] if xsub else None, len(xy))
        results[name] = _summary(np.asarray(xy), prob, predictor.threshold, None, preds, xcodes)
        if atlas is False:
            continue
        try:
            masks = LungSource.from_masks(xpaths, None if lung_masks is True else lung_masks)
        except LungMaskError as exc:
            if lung_masks is not True:
                raise
            notes.append(f"{name}: lung checks with the images' own masks left out: {exc}")
        else:
            results.update(_lung_rows(predictor, xpaths, xy, masks, prob, mirror, prefix=f"{name}: "))
        if atlas_lungs is not None:
            results.update(_lung_rows(predictor, xpaths, xy, atlas_lungs, prob, mirror, prefix=f"{name}: "))
    if notes:
        results[NOTES] = notes
    return results


def _subtype_codes(subtypes: Sequence[str] | None, n: int) -> np.ndarray | None:
    """1 bacterial, 2 viral, 0 otherwise (normal or not told), or None without subtypes."""
    if subtypes is None:
        return None
    if len(subtypes) != n:
        raise ValueError(f"{len(subtypes)} subtypes for {n} images")
    return np.array([SUBTYPE_INDEX.get(s, 0) for s in subtypes])


def _subtype_split(preds) -> tuple[np.ndarray, np.ndarray] | None:
    """Each prediction's ``(p_bacterial, p_viral)``, or None for a model without a subtype output."""
    if any(p.p_viral is None or p.p_bacterial is None for p in preds):
        return None
    return np.array([p.p_bacterial for p in preds]), np.array([p.p_viral for p in preds])


def worst_case(per_condition: dict[str, dict]) -> dict:
    """Each figure at its worst over the conditions (NaN figures, e.g. an AUC of one class, are skipped), and
    ``worst_of``: which condition gave it (:func:`pneumo.evaluation.summary.shift_summary`; a tie names the
    condition declared first in the suite)."""
    return shift_summary(per_condition, order=tuple(SUITE)).as_worst_case()


def _summary(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    base: np.ndarray | None,
    preds,
    sub: np.ndarray | None = None,
    base_calls: np.ndarray | None = None,
) -> dict:
    m = binary_metrics(y, prob, threshold)
    out = {k: float(m[k]) for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "ece")}
    out["flagged_out_of_domain"] = float(np.mean([p.in_domain is False for p in preds]))
    out.update(domain_rates(preds))  # the two answers: not a pediatric chest X-ray / an unusual acquisition
    if base is not None:
        out["mean_abs_change"] = float(np.mean(np.abs(prob - base)))
        out["decisions_flipped"] = flip_rate(is_positive(prob, threshold), is_positive(base, threshold))
    rel = reliability_bins(prob, y)
    # JSON has no NaN: an empty bin's confidence and accuracy are null
    out["reliability"] = {k: [v if np.isfinite(v) else None for v in np.asarray(rel[k], dtype=float).tolist()]
                          for k in ("confidence", "accuracy", "count")}  # fmt: skip
    split = _subtype_split(preds)
    known = None if sub is None else sub > 0
    if split is not None and known is not None and known.any():
        p_b, p_v = split[0][known], split[1][known]
        out["bacterial_vs_viral"] = bacterial_vs_viral_accuracy(p_b, p_v, sub[known] == 2)
        if base_calls is not None:
            out["subtype_flipped"] = flip_rate(says_viral(p_b, p_v), base_calls[known])
    return out


def format_table(results: dict[str, dict]) -> str:
    """A markdown table of :func:`shifted_validation` results, the worst case first and in bold."""
    cols = ["accuracy", "sensitivity", "specificity", "roc_auc", "ece", "mean_abs_change", "decisions_flipped"]
    cols += ["flagged_not_pediatric", "flagged_unusual_acquisition"]
    cols += [c for c in ("bacterial_vs_viral", "subtype_flipped") if any(c in r for r in results.values())]
    lines = ["| condition | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in results.items():
        if name == NOTES:
            continue
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) and np.isfinite(r[c]) else "—" for c in cols]
        if name == WORST:
            cells, name = [f"**{c}**" for c in cells], f"**{name}**"
        elif name in CONTROLS:
            name = f"{name} (control: a low AUC is right)"
        elif "lungs" in r:
            right = "a low AUC is right" if "lungs hidden" in name else "the clean AUC is right"
            name = f"{name} (lung check, {r['lungs']}: {right})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    worst = results.get(WORST, {}).get("worst_of", {})
    if worst:
        lines.append("")
        lines.append("worst case from: " + "; ".join(f"{k}: {v}" for k, v in worst.items()))
    lines += [f"note: {n}" for n in results.get(NOTES, [])]
    return "\n".join(lines)
