"""The shift suite, declared once: every condition a model is checked under, its family, and which of them steer
training (the checkpoint choice) and the operating point (calibration and threshold).

Each condition is a function of an 8-bit grayscale PIL image. The same functions, on the same path (the file
decoded at its own size, perturbed, re-encoded losslessly and read back through the loader a user's file goes
through), serve ``pneumo robustness`` and training (the validation copies made once, then run through the network
every epoch and at finalisation), so the suite that steers training and the one that is reported cannot drift
apart. Families:

- geometry: what differs between acquisition periods and what a model can read instead of the lungs: how much of
  the frame the chest fills (zoom out with a margin, zoom in with a crop), its aspect, and where it sits. Margins
  take the mean of the image's border, not the edge replication of the training augmentation, so the suite does
  not replay training;
- acquisition: exposure (gamma), contrast, blur, sharpening, JPEG re-compression, resolution loss, noise, crop;
- occlusion: what lies outside the lungs hidden: a flat grey over the outer 15 % of the frame, or over the
  burnt-in bright marks near the edges (laterality letters, text). A model that reads the lungs keeps its AUC;
- control: the central lung box hidden. Here a low AUC is right: a model that still separates the classes without
  the lungs reads something else. Controls are reported, never part of the worst case;
- lungs: the lungs themselves hidden ("lungs hidden", where a low AUC is right) or everything but the lungs ("only
  the lungs", where the clean AUC is right), under a flat mean grey. Each takes the image and its lung region, from
  the atlas placed as the training copies are framed or from the image's own mask (:mod:`pneumo.lungs`): see
  :func:`lung_png`. Reported beside the clean figures of the same images, never part of the worst case.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageFilter

from pneumo.imaging import load_image
from pneumo.lungs import LungSource

Perturb = Callable[[Image.Image], Image.Image]
LungPerturb = Callable[[Image.Image, np.ndarray], Image.Image]  # the image and its lung region (bool, its size)
Family = Literal["geometry", "acquisition", "occlusion", "control", "lungs"]

BORDER = 0.15  # share of width and height on each side hidden by "border masked"; the lung box is the rest
MARKER_BAND = 0.12  # burnt-in marks are looked for within this share of the frame from each edge


def gray8(img: np.ndarray) -> Image.Image:
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
        return gray8(load_image(buf.getvalue(), name=f"JPEG q{q}"))

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


def box_mask(shape: tuple[int, int], margin: float = BORDER) -> np.ndarray:
    """True inside the central box that leaves ``margin`` of the height and width on each side: the lung box."""
    h, w = shape
    dy, dx = round(h * margin), round(w * margin)
    inside = np.zeros((h, w), dtype=bool)
    inside[dy : h - dy, dx : w - dx] = True
    return inside


def _flat(a: np.ndarray, where: np.ndarray) -> Image.Image:
    """``where`` filled with the image's mean grey: hidden, without a new edge brighter or darker than the image."""
    out = a.copy()
    out[where] = np.uint8(round(float(a.mean())))
    return Image.fromarray(out)


def hide_box(margin: float = BORDER, inside: bool = True) -> Perturb:
    """Flat grey over the central box that leaves ``margin`` on each side (``inside``) or over everything outside
    it (the border)."""

    def f(im: Image.Image) -> Image.Image:
        a = np.asarray(im)
        box = box_mask(a.shape, margin)
        return _flat(a, box if inside else ~box)

    return f


mask_border = hide_box(BORDER, inside=False)
mask_lung_box = hide_box(BORDER, inside=True)


def marker_mask(im: Image.Image) -> np.ndarray:
    """Burnt-in bright marks near the edges (laterality letters, text, their boxes): pixels among the brightest 3 %
    of the image that stand out from a grey opening of the size of a letter, within :data:`MARKER_BAND` of an
    edge, grown by a few pixels. Found on a copy of at most 256 px, so a full-size image costs no more. It also
    takes bright bone at the frame's edge (shoulders), which lies outside the lungs as well."""
    w, h = im.size
    scale = min(1.0, 256 / max(w, h))
    small = im.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BILINEAR)
    k = max(3, round(0.04 * min(small.size))) | 1  # wider than a letter's stroke, narrower than a lung
    opened = small.filter(ImageFilter.MinFilter(k)).filter(ImageFilter.MaxFilter(k))
    a, bg = np.asarray(small, dtype=np.int16), np.asarray(opened, dtype=np.int16)
    # Letters in the downscaled training copies are grey, not white: "bright" is relative to the image.
    marks = (a >= np.percentile(a, 97)) & (a - bg >= 40) & ~box_mask(a.shape, MARKER_BAND)
    grown = Image.fromarray(marks.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))
    return np.asarray(grown.resize((w, h), Image.Resampling.NEAREST)) > 0


def mask_markers(im: Image.Image) -> Image.Image:
    a = np.asarray(im)
    return _flat(a, marker_mask(im))


def hide_lungs(im: Image.Image, lungs: np.ndarray) -> Image.Image:
    """Flat mean grey over the lung region ``lungs`` (bool, the image's size)."""
    return _flat(np.asarray(im), np.asarray(lungs, dtype=bool))


def only_lungs(im: Image.Image, lungs: np.ndarray) -> Image.Image:
    """Flat mean grey over everything but the lung region ``lungs`` (bool, the image's size)."""
    return _flat(np.asarray(im), ~np.asarray(lungs, dtype=bool))


class Shift(NamedTuple):
    perturb: Perturb | LungPerturb  # family "lungs": a LungPerturb, which needs the lung region too
    family: Family
    steers: bool = False  # measured every epoch (checkpoint choice) and pooled into the operating point's fit


SUITE: dict[str, Shift] = {
    "zoom 0.8 (margin)": Shift(_affine(0.8, 0.8), "geometry", steers=True),
    "zoom 0.9 (margin)": Shift(_affine(0.9, 0.9), "geometry"),
    "zoom 1.1 (cropped)": Shift(_affine(1.1, 1.1), "geometry"),
    "zoom 1.25 (cropped)": Shift(_affine(1.25, 1.25), "geometry", steers=True),
    "squeeze across 15%": Shift(_affine(0.85, 1.0), "geometry", steers=True),
    "squeeze down 15%": Shift(_affine(1.0, 0.85), "geometry", steers=True),
    "shift right 10%": Shift(_affine(1.0, 1.0, 0.10, 0.0), "geometry"),
    "shift down 10%": Shift(_affine(1.0, 1.0, 0.0, 0.10), "geometry"),
    "gamma 0.6 (brighter)": Shift(_gamma(0.6), "acquisition"),
    "gamma 1.6 (darker)": Shift(_gamma(1.6), "acquisition"),
    "contrast x0.6": Shift(_contrast(0.6), "acquisition"),
    "contrast x1.4": Shift(_contrast(1.4), "acquisition"),
    "blur sigma 1": Shift(lambda im: im.filter(ImageFilter.GaussianBlur(1.0)), "acquisition"),
    "blur sigma 2": Shift(lambda im: im.filter(ImageFilter.GaussianBlur(2.0)), "acquisition"),
    "sharpen": Shift(lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=100, threshold=0)), "acquisition"),
    "jpeg q20": Shift(_jpeg(20), "acquisition"),
    "resolution x0.4": Shift(_lowres(0.4), "acquisition"),
    "noise 3%": Shift(_noise(0.03), "acquisition"),
    "crop 15%": Shift(_crop(0.15), "acquisition"),
    "border masked 15%": Shift(mask_border, "occlusion", steers=True),
    "markers masked": Shift(mask_markers, "occlusion"),
    "lung box masked": Shift(mask_lung_box, "control"),
    "lungs hidden": Shift(hide_lungs, "lungs"),
    "only the lungs": Shift(only_lungs, "lungs"),
}


def family(name: str) -> dict[str, Perturb]:
    """The conditions of one family, in the suite's order."""
    return {k: s.perturb for k, s in SUITE.items() if s.family == name}


GEOMETRY = family("geometry")
ACQUISITION = family("acquisition")
OCCLUSION = family("occlusion")
CONTROLS = family("control")
LUNG_CHECKS: dict[str, LungPerturb] = family("lungs")  # each needs the lung region: see lung_png
# The conditions a model is judged on (worst case); controls are reported beside them.
PERTURBATIONS: dict[str, Perturb] = {**GEOMETRY, **ACQUISITION, **OCCLUSION}
# What steers training and the operating point: derived from the suite, never declared a second time.
TRAINING_CHECKS: tuple[str, ...] = tuple(k for k, s in SUITE.items() if s.steers)
FRAMING_CHECKS: tuple[str, ...] = tuple(k for k in TRAINING_CHECKS if SUITE[k].family == "geometry")


def encode_png(im: Image.Image) -> bytes:
    """A perturbed image as a lossless file, to be read back through the loader a user's file goes through."""
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def perturbed_png(path: str | Path, perturb: Perturb) -> bytes:
    """The file at ``path`` under ``perturb`` as the suite makes it: decoded at its own size, perturbed, re-encoded
    losslessly, ready for the loader a user's file goes through."""
    return encode_png(perturb(gray8(load_image(path))))


def checked_copy(path: str | Path, name: str, size: int) -> np.ndarray:
    """The file at ``path`` under condition ``name`` (:func:`perturbed_png`) loaded at the model's input ``size``
    as any file is: uint8, size x size."""
    src = perturbed_png(path, SUITE[name].perturb)
    return np.clip(np.rint(load_image(src, size, name=f"{Path(path).name} ({name})") * 255), 0, 255).astype(np.uint8)


def checked_copies(paths: Sequence[str | Path], size: int, names: Sequence[str] = TRAINING_CHECKS) -> dict:
    """``{name: N x size x size uint8}``: every file under each condition (default the training checks), made
    exactly as ``pneumo robustness`` makes it, so the checks that steer training and the operating point see what
    the reported suite sees."""
    return {name: np.stack([checked_copy(p, name, size) for p in paths]) for name in names}


def lung_png(path: str | Path, name: str, lungs: LungSource) -> bytes:
    """The file at ``path`` under the lung check ``name`` (:data:`LUNG_CHECKS`) as the suite makes every condition
    (:func:`perturbed_png`), on the lung region ``lungs`` gives for it at its own size."""
    im = gray8(load_image(path))
    return encode_png(LUNG_CHECKS[name](im, lungs.region(path, (im.height, im.width))))


def lung_copies(paths: Sequence[str | Path], size: int, lungs: LungSource, names: Sequence[str] = tuple(LUNG_CHECKS)):
    """``{name: N x size x size uint8}``: every file under each lung check, made as ``pneumo robustness`` makes it
    (:func:`lung_png`), at the model's input ``size``; for training's checks, as :func:`checked_copies`."""
    out = {}
    for name in names:
        arrays = []
        for p in paths:
            img = load_image(lung_png(p, name, lungs), size, name=f"{Path(p).name} ({name})")
            arrays.append(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))
        out[name] = np.stack(arrays)
    return out
