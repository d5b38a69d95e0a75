"""Which requests the server takes, how long they may take to arrive, and reading an upload into memory.

- Host and Origin: only the host names the server is reached by (a DNS-rebinding page uses another) and, for
  anything but GET, only the page's own origin and the ones ``--allow-origin`` names.
- Time: a connection must deliver its request (headers and body) within ``REQUEST_TIMEOUT`` seconds and may not
  fall silent for ``IDLE_TIMEOUT`` while it does; uvicorn itself only times out idle keep-alive connections.
- Memory: Starlette's multipart parser spools files over 1 MB to a temporary file on disk; X-rays are patient data,
  so the parser here gets a spool limit above the upload limit and the body is counted as it streams in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pneumo.hosts import is_loopback
from pneumo.imaging import is_text

log = logging.getLogger("pneumo.serve")

# A 50 MB upload at 0.5 MB/s takes 100 s; a client that needs longer, or that sends nothing for 15 s while its
# request is incomplete, is holding a connection open rather than uploading.
REQUEST_TIMEOUT = 120.0
IDLE_TIMEOUT = 15.0
KEEP_ALIVE_TIMEOUT = 5.0  # uvicorn's: an idle connection between two requests
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_WILDCARD_BINDS = ("0.0.0.0", "::", "")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# Multipart boundaries, part headers and the small ``explain`` field ride on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
ACCEPTED = "upload a JPEG, PNG or DICOM chest X-ray"

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
    except ClientDisconnect:  # the client left (or was dropped for being too slow): nobody reads the answer
        log.info("client disconnected before its upload was complete")
        raise HTTPException(400, "the upload was interrupted") from None
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


def unsupported_reason(data: bytes) -> str:
    """Why content that is not a supported image was refused, in words a person can act on."""
    if not data:
        return f"the file is empty (0 bytes); {ACCEPTED}"
    for magic, name in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            return f"{name} files are not supported; {ACCEPTED}"
    if is_text(data[:512]):
        return f"the file holds text, not an image; {ACCEPTED}"
    return f"not a recognised image format; {ACCEPTED}"


# --- who may send requests, and how long they may take ---


def served_hosts(bind: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host names a server bound to ``bind`` answers to: the bind address, the loopback names when it is a
    loopback address, the machine's names and addresses when it is every interface, and ``extra``."""
    hosts = {bind, *extra}
    wildcard = bind in _WILDCARD_BINDS
    if wildcard or is_loopback(bind):
        hosts.update(LOOPBACK_HOSTS)
    if wildcard:
        name = socket.gethostname()
        hosts.update({name, socket.getfqdn()})
        with contextlib.suppress(OSError):  # a host name that does not resolve: its addresses are not added
            hosts.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
    return sorted(h for h in hosts if h and h not in _WILDCARD_BINDS)


def host_name(header: str | None) -> str | None:
    """The host name of a ``Host`` header, lower case, without port or IPv6 brackets: ``[::1]:8000`` -> ``::1``,
    ``Example.org:80`` -> ``example.org``; None for a missing or malformed header (``[::1``, ``a b``, ``::1``)."""
    if not header or any(c.isspace() or c in "/?#@\\" for c in header):
        return None
    try:
        parts = urlsplit(f"//{header}")
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:  # an unclosed bracket or a bad port
        return None
    name = parts.hostname
    if not name or (header.startswith("[") and not _is_ip(name)) or (":" in name and not header.startswith("[")):
        return None  # "[evil.example]", or an IPv6 address without its brackets
    return name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ServedHostsOnly:
    """Answers only requests whose ``Host`` names one of ``allowed`` (400 otherwise): a DNS-rebinding page reaches
    the server under its own host name. Starlette's TrustedHostMiddleware compares the bracketed IPv6 literal (or,
    in older releases, what comes before the first ':') with the bare address ``served_hosts`` gives, so a server
    bound to ``::1`` refused every request. Names compare without port, brackets or case; ``*`` allows any host and
    ``*.example.org`` its subdomains, as Starlette's does."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]):
        self.app = app
        bare = {h.strip().strip("[]").lower() for h in allowed}
        self.any = "*" in bare
        self.names = {h for h in bare if not h.startswith("*")}
        self.suffixes = tuple(h[1:] for h in bare if h.startswith("*.") and len(h) > 2)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        name = host_name(Headers(scope=scope).get("host"))
        if name is None or not (name in self.names or name.endswith(self.suffixes)):
            log.info("refused a request for a host name this server does not serve")
            detail = "unknown host name; start the server with --allow-host NAME to answer to it"
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SameOriginWrites:
    """Refuses (403) a request that is not GET/HEAD/OPTIONS and carries an ``Origin`` other than the server's own
    or one of ``allowed``: a page on another site must not make this server do work and read the answer."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str] = ()):
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
            if origin is not None and origin.rstrip("/").lower() not in {own, *self.allowed}:
                log.info("refused a cross-origin %s request", scope["method"])
                detail = "cross-origin request refused; start the server with --allow-origin ORIGIN to allow it"
                await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def slow_client_protocol(request_timeout: float = REQUEST_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT) -> type:
    """uvicorn's h11 protocol, closing a connection whose request is not complete ``request_timeout`` seconds
    after its first byte (or after the connection opened) or that sends nothing for ``idle_timeout`` meanwhile.

    Time the server spends answering does not count: only the client's sending of a request is timed."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    check_every = min(1.0, idle_timeout / 2)

    class SlowClientH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._since = self._last = self.loop.time()  # a new connection owes us a request
            self._watchdog = self.loop.call_later(check_every, self._check)

        def data_received(self, data: bytes) -> None:
            now = self.loop.time()
            if self._since is None:
                self._since = now
            self._last = now
            super().data_received(data)
            if not self._receiving():
                self._since = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._watchdog.cancel()
            super().connection_lost(exc)

        def _receiving(self) -> bool:
            """A request is partly here: its headers are being read or its body is arriving."""
            state = self.conn.their_state
            return state is h11.SEND_BODY or (state is h11.IDLE and bool(self.conn.trailing_data[0]))

        def _check(self) -> None:
            if self.transport.is_closing():
                return
            now = self.loop.time()
            late = self._since is not None and (now - self._since > request_timeout or now - self._last > idle_timeout)
            if late and not self.flow.read_paused:
                log.info(
                    "dropped a connection that did not deliver its request in time (limits: %.0f s in all, "
                    "%.0f s without data)",
                    request_timeout,
                    idle_timeout,
                )
                self.transport.close()
                return
            self._watchdog = self.loop.call_later(check_every, self._check)

    return SlowClientH11Protocol
