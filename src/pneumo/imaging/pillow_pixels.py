"""Pillow images to gray float32 in [0, 1]: EXIF orientation, JPEG draft mode, the decode budget checked before
the pixels are decoded, and high-bit-depth images reduced strip by strip."""

from __future__ import annotations

import math

import numpy as np
from PIL import ExifTags, Image, ImageChops

from pneumo.imaging.limits import _Bad, _check_budget, _first_line
from pneumo.imaging.resize import _minmax, _resize8, _to8

_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# What ImageOps.exif_transpose does per orientation; applied after resizing, so the full-size image is not copied.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Bytes per pixel of the largest buffer each Pillow mode needs here: Pillow unpacks 1-bit to a byte, stores
# RGB, LA, I and F in 4 bytes, and a palette image is expanded to RGB(A).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_STRIP_BYTES = 4 * 2**20  # high-bit-depth images are reduced strip by strip, at most this much float at a time


def _pillow_pixels(im: Image.Image, target: tuple[int, int] | None) -> np.ndarray:
    orientation = _orientation(im)
    rotated = orientation in _ROTATED_ORIENTATIONS
    full_size, full_bands = im.size, len(im.getbands())
    if target is not None and im.format in ("JPEG", "MPO"):
        # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 size (never below the target) and straight to gray.
        h, w = target
        im.draft("L", (h, w) if rotated else (w, h))
    _check_budget(_decoded_bytes(im, full_size, full_bands), f"{full_size[0]}x{full_size[1]} {im.mode} image")
    try:
        im.load()  # the full decode, here inside the try, so truncated data raises instead of coming back grey
    except OSError as exc:
        if "truncated" in str(exc):
            raise _Bad(f"truncated {im.format} data (file is damaged or incomplete)") from exc
        raise _Bad(f"damaged {im.format} data ({_first_line(exc)})") from exc
    if target is None:
        return _to_gray(_transpose(im, orientation))
    h, w = (target[1], target[0]) if rotated else target  # the target in the stored (untransposed) orientation
    # Every image is resized as 8-bit: Pillow's uint8 resampling is several times faster than on floats, and the
    # training cache stores 8-bit images anyway, so predictions see what training saw. 8-bit images have
    # transparency flattened onto black first, in 8 bits; 16-bit, 32-bit and float images are scaled on the bit
    # range their data uses and rounded to 8 bits strip by strip. No float copy of the full-size image is made.
    gray8 = Image.fromarray(_gray8(im)) if im.mode.startswith("I") or im.mode == "F" else _flat_gray8(im)
    return _to_gray(_transpose(_resize8(gray8, (h, w)), orientation))


def _decoded_bytes(im: Image.Image, full_size: tuple[int, int], full_bands: int) -> int:
    """The largest buffer decoding ``im`` (after any draft) takes; a progressive JPEG keeps all its DCT
    coefficients (2 bytes per coefficient, one per pixel and band of the full-size image) whatever the scale."""
    n = im.width * im.height * _BYTES_PER_PIXEL.get(im.mode, 4)
    if im.format in ("JPEG", "MPO") and im.info.get("progressive"):
        n = max(n, full_size[0] * full_size[1] * 2 * full_bands)
    return n


def _transpose(im: Image.Image, orientation: int) -> Image.Image:
    return im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im


def _flat_gray8(im: Image.Image) -> Image.Image:
    """An 8-bit image as mode L, transparency flattened onto black (gray x alpha / 255, rounded)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "RGBA", "PA"):
        return ImageChops.multiply(im.convert("L"), im.getchannel("A"))
    return im if im.mode == "L" else im.convert("L")


def _gray8(im: Image.Image) -> np.ndarray:
    """A high-bit-depth image as gray uint8, full size, made strip by strip (never a full-size float copy): the
    scaling is that of :func:`_to_gray` (the bit range from the brightest pixel of every strip, or the mode's range,
    or min-max), then rounded to 8 bits."""
    w, h = im.size
    rows = max(1, _STRIP_BYTES // max(1, w * 8))
    strips = [(y0, min(h, y0 + rows)) for y0 in range(0, h, rows)]

    def strip(y0: int, y1: int) -> np.ndarray:
        return np.asarray(im.crop((0, y0, w, y1))).astype(np.float64)

    lo, hi = np.inf, -np.inf  # of the finite pixels
    for y0, y1 in strips:
        finite = strip(y0, y1)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        offset, scale = 0.0, bit_range(max(hi, 0.0))
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        offset, scale = 0.0, 1.0
    else:  # min-max, as _minmax
        offset, scale = (lo, hi - lo) if hi > lo else (0.0, np.inf)
    out = np.empty((h, w), dtype=np.uint8)
    for y0, y1 in strips:
        out[y0:y1] = _to8((strip(y0, y1) - offset) / scale)
    return out


def bit_range(brightest: float) -> float:
    """The full scale of high-bit-depth pixels whose brightest value is ``brightest``: ``2**bits - 1`` for the
    fewest bits (8 to 16) that hold it. A 12-bit detector's image stored in a 16-bit PNG (values up to 4095) is
    read on its 12-bit scale, as a DICOM file's BitsStored would say, instead of as a nearly black 16-bit image whose
    few grey levels the 8-bit histogram equalisation merges (seen here: a normal original read that way went from
    P 0.54 to 0.97). Within that scale a dark value stays dark: this is not a min-max stretch."""
    bits = min(16, max(8, math.ceil(math.log2(brightest + 1)))) if brightest > 0 else 16
    return float(2**bits - 1)


def _to_gray(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 in [0, 1], scaled by the bit range the data uses (:func:`bit_range`) for 16-bit
    integers, by the mode's range otherwise."""
    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32)
        return a / np.float32(bit_range(float(a.max())))
    if im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode == "I" and a.min() >= 0 and a.max() <= 65535:
            return (a / bit_range(float(a.max()))).astype(np.float32)  # a 16-bit image Pillow widened to 32-bit
        if im.mode == "F" and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
            return a.astype(np.float32)
        return _minmax(a)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Flatten onto black: transparent padding around an X-ray should look like the dark background.
        im = im.convert("RGBA")
        alpha = np.asarray(im.getchannel("A")).astype(np.float32) / 255.0
        return np.asarray(im.convert("L")).astype(np.float32) / 255.0 * alpha
    if im.mode != "L":
        im = im.convert("RGB").convert("L") if im.mode not in ("RGB", "1") else im.convert("L")
    return np.asarray(im).astype(np.float32) / 255.0


def _orientation(im: Image.Image) -> int:
    if im.format == "PNG" and "exif" not in im.info:
        # Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixels; an
        # orientation there is so rare that it is not worth a full decode before the size checks.
        return 1
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # broken EXIF is common in photos; it must not stop the image from loading
        return 1


def _shown_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if _orientation(im) in _ROTATED_ORIENTATIONS else (w, h)
