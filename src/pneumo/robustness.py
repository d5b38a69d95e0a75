"""The shift suite: how a model holds up when framing or acquisition changes, and its worst case.

Each perturbation is applied to the decoded validation image, which is then re-encoded and sent through the
same loader and predictor a user's file goes through. Two families:

- geometry, what differs between acquisition periods and what a model can read instead of the lungs: how much of
  the frame the chest fills (zoom out with a margin, zoom in with a crop), its aspect (squeezed across or down),
  and where it sits (translation). Margins are filled with the mean of the image's border, not the edge
  replication the training augmentation uses, so the suite does not replay training;
- acquisition: exposure (gamma), contrast, blur, sharpening, JPEG re-compression, resolution loss, noise.

For a model with a subtype output and images whose subtype is known, the bacterial / viral split goes through the
same suite: its accuracy among the pneumonia images and the share of their calls that flip against the clean image.

A model is judged on the **worst case** over the conditions, never on their mean, which hides one bad shift.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pneumo.imaging import load_image
from pneumo.inference import Predictor
from pneumo.labels import SUBTYPE_INDEX
from pneumo.metrics import bacterial_vs_viral_accuracy, binary_metrics, says_viral

Perturb = Callable[[Image.Image], Image.Image]


def _gray8(img: np.ndarray) -> Image.Image:
    """A decoded image (:func:`pneumo.imaging.load_image`, [0, 1]) as the 8-bit grayscale the perturbations take."""
    return Image.fromarray(np.round(img * 255).astype(np.uint8))


def _gamma(g: float) -> Perturb:
    lut = [round(255 * (i / 255) ** g) for i in range(256)]
    return lambda im: im.point(lut)


def _contrast(c: float) -> Perturb:
    def f(im: Image.Image) -> Image.Image:
        a = np.asarray(im, dtype=np.float32)
        return Image.fromarray(np.clip((a - a.mean()) * c + a.mean(), 0, 255).astype(np.uint8))

    return f


def _jpeg(q: int) -> Perturb:
    def f(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=q)
        return _gray8(load_image(buf.getvalue(), name=f"JPEG q{q}"))

    return f


def _lowres(s: float) -> Perturb:
    def f(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.resize((int(w * s), int(h * s)), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)

    return f


def _noise(std: float) -> Perturb:
    def f(im: Image.Image) -> Image.Image:
        a = np.asarray(im, dtype=np.float32)
        a = a + np.random.default_rng(0).standard_normal(a.shape) * std * 255
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    return f


def _crop(frac: float) -> Perturb:
    def f(im: Image.Image) -> Image.Image:
        w, h = im.size
        dx, dy = int(w * frac / 2), int(h * frac / 2)
        return im.crop((dx, dy, w - dx, h - dy))

    return f


def _border_mean(im: Image.Image) -> int:
    a = np.asarray(im, dtype=np.float32)
    return round(float(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean()))


def _affine(sx: float, sy: float, tx: float = 0.0, ty: float = 0.0) -> Perturb:
    """Scale the content by ``sx`` across and ``sy`` down about the centre, then move it by ``tx``, ``ty`` (shares
    of the width and height); the frame keeps its size and margins take the border's mean grey."""

    def f(im: Image.Image) -> Image.Image:
        w, h = im.size
        cx, cy = w / 2, h / 2
        # PIL maps each output pixel to an input one: x_in = (x_out - cx - tx*w) / sx + cx
        data = (1 / sx, 0, cx - (cx + tx * w) / sx, 0, 1 / sy, cy - (cy + ty * h) / sy)
        return im.transform(
            im.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=_border_mean(im)
        )

    return f


GEOMETRY: dict[str, Perturb] = {
    "zoom 0.8 (margin)": _affine(0.8, 0.8),
    "zoom 0.9 (margin)": _affine(0.9, 0.9),
    "zoom 1.1 (cropped)": _affine(1.1, 1.1),
    "zoom 1.25 (cropped)": _affine(1.25, 1.25),
    "squeeze across 15%": _affine(0.85, 1.0),
    "squeeze down 15%": _affine(1.0, 0.85),
    "shift right 10%": _affine(1.0, 1.0, 0.10, 0.0),
    "shift down 10%": _affine(1.0, 1.0, 0.0, 0.10),
}
ZOOMS = [k for k in GEOMETRY if k.startswith("zoom")]

ACQUISITION: dict[str, Perturb] = {
    "gamma 0.6 (brighter)": _gamma(0.6),
    "gamma 1.6 (darker)": _gamma(1.6),
    "contrast x0.6": _contrast(0.6),
    "contrast x1.4": _contrast(1.4),
    "blur sigma 1": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
    "blur sigma 2": lambda im: im.filter(ImageFilter.GaussianBlur(2.0)),
    "sharpen": lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=100, threshold=0)),
    "jpeg q20": _jpeg(20),
    "resolution x0.4": _lowres(0.4),
    "noise 3%": _noise(0.03),
    "crop 15%": _crop(0.15),
}
PERTURBATIONS: dict[str, Perturb] = {**GEOMETRY, **ACQUISITION}
# Lower is worse for these, higher for the others: the worst case takes each figure from its own worst condition.
HIGHER_IS_BETTER = ("accuracy", "sensitivity", "specificity", "roc_auc", "bacterial_vs_viral")
LOWER_IS_BETTER = ("ece", "decisions_flipped", "mean_abs_change", "flagged_out_of_domain", "subtype_flipped")
WORST = "worst case"


def _encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def predict_perturbed(predictor: Predictor, paths: Sequence[Path], perturb: Perturb | None, tta: bool = False):
    """Probabilities for every path after ``perturb`` (``None``: the file as it is)."""

    def source(p: Path):
        if perturb is None:
            return str(p), p
        return str(p), _encode(perturb(_gray8(load_image(p))))

    preds = list(predictor.predict_sources((source(p) for p in paths), batch_size=32, tta=tta))
    return np.array([p.probability for p in preds]), preds


def shifted_validation(
    predictor: Predictor,
    paths: Sequence[Path],
    y: np.ndarray,
    *,
    tta: bool = False,
    extra: dict | None = None,
    conditions: dict[str, Perturb] | None = None,
    subtypes: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Metrics on clean validation and under every condition (default: :data:`PERTURBATIONS`), with the mean
    probability change and the share of decisions that flip against the clean image; first of all the worst case
    over the conditions, each figure with the condition it comes from. ``extra`` maps a name to ``(paths, y)`` or
    ``(paths, y, subtypes)`` of further sets (e.g. original-size images), reported but not part of the worst case.

    ``subtypes`` gives each image's subtype as the file names tell it (``"bacteria"``, ``"virus"``, anything else
    unknown); with a model that has a subtype output it adds ``bacterial_vs_viral`` (accuracy among the images of
    known subtype) and ``subtype_flipped`` (share of their calls that differ from the clean image's)."""
    y = np.asarray(y)
    sub = _subtype_codes(subtypes, len(y))
    base, preds = predict_perturbed(predictor, paths, None, tta)
    base_split = _subtype_split(preds)
    base_calls = None if base_split is None else says_viral(*base_split)
    per = {"clean": _summary(y, base, predictor.threshold, base, preds, sub, base_calls)}
    for name, f in (PERTURBATIONS if conditions is None else conditions).items():
        prob, preds = predict_perturbed(predictor, paths, f, tta)
        per[name] = _summary(y, prob, predictor.threshold, base, preds, sub, base_calls)
    results = {WORST: worst_case({k: r for k, r in per.items() if k != "clean"}), **per}
    for name, (xpaths, xy, *xsub) in (extra or {}).items():
        prob, preds = predict_perturbed(predictor, xpaths, None, tta)
        xcodes = _subtype_codes(xsub[0] if xsub else None, len(xy))
        results[name] = _summary(np.asarray(xy), prob, predictor.threshold, None, preds, xcodes)
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
    ``worst_of``: which condition gave it."""
    out: dict = {"worst_of": {}}
    for key in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER):
        vals = {n: r[key] for n, r in per_condition.items() if key in r and np.isfinite(r[key])}
        if not vals:
            continue
        pick = min if key in HIGHER_IS_BETTER else max
        name = pick(vals, key=vals.__getitem__)
        out[key], out["worst_of"][key] = vals[name], name
    return out


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
    if base is not None:
        out["mean_abs_change"] = float(np.mean(np.abs(prob - base)))
        out["decisions_flipped"] = float(np.mean((prob >= threshold) != (base >= threshold)))
    split = _subtype_split(preds)
    known = None if sub is None else sub > 0
    if split is not None and known is not None and known.any():
        p_b, p_v = split[0][known], split[1][known]
        out["bacterial_vs_viral"] = bacterial_vs_viral_accuracy(p_b, p_v, sub[known] == 2)
        if base_calls is not None:
            out["subtype_flipped"] = float(np.mean(says_viral(p_b, p_v) != base_calls[known]))
    return out


def format_table(results: dict[str, dict]) -> str:
    """A markdown table of :func:`shifted_validation` results, the worst case first and in bold."""
    cols = ["accuracy", "sensitivity", "specificity", "roc_auc", "ece", "mean_abs_change", "decisions_flipped"]
    cols.append("flagged_out_of_domain")
    cols += [c for c in ("bacterial_vs_viral", "subtype_flipped") if any(c in r for r in results.values())]
    lines = ["| condition | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in results.items():
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) and np.isfinite(r[c]) else "—" for c in cols]
        if name == WORST:
            cells, name = [f"**{c}**" for c in cells], f"**{name}**"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    worst = results.get(WORST, {}).get("worst_of", {})
    if worst:
        lines.append("")
        lines.append("worst case from: " + "; ".join(f"{k}: {v}" for k, v in worst.items()))
    return "\n".join(lines)
