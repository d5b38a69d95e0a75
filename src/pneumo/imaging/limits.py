"""What keeps one file from costing more than one image: the pixel and memory limits, the checks made before any
pixels are decoded, opening a source, and the reason a file failed in words a person can act on."""

from __future__ import annotations

import errno
import io
import os
import re
from typing import BinaryIO

from PIL import Image

from pneumo.imaging.formats import _REFUSED_MAGIC, is_text

# 8000 x 8000. The largest chest detectors give ~4300 x 3500 (15 MP), so this leaves room; it also sits below
# Pillow's own 89 MP warning threshold, which we escalate to an error, so both limits agree (and every refusal,
# ours or Pillow's, quotes this number).
MAX_PIXELS = 64_000_000
MIN_SIDE = 2
# The largest pixel buffer one image may need while it is decoded (Pillow's decoded image, or the float copy of a
# DICOM's pixels). It fits a 64 MP grayscale image at 8 or 16 bits (Pillow keeps colour at 4 bytes a pixel, so
# colour fits 33 MP); JPEGs are measured after DCT scaling, so a large JPEG decoded for a small target costs a
# fraction. What does not fit is refused before its pixels are decoded; a high-bit-depth image is then rounded to
# 8 bits strip by strip (no full-size float copy), so one image costs little more than this budget.
DECODE_BUDGET = 128 * 2**20

_BYTES = (bytes, bytearray, memoryview)
_OPEN_ERRORS = {
    FileNotFoundError: "file not found",
    IsADirectoryError: "is a directory, not an image file",
    PermissionError: "permission denied (cannot read the file)",
}


class _Bad(Exception):
    """Internal: the reason a file failed; the public functions prefix it with the file's name."""

    def __init__(self, reason: str, kind: str = "damaged"):
        super().__init__(reason)
        self.kind = kind


def _open(source: str | os.PathLike | bytes) -> BinaryIO:
    if isinstance(source, _BYTES):
        return io.BytesIO(source)
    try:
        return open(source, "rb")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Bad("symbolic link loop (the link leads back to itself)") from exc
        if isinstance(exc, FileNotFoundError) and os.path.islink(source):
            raise _Bad(f"broken symbolic link (its target {os.readlink(source)!r} does not exist)") from exc
        reason = next((r for kind, r in _OPEN_ERRORS.items() if isinstance(exc, kind)), None)
        raise _Bad(reason or f"cannot read the file ({exc.strerror or exc})") from exc


def _head(fp: BinaryIO) -> bytes:
    try:
        head = fp.read(512)
        fp.seek(0)
    except OSError as exc:
        raise _Bad(f"cannot read the file ({exc.strerror or exc})") from exc
    if not head:
        raise _Bad("file is empty (0 bytes)", kind="unsupported")
    return head


def _check_dims(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise _Bad(
            f"image claims {width}x{height} pixels, over the limit of {MAX_PIXELS:,} "
            "(refused as a possible decompression bomb)"
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise _Bad(f"image is {width}x{height} pixels, too small to be an X-ray")


def _not_an_image(head: bytes) -> _Bad:
    named = next((name for magic, name in _REFUSED_MAGIC if head.startswith(magic)), None)
    if named:
        return _Bad(f"{named} content is not an image format Pneumo reads (expected JPEG, PNG, BMP, TIFF, WebP or "
                    "DICOM)", "unsupported")  # fmt: skip
    if is_text(head):
        return _Bad("file holds text, not an image", kind="unsupported")
    return _Bad("not a recognised image format (expected JPEG, PNG, BMP, TIFF, WebP or DICOM content)", "unsupported")


def _check_budget(needed: int, what: str, fits: str = "64 MP grayscale or 33 MP colour") -> None:
    if needed > DECODE_BUDGET:
        raise _Bad(
            f"decoding this {what} would need {needed / 2**20:,.0f} MB, over the per-image budget of "
            f"{DECODE_BUDGET / 2**20:,.0f} MB ({fits}); send a smaller or grayscale image"
        )


def _bomb(exc: BaseException) -> _Bad:
    """Pillow's own refusal (past 89 MP it warns, past 179 MP it fails) in the words of our limit."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    claimed = f"claims {int(m.group(1)):,} pixels, " if m else ""
    return _Bad(f"image {claimed}over the limit of {MAX_PIXELS:,} (refused as a possible decompression bomb)")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return str(_bomb(exc))
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the image"
    text = _first_line(exc)
    if "truncated" in text.lower():
        return "truncated image data (file is damaged or incomplete)"
    return f"cannot decode the image ({text})"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
