"""Reading an upload into memory (never onto disk) and telling what kind of file it holds.

Starlette's multipart parser spools files over 1 MB to a temporary file on disk; X-rays are patient data, so the
parser here gets a spool limit above the upload limit and the body is counted as it streams in.
"""

from __future__ import annotations

import codecs

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pneumo.imaging import is_dicom

# Multipart boundaries, part headers and the small ``explain`` field ride on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
ACCEPTED = "upload a JPEG, PNG or DICOM chest X-ray"

# (magic, offset, format) of what the loader decodes; a failure on one of these is a damaged file (422).
_SUPPORTED_MAGIC = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WebP"),
)
# Formats Pillow could open but that are not X-ray formats: refused with their name (415).
_UNSUPPORTED_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\x00\x00\x01\x00", "icon"),
)


class _InMemoryMultiPartParser(MultiPartParser):
    """Starlette's parser with the spool limit raised above the upload limit, so files never roll over to disk."""

    def __init__(self, request: Request, stream, spool_max_size: int):
        # One file and a few small fields are all the API takes; anything more is refused while parsing.
        super().__init__(request.headers, stream, max_files=1, max_fields=8, max_part_size=4096)
        self.spool_max_size = spool_max_size


def _missing_file() -> HTTPException:
    return HTTPException(422, "no file in the upload: send the image as multipart/form-data in the field 'file'")


def too_large(max_bytes: int) -> HTTPException:
    """The 413 for an upload over the limit."""
    return HTTPException(413, f"the upload is larger than the limit of {max_bytes / 2**20:g} MB")


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """The bytes and client-side name of the multipart field ``file``, and the form's text fields.

    Raises HTTPException: 413 over ``max_bytes`` (from Content-Length before reading, and by counting while
    reading, since the header can lie or be absent), 415 for a body that is neither multipart nor a form, 400 for
    a malformed multipart body and 422 when the ``file`` field is missing.
    """
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        if content_type.startswith("application/x-www-form-urlencoded") or not content_type:
            raise _missing_file()  # a form (or nothing) without the file: the same answer as a multipart one
        raise HTTPException(415, f"send the image as multipart/form-data in the field 'file'; {ACCEPTED}")
    body_limit = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise too_large(max_bytes)

    async def counted():
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise too_large(max_bytes)
            yield chunk

    parser = _InMemoryMultiPartParser(request, counted(), spool_max_size=body_limit + 1)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart upload: {exc.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _missing_file()
        data = await upload.read()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data, upload.filename or "upload", fields


def sniff_format(data: bytes) -> str | None:
    """The image format the content claims to be, when it is one the loader decodes; ``None`` otherwise."""
    if is_dicom(data):
        return "DICOM"
    for magic, offset, name in _SUPPORTED_MAGIC:
        if data[offset : offset + len(magic)] == magic and (name != "WebP" or data[:4] == b"RIFF"):
            return name
    # BMP's magic is only two letters; the reserved header bytes that must be zero keep text starting "BM" out.
    if data[:2] == b"BM" and data[6:10] == b"\0\0\0\0" and len(data) > 26:
        return "BMP"
    return None


def maybe_headerless_dicom(data: bytes) -> bool:
    """DICOM written without the 128-byte preamble starts with a group 0002 or 0008 tag."""
    return data[:2] in (b"\x02\x00", b"\x08\x00")


def unsupported_reason(data: bytes) -> str:
    """Why content that is not a supported image was refused, in words a person can act on."""
    if not data:
        return f"the file is empty (0 bytes); {ACCEPTED}"
    for magic, name in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            return f"{name} files are not supported; {ACCEPTED}"
    head = data[:512]
    try:  # the incremental decoder tolerates a character cut at the end of the sniffed bytes
        if b"\0" not in head and codecs.getincrementaldecoder("utf-8")().decode(head):
            return f"the file holds text, not an image; {ACCEPTED}"
    except UnicodeDecodeError:
        pass
    return f"not a recognised image format; {ACCEPTED}"
