"""The loaders: open a source once, sniff its content, decode it with Pillow or pydicom, and finish at the size
asked for. Every public loader goes through :func:`_guarded`, so any failure leaves as one ImageLoadError."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
from PIL import Image

from pneumo.errors import ImageLoadError
from pneumo.imaging.dicom_pixels import _dicom_info, _dicom_pixels, _headerless_dicom, _read_dicom
from pneumo.imaging.formats import PILLOW_FORMATS, ImageInfo, is_dicom
from pneumo.imaging.limits import _BYTES, _Bad, _bomb, _check_dims, _describe, _head, _not_an_image, _open
from pneumo.imaging.pillow_pixels import _pillow_pixels, _shown_size
from pneumo.imaging.resize import DISPLAY_MAX, _display_target, _resize

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_T = TypeVar("_T")


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


def _target(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if not (isinstance(h, int | np.integer) and isinstance(w, int | np.integer) and h > 0 and w > 0):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(h), int(w)


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
