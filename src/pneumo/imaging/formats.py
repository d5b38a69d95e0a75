"""Which files are images, told from their content: the suffixes a folder scan takes, the magic bytes of the
formats the loader is meant for, the Pillow plugins it lets open a file, and what a header says."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}
)


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
