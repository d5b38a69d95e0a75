"""The commands that serve: ``serve`` (the web page and API), ``dicom-listen`` (a DICOM node), ``dicomweb``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from pneumo.cli.common import ModelOpt, PortOpt, ThresholdOpt, _default, checked_threshold, out
from pneumo.errors import InputError


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told otherwise)")] = "127.0.0.1",
    port: PortOpt = 8000,
    model: ModelOpt = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MB")] = 50.0,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(help="Also answer this Host name (a reverse proxy's, say); repeatable" + _default("served names")),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="Let pages from this origin (https://site.example) POST and read answers; repeatable"),
    ] = None,
) -> None:
    """The web page and REST API (http://HOST:PORT/, API docs at /docs).

    Example: pneumo serve --port 8000, then open http://127.0.0.1:8000/
    """
    # Before the server's extra is imported; the library's own check names no option and lets infinity through.
    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise InputError(f"--max-upload-mb must be a positive number of megabytes, got {max_upload_mb:g}")
    from pneumo.serve.app import run_server

    run_server(host=host, port=port, model=model, max_upload_mb=max_upload_mb, allow_hosts=allow_host or (),
               allow_origins=allow_origin or ())  # fmt: skip


def dicom_listen(
    ae_title: Annotated[str, typer.Option(help="This node's AE title")] = "PNEUMO",
    port: Annotated[int, typer.Option(min=1, max=65535, help="DICOM port to listen on")] = 11112,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told otherwise)")] = "127.0.0.1",
    forward: Annotated[
        str | None, typer.Option(help="C-STORE each SR and SC to this node, HOST:PORT:AET (e.g. the PACS)")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--output", "-o", "--out", help="Also write each SR and SC into this folder")
    ] = None,
    calling_aet: Annotated[
        list[str] | None, typer.Option("--calling-aet", help="Accept associations only from these AE titles")
    ] = None,
    model: ModelOpt = None,
    threshold: ThresholdOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Instances analysed at the same time")] = 2,
    queue_size: Annotated[int, typer.Option(min=1, help="Instances waiting at most; beyond, senders get A700")] = 16,
    heatmaps: Annotated[bool, typer.Option(help="Heat map in the Secondary Capture")] = True,
) -> None:
    """A DICOM node (C-STORE SCP): analyses every chest CR / DX it receives and sends back an SR and an SC.

    Example: pneumo dicom-listen --port 11112 --forward 10.0.0.5:4242:ORTHANC --calling-aet ORTHANC
    """
    from pneumo.dicom import require

    require("pynetdicom", "highdicom")
    from pneumo.dicom.node import listen

    threshold = checked_threshold(threshold)
    if forward is None and out_dir is None:  # the library's check comes after the model is loaded, naming --out
        raise InputError("nothing to do with the results: give --forward HOST:PORT:AET and/or --output DIR")
    # --forward is parsed by listen() first thing (a ConfigError, exit 2, naming the option).
    listen(model=model, ae_title=ae_title, host=host, port=port, forward=forward, out_dir=out_dir,
           calling_ae_titles=calling_aet, workers=workers, queue_size=queue_size, threshold=threshold,
           heatmaps=heatmaps)  # fmt: skip


def _check_url(url: str) -> str:
    """An http(s) URL with a host, or a usage error."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError on a port out of range or not a number)
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"--url {url}: not an http(s) URL with a host, e.g. http://127.0.0.1:8042/dicom-web")
    return url


def dicomweb(
    url: Annotated[str, typer.Option(help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")],
    study: Annotated[str, typer.Option(help="Study Instance UID")],
    model: ModelOpt = None,
    threshold: ThresholdOpt = None,
    store: Annotated[bool, typer.Option(help="STOW-RS the SRs and SCs back into the study")] = True,
    heatmaps: Annotated[bool, typer.Option(help="Heat map in the Secondary Capture")] = True,
) -> None:
    """Fetch a study's chest radiographs with WADO-RS, analyse them, STOW-RS an SR and an SC for each back.

    Exit code 3 when some CR / DX instances could not be analysed.

    Example: pneumo dicomweb --url http://pacs:8042/dicom-web --study 1.2.826.0.1.3680043.8.498.1
    """
    _check_url(url)
    from pneumo.dicom import require

    require()
    from pneumo.dicom.dicomweb import run

    threshold = checked_threshold(threshold)
    outcomes = run(url, study, model=model, threshold=threshold, heatmaps=heatmaps, store=store)
    for o in outcomes:
        if o.prediction is not None:
            p = o.prediction
            domain = "" if p.in_domain is not False else "  OUT OF DOMAIN: do not rely on it"
            line = f"{o.sop_instance_uid}  {p.prediction}  P(pneumonia) {p.probability:.3f}{domain}"
        else:
            line = f"{o.sop_instance_uid}  {'skipped: ' + o.skipped if o.skipped else 'error: ' + o.error}"
        out.print(line, markup=False, soft_wrap=True)
    done = sum(o.prediction is not None for o in outcomes)
    out.print(f"{done} analysed, {2 * done if store else 0} result instances stored", highlight=False)
    if any(o.error for o in outcomes):
        raise typer.Exit(3)
