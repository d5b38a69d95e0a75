"""Turn a decoded image into the network's input (:func:`prepare_input` decodes it too). Shared by training and
inference, numpy only.

Histogram equalisation is the default normalisation: the test-time images of this domain differ from the
training ones mostly in exposure and contrast, and equalising the grey-level histogram takes most of that away
before the network sees the image.
"""

from __future__ import annotations

import os

import numpy as np

from pneumo.imaging import load_image
from pneumo.modelfile import Preprocessing

_LEVELS = 256


def equalize(img: np.ndarray) -> np.ndarray:
    """Histogram-equalise a float image in [0, 1] (on 256 levels); returns float32 in [0, 1]."""
    q = np.clip(np.rint(img * (_LEVELS - 1)), 0, _LEVELS - 1).astype(np.intp)
    hist = np.bincount(q.ravel(), minlength=_LEVELS)
    cdf = np.cumsum(hist).astype(np.float64)
    lo = cdf[hist > 0][0] if hist.any() else 0.0
    span = cdf[-1] - lo
    if span <= 0:  # a flat image has nothing to equalise
        return np.full(img.shape, 0.5, dtype=np.float32)
    lut = np.clip((cdf - lo) / span, 0.0, 1.0).astype(np.float32)
    return lut[q]


def normalize_intensity(img: np.ndarray, cfg: Preprocessing) -> np.ndarray:
    """Apply the configured intensity normalisation to one image in [0, 1]."""
    if cfg.normalization == "equalize":
        return equalize(img)
    return img.astype(np.float32, copy=False)


def rescale_content(img: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """The content of ``img`` (H x W float) scaled by ``sx`` across and ``sy`` down about the centre, same size;
    below 1 it shrinks and the edge pixels extend into the margin. Bilinear, exactly the sampling of the training
    augmentation (``grid_sample``, ``align_corners=False``, border padding), so a test-time view is a view the
    model was trained on."""
    h, w = img.shape

    def taps(n: int, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # output pixel centre -> normalised [-1, 1] -> divided by the scale -> input pixel coordinate
        u = ((2 * np.arange(n) + 1) / n - 1) / s
        c = np.clip(((u + 1) * n - 1) / 2, 0, n - 1)
        i0 = np.floor(c).astype(np.intp)
        return i0, np.minimum(i0 + 1, n - 1), (c - i0).astype(np.float32)

    y0, y1, fy = taps(h, sy)
    x0, x1, fx = taps(w, sx)
    a = np.asarray(img, dtype=np.float32)
    rows = a[y0] * (1 - fy)[:, None] + a[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def views(cfg: Preprocessing) -> list[float]:
    """The content scales the network sees for one image: 1.0 (the image as is, which the domain guard reads)
    first, then the other test-time scales of ``cfg.content_scales``."""
    return [1.0, *[s for s in dict.fromkeys(cfg.content_scales) if s != 1.0]]


def averaged_views(cfg: Preprocessing, n_views: int | None = None) -> list[int]:
    """Indices into :func:`views` whose logits are averaged at prediction: the scales of ``cfg.content_scales``, or the
    image as it is (index 0) when there are none. With ``n_views`` only the first ``n_views`` views are at hand
    (a batch prepared without ``content_scales`` has one). Prediction and the training side's calibration both average
    through this, so the probabilities a threshold was chosen on are the ones predict gives."""
    scales = views(cfg)[:n_views]
    return [i for i, s in enumerate(scales) if s in cfg.content_scales] or [0]


def to_input(images: np.ndarray | list[np.ndarray], cfg: Preprocessing, *, content_scales: bool = False) -> np.ndarray:
    """Images already at ``cfg.image_size`` (H x W in [0, 1], or uint8) -> float32 batch N x 1 x H x W.

    With ``content_scales`` the batch is N x V x H x W instead: one channel per content scale of :func:`views`."""
    batch = []
    for img in images:
        x = np.asarray(img)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        if x.shape != (cfg.image_size, cfg.image_size):
            raise ValueError(f"image is {x.shape}, the model expects {cfg.image_size}x{cfg.image_size}")
        scaled = [x if s == 1.0 else rescale_content(x, s, s) for s in (views(cfg) if content_scales else [1.0])]
        batch.append(np.stack([(normalize_intensity(v, cfg) - cfg.mean) / cfg.std for v in scaled]))
    return np.stack(batch).astype(np.float32)


def prepare_input(source: str | os.PathLike | bytes, cfg: Preprocessing, *, name: str | None = None) -> np.ndarray:
    """One file (a path or its bytes) decoded at ``cfg.image_size`` and prepared for the network: V x H x W, one
    channel per test-time view (:func:`to_input` with ``content_scales``). Raises
    :class:`~pneumo.imaging.ImageLoadError` (naming ``name``) when it cannot be read. The one way every
    prediction path (``Predictor.prepare``, the Ray engine's decoding tasks) turns an input into pixels."""
    return to_input([load_image(source, cfg.image_size, name=name)], cfg, content_scales=True)[0]
