"""Resizing decoded pixels: the display size, Lanczos with a reducing gap, box averages, min-max scaling. Nothing
here decodes a file."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Longest side of the display image (page, heat-map overlays): large enough to read on a tablet, small enough
# that a response stays a few hundred kB. One definition for every caller.
DISPLAY_MAX = 512

# LANCZOS is antialiased (Pillow widens the kernel by the reduction factor); reducing_gap lets Pillow first shrink
# by an integer factor with a cheap box filter while staying >= 3x the target, which makes 2000 -> 224 several
# times faster with no visible difference. JPEGs are already near the target thanks to draft mode.
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0


def _display_target(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(height * scale)), max(2, round(width * scale))


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (e.g. a heat map) to ``shape`` = (height, width); no decoding involved."""
    im = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _resize(img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    h, w = target
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))  # mode "F": no 8-bit rounding
    return np.asarray(im.resize((w, h), _RESAMPLE, reducing_gap=_REDUCING_GAP))


def _reduce_factors(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Pillow's rule for reducing_gap: per axis, shrink by an integer factor while staying >= gap x the target."""
    return tuple(max(1, int(n / t / _REDUCING_GAP)) for n, t in zip(size, target, strict=True))


def _block_mean(a: np.ndarray, fx: int, fy: int) -> np.ndarray:
    """Box average over fy x fx blocks; blocks cut by the edge average the pixels they have (as Image.reduce)."""
    h, w = a.shape
    ph, pw = -h % fy, -w % fx
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)))
    sums = a.reshape(a.shape[0] // fy, fy, a.shape[1] // fx, fx).sum(axis=(1, 3))
    rows = np.minimum(fy, h - np.arange(0, h, fy))
    cols = np.minimum(fx, w - np.arange(0, w, fx))
    return sums / np.outer(rows, cols)


def _minmax(a: np.ndarray) -> np.ndarray:
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)
