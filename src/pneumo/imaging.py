"""Every image file the project reads goes through here: one grayscale float32 array in [0, 1] out.

The format is sniffed from the content, never from the extension: DICOM carries ``DICM`` at byte 128, everything
else goes to Pillow, and data Pillow cannot identify gets one more chance as a DICOM dataset without the preamble.
Any failure leaves as :class:`ImageLoadError` whose message names the file and says what was wrong with it.
"""

from __future__ import annotations

import codecs
import errno
import io
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageChops

from pneumo.errors import ImageLoadError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}
)

# 8000 x 8000. The largest chest detectors give ~4300 x 3500 (15 MP), so this leaves room; it also sits below
# Pillow's own 89 MP warning threshold, which we escalate to an error, so both limits agree (and every refusal,
# ours or Pillow's, quotes this number).
MAX_PIXELS = 64_000_000
MIN_SIDE = 2
# Longest side of the display image (page, heat-map overlays): large enough to read on a tablet, small enough
# that a response stays a few hundred kB. One definition for every caller.
DISPLAY_MAX = 512
# The largest pixel buffer one image may need while it is decoded (Pillow's decoded image, or the float copy of a
# DICOM's pixels). It fits a 64 MP grayscale image at 8 or 16 bits (Pillow keeps colour at 4 bytes a pixel, so
# colour fits 33 MP); JPEGs are measured after DCT scaling, so a large JPEG decoded for a small target costs a
# fraction. What does not fit is refused before its pixels are decoded; everything after the decode is reduced
# towards the target in the image's own bit depth first, so one image costs little more than this budget.
DECODE_BUDGET = 128 * 2**20

# LANCZOS is antialiased (Pillow widens the kernel by the reduction factor); reducing_gap lets Pillow first shrink
# by an integer factor with a cheap box filter while staying >= 3x the target, which makes 2000 -> 224 several
# times faster with no visible difference. JPEGs are already near the target thanks to draft mode.
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0
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
_BYTES = (bytes, bytearray, memoryview)
_OPEN_ERRORS = {
    FileNotFoundError: "file not found",
    IsADirectoryError: "is a directory, not an image file",
    PermissionError: "permission denied (cannot read the file)",
}
_T = TypeVar("_T")


class _Bad(Exception):
    """Internal: the reason a file failed; the public functions prefix it with the file's name."""

    def __init__(self, reason: str, kind: str = "damaged"):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says, without decoding its pixels."""

    format: str
    width: int
    height: int
    mode: str


# The formats the loader is meant for, by their magic bytes (DICOM aside); Pillow opens more (GIF, PDF, icons),
# which a service can refuse by name before decoding.
_SUPPORTED_MAGIC = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WebP"),
)


# The only Pillow plugins the loader lets open a file (JPEG's also opens MPO, a JPEG with several pictures).
# Without this list Pillow tries every plugin it has: EPS runs Ghostscript on PostScript (a program, which can loop
# for ever), and GIF, PDF, icons and the rest are nothing an X-ray arrives as.
PILLOW_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
# Content Pillow could open through a plugin that is not allowed, told apart only to say what it is.
_REFUSED_MAGIC = (
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "PostScript (EPS)"),
    (b"GIF8", "GIF"),
    (b"%PDF", "PDF"),
)


def is_dicom(data: bytes) -> bool:
    """True when ``data`` (at least the first 132 bytes of a file) has the DICOM ``DICM`` magic at byte 128."""
    return data[128:132] == b"DICM"


def maybe_headerless_dicom(data: bytes) -> bool:
    """DICOM written without the 128-byte preamble: tags come sorted, so it starts in group 0002 or 0008."""
    return data[:2] in (b"\x02\x00", b"\x08\x00")


def is_text(head: bytes) -> bool:
    """True when the first bytes of a file read as UTF-8 text (no NUL): a note or a CSV, not an image."""
    try:  # the incremental decoder tolerates a character cut at the end of the sniffed bytes
        return b"\0" not in head and bool(codecs.getincrementaldecoder("utf-8")().decode(head))
    except UnicodeDecodeError:
        return False


def sniff_format(data: bytes) -> str | None:
    """The image format the content claims to be, when it is one the loader is meant for; ``None`` otherwise
    (a headerless DICOM is told only by decoding it: :func:`maybe_headerless_dicom`)."""
    if is_dicom(data):
        return "DICOM"
    for magic, offset, name in _SUPPORTED_MAGIC:
        if data[offset : offset + len(magic)] == magic and (name != "WebP" or data[:4] == b"RIFF"):
            return name
    # BMP's magic is only two letters; the reserved header bytes that must be zero keep text starting "BM" out.
    if data[:2] == b"BM" and data[6:10] == b"\0\0\0\0" and len(data) > 26:
        return "BMP"
    return None


def load_image(
    source: str | os.PathLike | bytes, size: int | tuple[int, int] | None = None, *, name: str | None = None
) -> np.ndarray:
    """Decode any supported image (JPEG, PNG, BMP, TIFF, WebP, DICOM) into a 2-D float32 grayscale array in [0, 1].

    ``size`` is ``n`` for n x n or ``(height, width)``; the image is squashed to exactly that size, aspect ratio
    not kept, because the training copies were squashed the same way. ``name`` labels a bytes ``source`` in error
    messages. Raises ImageLoadError for anything wrong with the file, ValueError for an invalid ``size``.
    """
    target = _target(size)
    return _guarded(source, name, lambda fp, head: _decode(fp, head, target))


def probe_image(source: str | os.PathLike | bytes, *, name: str | None = None) -> ImageInfo:
    """Read only the header and return format, size and mode; raises ImageLoadError for unreadable files.

    Cheap enough to run over thousands of files. Damage past the header (a truncated JPEG) is only found by
    :func:`load_image`.
    """
    return _guarded(source, name, _probe)


def load_display_image(
    source: str | os.PathLike | bytes, max_side: int = DISPLAY_MAX, *, name: str | None = None
) -> np.ndarray:
    """The image for showing to a person: aspect ratio kept, the longer side at most ``max_side`` pixels."""
    info = probe_image(source, name=name)
    return load_image(source, _display_target(info.width, info.height, max_side), name=name)


def load_image_and_display(
    source: str | os.PathLike | bytes,
    size: int | tuple[int, int],
    max_side: int = DISPLAY_MAX,
    *,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_image` at ``size`` and :func:`load_display_image` at ``max_side`` from one opening of
    ``source``: the file is read, sniffed and checked once, and a DICOM's pixels are decoded once (a JPEG is
    decoded at each size, as its scaled decoding is what makes the small one cheap). The same arrays as the two
    calls give."""
    target = _target(size)
    return _guarded(source, name, lambda fp, head: _decode_both(fp, head, target, max_side))


def _display_target(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(height * scale)), max(2, round(width * scale))


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (e.g. a heat map) to ``shape`` = (height, width); no decoding involved."""
    im = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _guarded(source: str | os.PathLike | bytes, name: str | None, read: Callable[[BinaryIO, bytes], _T]) -> _T:
    """Open ``source`` and run ``read(file, first_bytes)``; whatever goes wrong leaves as one ImageLoadError."""
    label = name if name is not None else "<bytes>" if isinstance(source, _BYTES) else os.fspath(source)
    try:
        with _open(source) as fp:
            return read(fp, _head(fp))
    except _Bad as exc:
        raise ImageLoadError(f"{label}: {exc}", kind=exc.kind) from exc.__cause__
    except Exception as exc:  # a decoder bug or an odd file must still reach the user as one line
        raise ImageLoadError(f"{label}: {_describe(exc)}") from exc


def _decode(fp: BinaryIO, head: bytes, target: tuple[int, int] | None) -> np.ndarray:
    src = _read_dicom(fp) if is_dicom(head) else _sniff(fp, head)
    return _finish(_pillow_pixels(src, target) if isinstance(src, Image.Image) else _dicom_pixels(src), target)


def _decode_both(
    fp: BinaryIO, head: bytes, target: tuple[int, int] | None, max_side: int
) -> tuple[np.ndarray, np.ndarray]:
    src = _read_dicom(fp) if is_dicom(head) else _sniff(fp, head)
    if isinstance(src, Image.Image):
        display_target = _display_target(*_shown_size(src), max_side)
        net = _pillow_pixels(src, target)
        fp.seek(0)
        display = _pillow_pixels(_sniff(fp, head), display_target)
    else:
        info = _dicom_info(src)
        display_target = _display_target(info.width, info.height, max_side)
        net = display = _dicom_pixels(src)
    return _finish(net, target), _finish(display, display_target)


def _finish(img: np.ndarray, target: tuple[int, int] | None) -> np.ndarray:
    if target is not None and img.shape != target:
        img = _resize(img, target)
    return np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0).astype(np.float32, copy=False)


def _probe(fp: BinaryIO, head: bytes) -> ImageInfo:
    src = _read_dicom(fp, header_only=True) if is_dicom(head) else _sniff(fp, head)
    if not isinstance(src, Image.Image):
        return _dicom_info(src)
    w, h = _shown_size(src)
    return ImageInfo(format=src.format or "unknown", width=w, height=h, mode=src.mode)


# --- sources and checks ---


def _target(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if not (isinstance(h, int | np.integer) and isinstance(w, int | np.integer) and h > 0 and w > 0):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(h), int(w)


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


# --- Pillow formats ---


def _sniff(fp: BinaryIO, head: bytes) -> Image.Image | Dataset:
    """A lazily opened Pillow image or, for data Pillow cannot identify, a DICOM dataset without preamble."""
    try:
        with warnings.catch_warnings():  # the filter is process-wide for a moment; it only touches this warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc) from exc
    except Image.UnidentifiedImageError as exc:
        ds = _headerless_dicom(fp)
        if ds is None:
            raise _not_an_image(head) from exc
        return ds
    _check_dims(*_shown_size(im))
    return im


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
    if not (im.mode.startswith("I") or im.mode == "F"):
        # 8-bit images are resized as 8-bit: Pillow's uint8 resampling is several times faster than on floats, and
        # the training cache stores 8-bit images anyway, so predictions see what training saw. Transparency is
        # flattened onto black first, in 8 bits, so no float copy of the full-size image is ever made.
        im = _flat_gray8(im).resize((w, h), _RESAMPLE, reducing_gap=_REDUCING_GAP)
        return _to_gray(_transpose(im, orientation))
    # 16-bit, 32-bit and float images: box-averaged in strips to within the reducing gap of the target, then
    # resampled in float: what Pillow's resize(reducing_gap=...) does, without a full-size float copy.
    fx, fy = _reduce_factors(im.size, (w, h))
    reduced = Image.fromarray(_reduced_gray(im, fx, fy))
    if (fx, fy) != (1, 1) or reduced.size != (w, h):
        reduced = reduced.resize((w, h), _RESAMPLE, box=(0, 0, im.width / fx, im.height / fy))
    return np.asarray(_transpose(reduced, orientation), dtype=np.float32)


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


def _reduced_gray(im: Image.Image, fx: int, fy: int) -> np.ndarray:
    """A high-bit-depth image as gray float32 in [0, 1], box-averaged by ``fx`` x ``fy`` strip by strip (never a
    full-size float copy); the scaling is that of :func:`_to_gray`, read off the reduced values."""
    if (fx, fy) == (1, 1):
        return _to_gray(im)
    w, h = im.size
    rows = max(fy, _STRIP_BYTES // max(1, w * 8) // fy * fy)  # a multiple of fy: blocks never straddle strips
    parts = [
        _block_mean(np.asarray(im.crop((0, y0, w, min(h, y0 + rows)))).astype(np.float64), fx, fy)
        for y0 in range(0, h, rows)
    ]
    a = np.concatenate(parts)
    if im.mode.startswith("I;16"):
        return (a / 65535.0).astype(np.float32)
    if im.mode == "I" and a.min() >= 0 and a.max() <= 65535:
        return (a / 65535.0).astype(np.float32)
    if im.mode == "F" and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
        return a.astype(np.float32)
    return _minmax(a)


def _to_gray(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 in [0, 1], scaled by the bit range of the mode rather than the data."""
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode == "I" and a.min() >= 0 and a.max() <= 65535:
            return (a / 65535.0).astype(np.float32)  # a 16-bit image Pillow widened to 32-bit
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


def _resize(img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    h, w = target
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))  # mode "F": no 8-bit rounding
    return np.asarray(im.resize((w, h), _RESAMPLE, reducing_gap=_REDUCING_GAP))


def _minmax(a: np.ndarray) -> np.ndarray:
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


# --- DICOM ---


def _read_dicom(fp: BinaryIO, header_only: bool = False) -> Dataset:
    import pydicom  # imported here: most runs only see JPEGs, and pydicom costs ~0.2 s to import

    try:
        # defer_size skips over the pixel bytes while still telling whether they are there
        return pydicom.dcmread(fp, defer_size="64 KB" if header_only else None)
    except Exception as exc:
        raise _Bad(f"damaged DICOM file ({_first_line(exc)})") from exc


def _headerless_dicom(fp: BinaryIO) -> Dataset | None:
    """A DICOM dataset written without the 128-byte preamble, or None when the data is not one."""
    import pydicom

    fp.seek(0)
    if not maybe_headerless_dicom(fp.read(2)):
        return None
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, force=True)
        return ds if "PixelData" in ds else None  # force=True "parses" almost anything; pixels make it real
    except Exception:
        return None


def _dicom_info(ds: Dataset) -> ImageInfo:
    pi = _dicom_checks(ds)
    return ImageInfo(format="DICOM", width=int(ds.Columns), height=int(ds.Rows), mode=f"{pi} {ds.BitsStored}-bit")


def _dicom_checks(ds: Dataset) -> str:
    if "PixelData" not in ds:
        raise _Bad("DICOM file has no pixel data")
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if int(ds.get("SamplesPerPixel", 1)) != 1 or pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise _Bad(f"colour DICOM is not supported (PhotometricInterpretation {pi})")
    _check_dims(int(ds.Columns), int(ds.Rows))
    # the pixels become float64 for the modality LUT and the window
    _check_budget(int(ds.Columns) * int(ds.Rows) * 8, f"{ds.Columns}x{ds.Rows} DICOM image", "16 MP for DICOM")
    return pi


def _dicom_pixels(ds: Dataset) -> np.ndarray:
    """First frame -> modality LUT -> VOI LUT or window (or min-max) -> [0, 1], MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, pixel_array
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    pi = _dicom_checks(ds)
    ds.PhotometricInterpretation = pi
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:  # a preamble-less file: the encoding pydicom detected tells the syntax
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
    tsyntax = meta.TransferSyntaxUID
    _check_codestream(ds)  # a decoder allocates what the codestream says, not what the header says
    try:
        raw = pixel_array(ds, index=0)  # only the first frame of a multi-frame file is decoded
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        reason = "no decoder for it is installed" if "missing dependencies" in str(exc) else _first_line(exc)
        raise _Bad(f"cannot decode DICOM pixel data with transfer syntax {tsyntax.name} ({tsyntax}): {reason}") from exc
    values = apply_modality_lut(raw, ds)

    lut = ds.get("VOILUTSequence")
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        # A VOI LUT takes integer input and maps onto 0 .. 2**bits - 1, bits being the descriptor's third value.
        out = apply_voi(np.rint(values).astype(np.int64), ds, 0).astype(np.float64)
        lo, hi = 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_windowing(values, ds, 0)
        # The window maps onto a range pydicom derives from bits stored, rescale or modality LUT; pushing two
        # extreme values through it reads that range off without copying pydicom's rules here.
        with np.errstate(over="ignore"):
            lo, hi = sorted(float(v) for v in apply_windowing(np.array([-1e300, 1e300]), ds, 0))
    else:
        return _invert(_minmax(np.asarray(values, dtype=np.float64)), pi)
    scaled = (out - lo) / (hi - lo) if hi > lo else np.zeros(out.shape)
    return _invert(np.clip(scaled, 0.0, 1.0).astype(np.float32), pi)


# --- compressed pixel data: the codestream's own size, read before any decoder sees it ---

_CODESTREAM_HEAD = 64 * 1024  # JPEG tables before the SOF marker take a few kB; a J2K SIZ comes right after SOC
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # SOF0-15 (not DHT, JPG, DAC); JPEG-LS SOF55
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"  # its decoder works from Rows and Columns alone


@dataclass(frozen=True)
class _Codestream:
    kind: str
    width: int
    height: int
    components: int
    bits: int


def check_dicom_codestream(ds: Dataset, name: str) -> None:
    """Raise ImageLoadError when the compressed pixel data of ``ds``'s first frame declares a size over the limits
    or other than its Rows x Columns (one sample a pixel): a 10 KB file whose header says 512 x 512 and whose JPEG
    2000 codestream says 20000 x 20000 would otherwise cost gigabytes in the decoder. Native pixel data, and data
    sets without pixels, pass. Reads the codestream's first kilobytes only (JPEG SOF / JPEG-LS SOF55, J2K SIZ)."""
    try:
        _check_codestream(ds)
    except _Bad as exc:
        raise ImageLoadError(f"{name}: {exc}", kind=exc.kind) from exc


def _check_codestream(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None or not tsyntax.is_encapsulated or tsyntax == _RLE_LOSSLESS or "PixelData" not in ds:
        return
    cs = _read_codestream(_first_frame_head(ds))
    if cs is None:
        raise _Bad(
            f"cannot read the size of the compressed pixel data with transfer syntax {tsyntax.name} ({tsyntax}): no "
            "JPEG or JPEG 2000 header in its first frame (damaged, or a compression Pneumo does not decode)"
        )
    rows, cols, samples = int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), int(ds.get("SamplesPerPixel", 1))
    if cs.width * cs.height > MAX_PIXELS:
        raise _Bad(
            f"its {cs.kind} codestream claims {cs.width}x{cs.height} pixels, over the limit of {MAX_PIXELS:,} "
            f"(the header says {cols}x{rows}; refused as a possible decompression bomb)"
        )
    if (cs.width, cs.height, cs.components) != (cols, rows, samples):
        raise _Bad(
            f"its {cs.kind} codestream is {cs.width}x{cs.height} with {cs.components} component(s) but the header "
            f"says {cols}x{rows} with {samples} (damaged or crafted pixel data)"
        )
    per_sample = 1 if cs.bits <= 8 else 2 if cs.bits <= 16 else 4
    _check_budget(cs.width * cs.height * cs.components * per_sample, f"{cs.width}x{cs.height} {cs.kind} codestream")


def _first_frame_head(ds: Dataset) -> bytes:
    """The first bytes of the first frame's compressed data (its fragments joined up to a few tens of kB)."""
    from pydicom.encaps import generate_fragmented_frames

    try:
        frames = generate_fragmented_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
        head = b""
        for fragment in next(frames):
            head += bytes(fragment[: _CODESTREAM_HEAD - len(head)])
            if len(head) >= _CODESTREAM_HEAD:
                break
        return head
    except Exception as exc:  # pydicom raises ValueError and friends for broken item tags
        raise _Bad(f"damaged encapsulated pixel data ({_first_line(exc)})") from exc


def _read_codestream(data: bytes) -> _Codestream | None:
    """Size, components and bit depth from a JPEG (SOF) or JPEG 2000 (SIZ, also inside a JP2 box) header."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_sof(data)
    start = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ; a JP2 wrapper puts boxes before them
    if start < 0 or len(data) < start + 4 + 38 + 3:
        return None
    siz = start + 4
    xsiz, ysiz, xo, yo = (int.from_bytes(data[siz + 4 + 4 * k : siz + 8 + 4 * k], "big") for k in range(4))
    comps = int.from_bytes(data[siz + 36 : siz + 38], "big")
    bits = (data[siz + 38] & 0x7F) + 1
    return _Codestream("JPEG 2000", max(0, xsiz - xo), max(0, ysiz - yo), comps, bits)


def _jpeg_sof(data: bytes) -> _Codestream | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        marker = data[i + 1] if i + 1 < len(data) else None
        if marker is None or marker == 0xDA:  # scan data before any frame header: not a frame we can size
            return None
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 10 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            kind = "JPEG-LS" if marker == 0xF7 else "JPEG"
            return _Codestream(kind, width, height, data[i + 9], data[i + 4])
        i += 2 + length
    return None


def _invert(img: np.ndarray, pi: str) -> np.ndarray:
    # MONOCHROME1 stores bone dark; flipping gives the MONOCHROME2 look (lungs dark) the model was trained on
    return 1.0 - img if pi == "MONOCHROME1" else img
