"""DICOM datasets to gray float32 in [0, 1]: modality LUT, VOI LUT or window, MONOCHROME1 inversion, and the
checks made before the pixels are decoded. pydicom is imported only when a DICOM arrives."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from pneumo.imaging.codestream import _check_codestream
from pneumo.imaging.formats import ImageInfo, maybe_headerless_dicom
from pneumo.imaging.limits import _Bad, _check_budget, _check_dims, _first_line
from pneumo.imaging.resize import _minmax

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


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


def _invert(img: np.ndarray, pi: str) -> np.ndarray:
    # MONOCHROME1 stores bone dark; flipping gives the MONOCHROME2 look (lungs dark) the model was trained on
    return 1.0 - img if pi == "MONOCHROME1" else img
