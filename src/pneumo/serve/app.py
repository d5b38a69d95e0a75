"""The FastAPI app behind ``pneumo serve``: the page at ``/``, the REST API under ``/api/v1``, ``/healthz``.

Bad input is answered with a JSON ``detail`` a person can read and the right status code, never a 500; anything
unexpected becomes a generic 500 whose traceback goes to the log without the exception's message (which can carry
a client's file name).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pneumo._version import __version__
from pneumo.errors import ConfigError, InputError
from pneumo.explain.analyser import log_exception
from pneumo.inference import Prediction, Predictor
from pneumo.labels import Decision
from pneumo.modelfile import ModelMeta, public_meta_json
from pneumo.serve.upload import (
    KEEP_ALIVE_TIMEOUT,
    SameOriginWrites,
    ServedHostsOnly,
    read_upload,
    served_hosts,
    slow_client_protocol,
)
from pneumo.serve.upload_result import Analyser, Analysis, UnreadableImage, UnsupportedImage

log = logging.getLogger("pneumo.serve")

STATIC = Path(__file__).parent / "static"
DISCLAIMER = (
    "Decision support only. This result assists and does not replace a clinician's judgement; it was validated "
    "on pediatric chest X-rays only and must be read together with the clinical picture."
)
# The page loads nothing from other hosts; images arrive as data: URLs. /docs is exempt (Swagger UI from a CDN).
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_TRUE = {"1", "true", "yes", "on"}


class PredictResponse(Prediction):
    """One X-ray's result: the row ``pneumo predict`` writes (but ``error``), then what the page shows. Probabilities
    are calibrated; ``prediction`` is ``probability >= threshold``."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # every key is always sent
    path: str = Field(serialization_alias="filename", description="the name the client gave the file")
    probability: float = Field(description="calibrated probability of pneumonia, 0..1")
    prediction: Decision = Field(
        description="REFER only with a site REFER band (pneumo adapt --refer): the site data says the tool is "
        "unreliable between refer_low and refer_high; a clinician reads the study"
    )
    error: None = Field(default=None, exclude=True)  # an unreadable upload is an HTTP error instead
    image: str = Field(description="the X-ray as decoded by the model's loader, base64 PNG (at most 512 px)")
    heatmap: str | None = Field(
        description="the heat map (occlusion sensitivity on one absolute scale) as a base64 RGBA PNG the size of "
        "`image`, to lay over it; null unless explain"
    )
    explain_error: str | None = Field(description="why `heatmap` is null although explain was asked for")
    heatmap_note: str | None = Field(
        default=None,
        description="why the heat map draws nothing: no single region moves the log-odds enough (a confident image, "
        "evidence spread); null when it draws",
    )
    heatmap_field: str | None = Field(
        default=None,
        description="for a model that sees only its lung field: what the dashed magenta line on the heat map is (the "
        "field's edge; outside it the model sees little or nothing, so the map is pale there); null otherwise",
    )
    model_name: str
    model_version: str
    site_calibration: str | None = Field(
        default=None, description="the site calibration in force (pneumo adapt): site name and date; null: as shipped"
    )
    disclaimer: str


class ErrorResponse(BaseModel):
    detail: str


class CalibrationSample(BaseModel):
    """The X-rays the probabilities were calibrated on. A calibrated probability holds for a population with that
    sample's share of pneumonia, not as a post-test probability for any patient: the page says so beside it."""

    on: str = Field(description="which sample: the model file's validation record, or the site sample in force")
    n: int | None = Field(description="X-rays in it; null when the model file does not record it")
    n_pneumonia: int | None = Field(description="of them with pneumonia; null when not recorded")
    prevalence: float | None = Field(description="n_pneumonia / n; null when not recorded (nothing is guessed)")


class ModelCard(ModelMeta):
    """The model file's metadata plus what this server adds."""

    max_upload_mb: float = Field(description="largest upload this server accepts")
    calibration: CalibrationSample


def calibration_sample(meta: ModelMeta) -> CalibrationSample:
    """The sample behind the probabilities in force: the site sample when a site calibration is in force (pneumo
    adapt refits there), else the validation record's (``n``, ``n_pos``); counts that are not recorded stay null."""
    if meta.site is not None:
        s = meta.site.sample
        return CalibrationSample(
            on=f"this site's sample ({meta.site.name})",
            n=s.n,
            n_pneumonia=s.n_pneumonia,
            prevalence=s.n_pneumonia / s.n,
        )
    on, n, pos = meta.validation.where, meta.validation.n, meta.validation.n_pos
    if not (type(n) is int and type(pos) is int and 0 < pos < n):  # a calibration sample holds both classes
        return CalibrationSample(on=on, n=None, n_pneumonia=None, prevalence=None)
    return CalibrationSample(on=on, n=n, n_pneumonia=pos, prevalence=pos / n)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM"},
                        "explain": {"type": "boolean", "default": False, "description": "also return a heat map"},
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed multipart body"},
    413: {"model": ErrorResponse, "description": "upload larger than the server's limit"},
    415: {"model": ErrorResponse, "description": "not an image, or a format the service does not read"},
    422: {"model": ErrorResponse, "description": "no `file` field, or an image that cannot be decoded"},
}


class _SecurityHeaders:
    """nosniff everywhere, a strict CSP on everything but the Swagger pages, no caching of API answers."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if not path.startswith(("/docs", "/redoc")):
                    headers.setdefault("Content-Security-Policy", CSP)
                if path.startswith("/api/"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _CatchAll:
    """Turns any unhandled exception into a generic JSON 500; logs frames and type, never the message."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            # Not re-raised: uvicorn would log the message, and messages can name a client's file.
            log_exception(log, f"unhandled error on {scope['method']} {scope['path']}", exc)
            if not started:
                body = {"detail": "internal server error; the result could not be computed (see the server log)"}
                await JSONResponse(body, status_code=500)(scope, receive, send)


def decode_slots() -> int:
    """How many uploads are decoded and predicted at once: one per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 with ``detail`` as one readable line (the structured list stays under ``errors``)."""
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request", "errors": errors}, status_code=422)


def _b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode("ascii")


def _response(result: Analysis, filename: str, predictor: Predictor) -> PredictResponse:
    p, meta = result.prediction, predictor.meta
    return PredictResponse(
        **dict(p, path=filename),
        image=_b64(result.image_png),
        heatmap=_b64(result.heatmap_png),
        explain_error=result.explain_error,
        heatmap_note=result.heatmap_note,
        heatmap_field=result.heatmap_field,
        model_name=meta.name,
        model_version=meta.version,
        site_calibration=None if meta.site is None else f"{meta.site.name} ({meta.site.created})",
        disclaimer=DISCLAIMER,
    )


def create_app(
    model: str | Path | None = None,
    max_upload_mb: float = 50.0,
    *,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] = (),
) -> FastAPI:
    """The app with its model loaded (a bad model path raises ModelFileError here, before any server starts).

    ``allowed_hosts``: the Host names to answer (``None``: any; :func:`run_server` passes the served names).
    ``allowed_origins``: other sites' origins whose pages may POST here and read the answers (CORS)."""
    if not max_upload_mb > 0:
        raise ConfigError(f"max_upload_mb must be positive, got {max_upload_mb}")
    max_bytes = int(max_upload_mb * 2**20)
    predictor = Predictor.load(model)
    analyser = Analyser(predictor)
    meta = predictor.meta

    app = FastAPI(
        title="Pneumo",
        version=__version__,
        summary="Second-opinion pneumonia detection on pediatric chest X-rays. Assists, never replaces, a clinician.",
    )
    app.state.predictor = predictor
    app.state.analyser = analyser
    app.state.max_bytes = max_bytes
    decode_limiter = anyio.CapacityLimiter(decode_slots())
    app.add_middleware(_CatchAll)
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["GET", "POST"])
    app.add_middleware(SameOriginWrites, allowed=allowed_origins)
    if allowed_hosts is not None:  # a DNS-rebinding page reaches us under its own host name: refused here
        app.add_middleware(ServedHostsOnly, allowed=list(allowed_hosts))
    app.add_middleware(_SecurityHeaders)  # added last = outermost, so the catch-all's 500 gets the headers too
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post(
        "/api/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_UPLOAD_BODY,
        summary="Probability of pneumonia for one chest X-ray",
    )
    async def predict(
        request: Request,
        explain: Annotated[
            bool, Query(description="also return the heat map (occlusion; about 0.4 s more on 2 cores)")
        ] = False,
    ) -> PredictResponse:
        """Upload one image as the multipart field ``file``; ``explain`` may also be a form field."""
        data, filename, fields = await read_upload(request, max_bytes)
        explain = explain or fields.get("explain", "").strip().lower() in _TRUE
        try:
            # Off the event loop: /healthz and other requests keep being answered during a prediction. At most one
            # decode per core at a time: N hostile uploads wait their turn instead of multiplying the peak memory.
            result = await anyio.to_thread.run_sync(analyser.analyse, data, filename, explain, limiter=decode_limiter)
        except UnsupportedImage as exc:
            raise HTTPException(415, str(exc)) from None
        except UnreadableImage as exc:
            raise HTTPException(422, str(exc)) from None
        return _response(result, filename, predictor)

    card = ModelCard(**public_meta_json(meta), max_upload_mb=max_upload_mb, calibration=calibration_sample(meta))

    @app.get("/api/v1/model", response_model=ModelCard, summary="The model card: metadata, threshold, metrics")
    def model_card() -> ModelCard:
        """Everything the model file says about itself (``pneumo.modelfile.ModelMeta``) plus the upload limit."""
        return card

    @app.get("/healthz", response_model=Health, summary="Liveness")
    def healthz() -> Health:
        return Health()

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    log.info("model %s %s loaded (%s, threshold %.3f)", meta.name, meta.version, meta.arch, predictor.threshold)
    return app


def _return_large_buffers_to_os(mmap_threshold: int = 8 * 2**20, trim_threshold: int = 16 * 2**20) -> None:
    """Serve large buffers (decoded images) from their own mmap, so freeing one gives the memory back at once.

    glibc otherwise raises its mmap threshold after the first large free and keeps later images in per-thread
    heaps, and an idle server stays near its peak (measured: 757 MB idle after the hostile-upload benchmark,
    165 MB with this). Fixing the mmap threshold also fixes the trim threshold, at 128 kB, which makes every
    decode fault its scratch memory in again (twice as slow); 16 MB keeps that memory. Not glibc: nothing to do."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD; setting it turns off the dynamic adjustment
        libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line and before anything says "serving on", a host and port that cannot be bound (another
    server there, or an address this machine does not have); uvicorn binds the same address right after."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT socket is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            raise InputError(
                f"cannot serve on {shown}:{port}: {exc.strerror or exc} (is another server there? choose --port)"
            ) from exc


def run_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | Path | None = None,
    max_upload_mb: float = 50.0,
    *,
    allow_hosts: Sequence[str] = (),
    allow_origins: Sequence[str] = (),
) -> None:
    """Load the model, then serve the page and API with uvicorn until interrupted.

    Only the host names the server is reached by are answered (see ``served_hosts``; ``allow_hosts`` adds more,
    e.g. a reverse proxy's name); a request must arrive within the limits of ``slow_client_protocol``."""
    import uvicorn

    check_port_free(host, port)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    _return_large_buffers_to_os()
    hosts = served_hosts(host, allow_hosts)
    app = create_app(model, max_upload_mb, allowed_hosts=hosts, allowed_origins=allow_origins)
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL goes in brackets
    log.info("serving on http://%s:%d/ (API docs at /docs); answering host names %s", shown, port, ", ".join(hosts))
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        http=slow_client_protocol(),
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
    )
