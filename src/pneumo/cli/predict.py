"""The commands that run a model over images: ``predict``, ``batch``, ``explain``. They exit 3 when some inputs
could not be read (the rest are still done)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pneumo.cli.common import (
    Engine,
    HeatMethod,
    ModelOpt,
    OutputFormat,
    ThresholdOpt,
    _default,
    checked_threshold,
    err,
    out,
)
from pneumo.errors import InputError


def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs; JPEG/PNG/DICOM")],
    model: ModelOpt = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", "--out", help="Write the results to a .csv or .json file; '-' writes them to stdout"
        ),
    ] = None,
    fmt: Annotated[
        OutputFormat | None,
        typer.Option("--format", help="csv or json" + _default("from the --output name; csv for '-'")),
    ] = None,
    threshold: ThresholdOpt = None,
    mirror: Annotated[
        bool, typer.Option("--tta", help="Test-time augmentation (average with the mirrored image)")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per ONNX Runtime call")] = 64,
    dicom_out: Annotated[
        Path | None, typer.Option("--dicom-out", help="Write a DICOM SR and SC per analysed DICOM input here")
    ] = None,
) -> None:
    """Calibrated probability of pneumonia, decision at the model's threshold, and a domain check, per file.

    Exit code 0 when every file was predicted, 3 when some could not be read (the rest are still written),
    2 on usage errors.

    Example: pneumo predict scan.jpeg folder/ 'more/*.dcm'

    Example (CSV on stdout, for a pipe): pneumo predict folder/ -o - | sort -t, -k2 -r
    """
    from pneumo.inputs import expand_inputs
    from pneumo.predict_io import (
        STDOUT,
        display_names,
        output_format,
        predict_files,
        render_table,
        summary_line,
        write_predictions,
    )

    threshold = checked_threshold(threshold)
    kind = output_format(output, None if fmt is None else fmt.value)
    files, missing = expand_inputs(inputs)
    if missing:
        raise InputError(f"{missing[0]}: no such file, folder or matching glob")
    if not files:
        raise InputError("no image files found in the given inputs")

    def progress(stream, total: int):
        if total < 64 or not err.is_terminal:
            return stream
        from rich.progress import track

        return track(stream, total=total, description="predicting", console=err, transient=True)

    to_file = output is not None and output != STDOUT
    run = predict_files(files, model=model, threshold=threshold, mirror=mirror, batch_size=batch_size,
                        dicom_out=dicom_out, output=Path(output) if to_file else None, fmt=kind,
                        progress=progress)  # fmt: skip
    results = run.results
    for note in run.notes:
        err.print(note, highlight=False, soft_wrap=True)
    # With results on stdout (a pipe), everything else goes to stderr.
    talk = err if kind is not None and not to_file else out
    if to_file:
        err.print(f"wrote {output}", highlight=False)
    elif kind is not None:
        write_predictions(results, sys.stdout, run.subtypes, kind)
        sys.stdout.flush()
    else:
        out.print(render_table(results, run.subtypes, display_names(files, inputs)))
    talk.print(summary_line(results), highlight=False)
    if any(r.in_domain is False for r in results):
        err.print("[bold yellow]warning:[/] some images are unlike the pediatric chest X-rays this model was "
                  "validated on; their predictions are unreliable.")  # fmt: skip
    if any(r.error for r in results):
        raise typer.Exit(3)


def batch(
    inputs: Annotated[list[str], typer.Argument(help="Folders, globs, files, or manifests (.csv/.parquet, 'path')")],
    output: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="Output folder of Parquet parts (OUT.parquet)")
    ],
    engine: Annotated[Engine, typer.Option(help="local (this process) or ray (Ray Data)")] = Engine.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join: auto or ray://HOST:PORT" + _default("a local runtime"))
    ] = None,
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per ONNX Runtime call")] = 64,
    part_size: Annotated[int, typer.Option(min=1, help="Rows per committed part file")] = 1024,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue OUT: skip inputs already in committed parts")
    ] = False,
    threshold: ThresholdOpt = None,
    mirror: Annotated[
        bool, typer.Option("--tta", help="Test-time augmentation (average with the mirrored image)")
    ] = False,
    actors: Annotated[
        int | None, typer.Option(min=1, help="Ray: ONNX Runtime actors" + _default("cluster CPUs / 2"))
    ] = None,
) -> None:
    """Predict an archive into a resumable Parquet dataset.

    The columns of `predict`, a manifest's extra columns, model_name and model_sha256. Exit code 3 when some
    inputs could not be read (their rows say why), 2 on usage errors.

    Example: pneumo batch archive/ manifest.csv -o results.parquet --resume
    """
    from pneumo.batch.run import run_batch

    threshold = checked_threshold(threshold)
    bar = None
    if err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[progress.data.speed]{task.fields[rate]}"),
            TimeRemainingColumn(), console=err, transient=True,
        )  # fmt: skip
    task = {}

    def on_start(n: int) -> None:
        if bar is not None:
            bar.start()
            task["id"] = bar.add_task("batch", total=n, rate="")

    def progress(k: int) -> None:
        if bar is not None:
            bar.advance(task["id"], k)
            speed = bar.tasks[0].speed
            bar.update(task["id"], rate=f"{speed:.1f} images/s" if speed else "")

    try:
        result = run_batch(inputs, output, model=model, engine=engine.value, address=address, batch_size=batch_size,
                           part_size=part_size, resume=resume, threshold=threshold, mirror=mirror, actors=actors,
                           on_start=on_start, progress=progress)  # fmt: skip
    finally:
        if bar is not None:
            bar.stop()
    out.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
    if result.errors:
        raise typer.Exit(3)


def explain(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs")],
    output: Annotated[Path, typer.Option("--output", "-o", "--out", help="Folder for the overlay PNGs")],
    model: ModelOpt = None,
    method: Annotated[
        HeatMethod,
        typer.Option(
            help="occlusion: the drop in calibrated pneumonia odds when each 16-px region is replaced by normal "
            "films (the model file's; mean grey without them), on one absolute scale; cam: the old class activation "
            "map, for comparison only (a 4 x 4 grid scaled to its own maximum; on the bundled model its hottest point "
            "fell in the lungs for none of 108 pneumonia images)",
        ),
    ] = HeatMethod.occlusion,
) -> None:
    """Heat maps over the X-ray, with probability and decision, one PNG per image.

    Example: pneumo explain scan.jpeg -o heatmaps/ --method occlusion
    """
    from pneumo.explain.explainer import explain_files
    from pneumo.inputs import expand_inputs

    files, missing = expand_inputs(images)
    if missing or not files:
        raise InputError(f"{(missing or images)[0]}: no such file, folder or matching glob")
    grad_cam = None
    if HeatMethod(method) is HeatMethod.cam:  # graphs without the map: PyTorch Grad-CAM, loaded only when used
        from pneumo.training.grad_cam import GradCam as grad_cam
    written, failures = explain_files(files, output, model=model, method=HeatMethod(method).value, grad_cam=grad_cam)
    for p in written:
        out.print(f"wrote {p}", highlight=False)
    for msg in failures:
        err.print(f"[red]error:[/] {msg}", highlight=False)
    if failures:
        raise typer.Exit(3)
