"""Shifted validation: how a model holds up when acquisition changes, and whether it uses a sharpness shortcut.

Each perturbation is applied to the decoded validation image, which is then re-encoded and sent through the
same loader and predictor a user's file goes through. Perturbations imitate what differs between scanners and
sites: exposure (gamma), contrast, blur, sharpening, JPEG re-compression, resolution loss, noise, cropping.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pneumo.evaluate import binary_metrics
from pneumo.imaging import load_image
from pneumo.inference import Predictor

Perturb = Callable[[Image.Image], Image.Image]


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
        return Image.open(io.BytesIO(buf.getvalue())).convert("L")

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


PERTURBATIONS: dict[str, Perturb] = {
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
SHORTCUT_PROBES = {
    "blur sigma 1": PERTURBATIONS["blur sigma 1"],
    "sharpen": PERTURBATIONS["sharpen"],
}


def _encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def predict_perturbed(predictor: Predictor, paths: Sequence[Path], perturb: Perturb | None, tta: bool = False):
    """Probabilities for every path after ``perturb`` (``None``: the file as it is)."""

    def source(p: Path):
        if perturb is None:
            return str(p), p
        img = Image.fromarray(np.round(load_image(p) * 255).astype(np.uint8))
        return str(p), _encode(perturb(img))

    preds = list(predictor.predict_sources((source(p) for p in paths), batch_size=32, tta=tta))
    return np.array([p.probability for p in preds]), preds


def shifted_validation(
    predictor: Predictor, paths: Sequence[Path], y: np.ndarray, *, tta: bool = False, extra: dict | None = None
) -> dict[str, dict]:
    """Metrics on clean validation and under every perturbation, plus the mean probability change and the share
    of decisions that flip; ``extra`` maps a name to ``(paths, y)`` of further sets (e.g. original-size images)."""
    y = np.asarray(y)
    base, preds = predict_perturbed(predictor, paths, None, tta)
    results = {"clean": _summary(y, base, predictor.threshold, base, preds)}
    for name, f in PERTURBATIONS.items():
        prob, preds = predict_perturbed(predictor, paths, f, tta)
        results[name] = _summary(y, prob, predictor.threshold, base, preds)
    shifted = [r for k, r in results.items() if k != "clean"]
    results["shifted (mean)"] = {
        k: float(np.mean([r[k] for r in shifted])) for k in shifted[0] if isinstance(shifted[0][k], float)
    }
    for name, (xpaths, xy) in (extra or {}).items():
        prob, preds = predict_perturbed(predictor, xpaths, None, tta)
        results[name] = _summary(np.asarray(xy), prob, predictor.threshold, None, preds)
    return results


def _summary(y: np.ndarray, prob: np.ndarray, threshold: float, base: np.ndarray | None, preds) -> dict:
    m = binary_metrics(y, prob, threshold)
    out = {k: float(m[k]) for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "ece")}
    out["flagged_out_of_domain"] = float(np.mean([p.in_domain is False for p in preds]))
    if base is not None:
        out["mean_abs_change"] = float(np.mean(np.abs(prob - base)))
        out["decisions_flipped"] = float(np.mean((prob >= threshold) != (base >= threshold)))
    return out


def format_table(results: dict[str, dict]) -> str:
    """A markdown table of :func:`shifted_validation` results."""
    cols = ["accuracy", "sensitivity", "specificity", "roc_auc", "ece", "mean_abs_change", "decisions_flipped"]
    cols.append("flagged_out_of_domain")
    lines = ["| condition | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in results.items():
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) and np.isfinite(r[c]) else "—" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
