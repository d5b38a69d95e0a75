"""Compressed DICOM pixel data: the codestream's own size (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ), read before
any decoder sees it, because a decoder allocates what the codestream says, not what the header says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pneumo.errors import ImageLoadError
from pneumo.imaging.limits import MAX_PIXELS, _Bad, _check_budget, _first_line

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

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
