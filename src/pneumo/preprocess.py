"""Turn a decoded image into the network's input. Shared by training and inference, numpy only.

Histogram equalisation is the default normalisation: the test-time images of this domain differ from the
training ones mostly in exposure and contrast, and equalising the grey-level histogram takes most of that away
before the network sees the image.
"""

from __future__ import annotations

import numpy as np

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


def to_input(images: np.ndarray | list[np.ndarray], cfg: Preprocessing) -> np.ndarray:
    """Images already at ``cfg.image_size`` (H x W in [0, 1], or uint8) -> float32 batch N x 1 x H x W."""
    batch = []
    for img in images:
        x = np.asarray(img)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        if x.shape != (cfg.image_size, cfg.image_size):
            raise ValueError(f"image is {x.shape}, the model expects {cfg.image_size}x{cfg.image_size}")
        batch.append((normalize_intensity(x, cfg) - cfg.mean) / cfg.std)
    return np.stack(batch)[:, None].astype(np.float32)
