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
_DRAFT_FACTORS = (8, 4, 2)  # the reductions libjpeg's DCT scaling offers (Pillow's draft mode)


def _display_target(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(height * scale)), max(2, round(width * scale))


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (e.g. a heat map) to ``shape`` = (height, width); no decoding involved."""
    im = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _resize8(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    """An 8-bit gray image (mode L) at ``target`` = (height, width): Lanczos with the reducing gap, in 8 bits, as the
    training cache's copies were made. Every decoded image reaches the network's size through here, whatever its
    bit depth, so the same picture gives the same pixels as a JPEG, a 16-bit PNG or a DICOM file."""
    h, w = target
    # First the power-of-two reduction libjpeg's DCT scaling gives a JPEG in draft mode (the largest of 1/2, 1/4, 1/8
    # that keeps both sides at or above the target, as Pillow's draft picks it), here a box average; JPEGs arrive
    # already reduced. So a PNG or a DICOM file reaches the target as a JPEG original of the same picture does
    # (benchmarks/bit_depth.py: P within 0.03 of the JPEG's on the 16 originals, 0.078 with the plain resize).
    scale = min(im.width // w, im.height // h)
    factor = next((f for f in _DRAFT_FACTORS if scale >= f), 1)
    if factor > 1:
        im = im.reduce(factor)
    return im.resize((w, h), _RESAMPLE, reducing_gap=_REDUCING_GAP)


def _to8(a: np.ndarray) -> np.ndarray:
    """Gray values in [0, 1] (NaN as black) as uint8, rounded: the 256 levels an 8-bit file of them would hold."""
    return np.rint(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def _resize(img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """A decoded float image in [0, 1] at ``target``, through its 8-bit levels and :func:`_resize8`."""
    return np.asarray(_resize8(Image.fromarray(_to8(img)), target)).astype(np.float32) / 255.0


def _minmax(a: np.ndarray) -> np.ndarray:
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)
