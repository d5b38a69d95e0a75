"""The ``pneumo`` command line: parse, call one library function, print. Heavy imports stay inside commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Pneumonia detection in pediatric chest X-rays: inspect data, train, evaluate, predict, explain, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect a dataset folder and split it by patient.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)
_state = {"debug": False}

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="Model file (.pneumo or exported .onnx) or run directory [default: bundled]"),
]


class UsageError(Exception):
    """Bad arguments that typer itself cannot catch (exit code 2)."""


def _fail(exc: BaseException) -> None:
    """One line a person can act on, then a non-zero exit; the traceback only with --debug."""
    if _state["debug"]:
        raise exc
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        msg = f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
    else:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    from rich.markup import escape

    from pneumo.errors import visible

    err.print(f"[bold red]error:[/] {escape(visible(msg))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2 if isinstance(exc, UsageError) else 1)


def _run(fn, *args, **kwargs):
    """``fn(...)``, with the library's errors (and OS errors, and invalid options) as one line and exit code 1.

    Anything else (a RuntimeError or ValueError from our own code) is a bug and keeps its traceback."""
    from pydantic import ValidationError

    from pneumo.errors import PneumoError

    try:
        return fn(*args, **kwargs)
    except (UsageError, PneumoError, OSError, ValidationError) as exc:
        _fail(exc)


def _threshold(threshold: float | None) -> float | None:
    """A ``--threshold`` option checked by the decision core (:func:`pneumo.decision.check_threshold`); out of
    range or NaN it is a usage error (exit 2)."""
    if threshold is None:
        return None
    from pneumo.decision import check_threshold
    from pneumo.errors import ConfigError

    try:
        return check_threshold(threshold, "--threshold")
    except ConfigError as exc:
        _fail(UsageError(str(exc)))


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@data_app.command("inspect")
def data_inspect(
    directory: Annotated[Path, typer.Argument(help="Dataset root (CLASS/ folders, optionally under train/val/test)")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    plots: Annotated[Path | None, typer.Option(help="Write histogram PNGs into this folder.")] = None,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="Skip reading image headers.")] = False,
    verify: Annotated[
        bool | None,
        typer.Option(help="Decode every image to find damaged ones [default: on below 20,000 images]"),
    ] = None,
) -> None:
    """Count images per split, class, subtype and patient; image sizes and modes; unreadable files."""
    from contextlib import nullcontext

    from pneumo.inspect_report import inspect_dataset, write_inspect_plots

    if not directory.is_dir():
        _fail(UsageError(f"{directory}: not a folder"))
    bar = nullcontext(None)
    if err.is_terminal and verify is not False and not no_probe:
        from rich.progress import Progress

        bar = Progress(console=err, transient=True)
    with bar as progress:
        advance = None
        if progress is not None:
            task = progress.add_task("decoding", total=None)
            advance = lambda n, total: progress.update(task, advance=n, total=total)  # noqa: E731
        report = _run(inspect_dataset, directory, probe=not no_probe, workers=2, verify=verify, progress=advance)
    if json_out:
        print(report.model_dump_json(indent=2))
    else:
        out.print(report.to_text(), highlight=False, markup=False)
    if plots:
        for p in _run(write_inspect_plots, report, plots):
            err.print(f"wrote {p}")


@data_app.command("split")
def data_split(
    directory: Annotated[Path, typer.Argument(help="Dataset root")],
    out_csv: Annotated[Path, typer.Option("--out", help="CSV to write (path,split,label,patient_id,subtype)")],
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for validation")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
) -> None:
    """Patient-grouped, class- and subtype-stratified train/val split, reproducible for a seed."""
    from collections import Counter

    from pneumo.data import make_split

    rows = _run(make_split, directory, out_csv, val_fraction=val_fraction, seed=seed)
    counts = Counter((r.split, r.label) for r in rows)
    patients = {s: len({r.patient_id for r in rows if r.split == s}) for s in ("train", "val")}
    for s in ("train", "val"):
        per_class = ", ".join(f"{lbl} {n}" for (sp, lbl), n in sorted(counts.items()) if sp == s)
        out.print(f"{s}: {per_class} ({patients[s]} patients)", highlight=False)
    out.print(f"wrote {out_csv}", highlight=False)


_RULE_HELP = (
    "worst_case: the largest margin to both targets in the worst framing condition; pooled: the target sensitivity "
    "on validation pooled with its checked copies [default: worst_case]"
)
_TARGET_SPEC_HELP = "The worst_case rule's specificity target [default: 0.90]"


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Dataset root (the train split is used; val is carved by patient)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory")],
    arch: Annotated[
        str | None, typer.Option(help="Architecture (see `pneumo models`) [default: efficientnet_lite0]")
    ] = None,
    task: Annotated[str | None, typer.Option(help="binary or subtype [default: binary]")] = None,
    subtype_head: Annotated[
        bool | None, typer.Option(help="With --task binary: add a normal/bacterial/viral head [default: off]")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels")] = None,
    normalization: Annotated[str | None, typer.Option(help="equalize (histogram) or none [default: equalize]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate")] = None,
    balance: Annotated[str | None, typer.Option(help="weights, oversample or none")] = None,
    transfer: Annotated[str | None, typer.Option(help="full, top or linear")] = None,
    pretrained: Annotated[bool | None, typer.Option(help="Start from shipped ImageNet weights")] = None,
    augment: Annotated[bool, typer.Option(help="Random augmentation")] = True,
    split: Annotated[Path | None, typer.Option(help="Split CSV from `pneumo data split`")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share when no --split")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    target_sensitivity: Annotated[float | None, typer.Option(help="Operating-point sensitivity")] = None,
    target_specificity: Annotated[float | None, typer.Option(help=_TARGET_SPEC_HELP)] = None,
    threshold_rule: Annotated[str | None, typer.Option(help=_RULE_HELP)] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs")] = None,
    max_train_images: Annotated[int | None, typer.Option(help="Subsample the training images")] = None,
    devices: Annotated[int | None, typer.Option(help="Processes per node (data parallel) [default: 1]")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes [default: 1]")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp [default: auto]")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads per process")] = None,
    config: Annotated[Path | None, typer.Option(help="A config.yaml to start from (flags override it)")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the run's last checkpoint")] = False,
) -> None:
    """Train a model and write a self-describing model.pneumo into the run directory."""
    from pneumo.config import TrainConfig

    # Every option named like a config field sets it; the two whose names differ are mapped by hand.
    given = {k: v for k, v in locals().items() if k in TrainConfig.model_fields and k != "augment"}
    overrides = {**given, "out": out_dir, "split_csv": split}
    if not augment:
        overrides["augment"] = {"enabled": False}
    if resume and (out_dir / "config.yaml").is_file() and not config:
        config = out_dir / "config.yaml"
    cfg = _run(TrainConfig.resolve, config, overrides)
    from pneumo.training.models import ARCHS

    if cfg.arch not in ARCHS:
        _fail(UsageError(f"--arch {cfg.arch}: unknown architecture; `pneumo models` lists them"))
    from pneumo.training.train import fit

    path = _run(fit, cfg, resume=resume)
    if path is not None:  # None on the non-zero ranks of a distributed run
        out.print(f"wrote {path}", highlight=False)


@app.command()
def finalize(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with checkpoints/")],
    target_sensitivity: Annotated[float | None, typer.Option(help="Operating-point sensitivity")] = None,
    target_specificity: Annotated[float | None, typer.Option(help=_TARGET_SPEC_HELP)] = None,
    threshold_rule: Annotated[str | None, typer.Option(help=_RULE_HELP)] = None,
) -> None:
    """Recalibrate, choose the threshold, refit the domain guard and re-export a run without retraining."""
    from pneumo.training.train import refinalize

    path = _run(refinalize, run_dir, target_sensitivity, target_specificity=target_specificity,
                threshold_rule=threshold_rule)  # fmt: skip
    out.print(f"wrote {path}", highlight=False)


@app.command()
def models() -> None:
    """List the architectures `pneumo train --arch` accepts."""
    from pneumo.training.models import ARCHS

    for name, spec in sorted(ARCHS.items()):
        weights = "ImageNet weights shipped" if spec.pretrained_available else "from scratch"
        out.print(f"{name:20s} {spec.description} ({weights})", highlight=False)


@app.command()
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Folder of NORMAL/ and PNEUMONIA/ (or a root with a split level)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.txt, metrics.json and plots")],
    model: ModelOpt = None,
    split: Annotated[str | None, typer.Option(help="Which split of a root with train/val/test (default: test)")] = None,
    split_csv: Annotated[Path | None, typer.Option(help="Evaluate the 'val' rows of a `pneumo data split` CSV")] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the model's threshold")] = None,
    tta: Annotated[bool, typer.Option(help="Average with the mirrored image")] = False,
) -> None:
    """Report, metrics with bootstrap 95 % intervals, confusion matrix, ROC, PR, reliability and a gallery."""
    from pneumo.evaluation_run import evaluate_folder

    threshold = _threshold(threshold)
    result = _run(
        evaluate_folder, data_dir, out_dir, model=model, split=split, split_csv=split_csv, threshold=threshold, tta=tta
    )
    out.print(result["report"], highlight=False)
    out.print(f"wrote {out_dir}", highlight=False)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories or model files")],
    out_md: Annotated[Path | None, typer.Option("--out", help="Markdown table to write")] = None,
    out_csv: Annotated[Path | None, typer.Option("--csv", help="CSV to write")] = None,
) -> None:
    """One comparison table of trained models (accuracy, sensitivity, specificity, AUC, F1, size, speed)."""
    from pneumo.compare import compare_runs, format_markdown, write_csv

    rows = _run(compare_runs, runs)
    table = format_markdown(rows)
    print(table)
    if out_md:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        from pneumo.atomic import write_text

        write_text(out_md, table + "\n")
    if out_csv:
        write_csv(rows, out_csv)


@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs; JPEG/PNG/DICOM")],
    model: ModelOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write results to a .csv or .json")] = None,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold [default: the model's]")] = None,
    tta: Annotated[bool, typer.Option(help="Test-time augmentation (average with the mirrored image)")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call")] = 64,
    dicom_out: Annotated[
        Path | None, typer.Option("--dicom-out", help="Write a DICOM SR and SC per analysed DICOM input here")
    ] = None,
) -> None:
    """Calibrated probability of pneumonia, decision at the model's threshold, and a domain check, per file.

    Exit code 0 when every file was predicted, 3 when some could not be read (the rest are still written),
    2 on usage errors.
    """
    from pneumo.predict_io import display_names, expand_inputs, predict_files, render_table, summary_line

    threshold = _threshold(threshold)
    files, missing = expand_inputs(inputs)
    if missing:
        _fail(UsageError(f"{missing[0]}: no such file, folder or matching glob"))
    if not files:
        _fail(UsageError("no image files found in the given inputs"))

    def progress(stream, total: int):
        if total < 64 or not err.is_terminal:
            return stream
        from rich.progress import track

        return track(stream, total=total, description="predicting", console=err, transient=True)

    run = _run(predict_files, files, model=model, threshold=threshold, tta=tta, batch_size=batch_size,
               dicom_out=dicom_out, output=output, progress=progress)  # fmt: skip
    results = run.results
    for note in run.notes:
        err.print(note, highlight=False, soft_wrap=True)
    if output:
        err.print(f"wrote {output}", highlight=False)
    else:
        out.print(render_table(results, run.subtypes, display_names(files, inputs)))
    out.print(summary_line(results), highlight=False)
    if any(r.in_domain is False for r in results):
        err.print("[bold yellow]warning:[/] some images are unlike the pediatric chest X-rays this model was "
                  "validated on; their predictions are unreliable.")  # fmt: skip
    if any(r.error for r in results):
        raise typer.Exit(3)


@app.command()
def batch(
    inputs: Annotated[list[str], typer.Argument(help="Folders, globs, files, or manifests (.csv/.parquet, 'path')")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder of Parquet parts (OUT.parquet)")],
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data)")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join: auto or ray://HOST:PORT [default: a local runtime]")
    ] = None,
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per ONNX Runtime call")] = 64,
    part_size: Annotated[int, typer.Option(help="Rows per committed part file")] = 1024,
    resume: Annotated[bool, typer.Option(help="Continue OUT: skip inputs already in committed parts")] = False,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold [default: the model's]")] = None,
    tta: Annotated[bool, typer.Option(help="Test-time augmentation (average with the mirrored image)")] = False,
    actors: Annotated[int | None, typer.Option(help="Ray: ONNX Runtime actors [default: cluster CPUs / 2]")] = None,
) -> None:
    """Predict an archive into a resumable Parquet dataset: the columns of `predict`, a manifest's extra columns,
    model_name and model_sha256. Exit code 3 when some inputs could not be read (their rows say why)."""
    from pneumo.batch import ENGINES, run_batch

    if engine not in ENGINES:
        _fail(UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}"))
    threshold = _threshold(threshold)
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
        result = _run(run_batch, inputs, output, model=model, engine=engine, address=address, batch_size=batch_size,
                      part_size=part_size, resume=resume, threshold=threshold, tta=tta, actors=actors,
                      on_start=on_start, progress=progress)  # fmt: skip
    finally:
        if bar is not None:
            bar.stop()
    out.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
    if result.errors:
        raise typer.Exit(3)


@app.command()
def explain(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the overlay PNGs")],
    model: ModelOpt = None,
) -> None:
    """Grad-CAM heat maps over the X-ray, with probability and decision, one PNG per image."""
    from pneumo.explain import explain_files
    from pneumo.predict_io import expand_inputs

    files, missing = expand_inputs(images)
    if missing or not files:
        _fail(UsageError(f"{(missing or images)[0]}: no such file, folder or matching glob"))
    written, failures = _run(explain_files, files, output, model=model)
    for p in written:
        out.print(f"wrote {p}", highlight=False)
    for msg in failures:
        err.print(f"[red]error:[/] {msg}", highlight=False)
    if failures:
        raise typer.Exit(3)


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="model.onnx (graph + metadata) or model.pneumo")],
    model: ModelOpt = None,
    int8: Annotated[bool, typer.Option("--int8", help="A quantised INT8 graph (needs --calibration-data)")] = False,
    calibration_data: Annotated[
        Path | None, typer.Option(help="--int8: images to calibrate on (validation images left out if told apart)")
    ] = None,
    validation_data: Annotated[
        Path | None, typer.Option(help="--int8: labelled validation images for parity [default: --calibration-data]")
    ] = None,
    split_csv: Annotated[Path | None, typer.Option(help="--int8: its 'val' rows are the validation images")] = None,
    calibration_images: Annotated[int, typer.Option(help="--int8: at most this many calibration images")] = 256,
) -> None:
    """Export to ONNX; fails unless ONNX Runtime reproduces PyTorch to 1e-3. With --int8: a QDQ INT8 graph,
    written only if on the validation images the AUC drops by <= 0.002, decisions agree on >= 99 % and the
    domain guard's flag rate moves by <= 1 point."""
    if int8:
        from pneumo.quantize import quantize_model

        if calibration_data is None:
            _fail(UsageError("--int8 needs --calibration-data DIR"))
        path, parity = _run(quantize_model, model, output, calibration_data, validation_data=validation_data,
                            split_csv=split_csv, calibration_images=calibration_images)  # fmt: skip
        if note := parity.calibration_note():
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
        out.print(f"wrote {path} (INT8: {parity.summary()})", highlight=False, soft_wrap=True)
        return
    from pneumo.training.export import export_model

    path = _run(export_model, model, output)
    out.print(f"wrote {path} (ONNX Runtime matches PyTorch within 1e-3)", highlight=False)


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories or .pneumo files of one recipe")],
    data_dir: Annotated[Path, typer.Option("--data", help="Dataset root the members' split refers to")],
    split_csv: Annotated[Path, typer.Option("--split", help="The `pneumo data split` CSV all members trained on")],
    output: Annotated[Path, typer.Option("--out", "-o", help="The ensemble's model file (.pneumo)")],
    name: Annotated[str | None, typer.Option(help="Model name [default: the first member's, -ensembleN]")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Decoded-image cache [default: as the members']")] = None,
) -> None:
    """One ONNX graph averaging the members' logits (the first member's domain guard), recalibrated and
    thresholded again on the members' common validation split pooled with its geometry-shifted copies."""
    from pneumo.training.ensemble import build_ensemble

    path = _run(build_ensemble, runs, output, data_dir, split_csv, name=name, cache_dir=cache_dir)
    from pneumo.modelfile import read_meta

    v = read_meta(path).validation
    worst = v.get("geometry_shift", {}).get("worst", {})
    out.print(f"wrote {path}: {len(runs)} members; {v['measured_on']}: AUC {v['roc_auc']:.3f}; worst geometry shift "
              f"AUC {worst.get('roc_auc', float('nan')):.3f}", highlight=False, soft_wrap=True)  # fmt: skip


@app.command()
def robustness(
    data_dir: Annotated[Path, typer.Argument(help="Dataset root the split CSV refers to")],
    split_csv: Annotated[Path, typer.Option(help="A `pneumo data split` CSV; its val rows are used")],
    model: ModelOpt = None,
    extra: Annotated[
        list[Path] | None, typer.Option(help="More labelled folders to report, e.g. original-size images")
    ] = None,
    out_json: Annotated[Path | None, typer.Option("--out", help="Write the results as JSON")] = None,
    tta: Annotated[bool, typer.Option(help="Also average with the mirror images")] = False,
) -> None:
    """The shift suite: metrics under zoom, squeeze, translation, exposure, contrast, blur, sharpening, JPEG,
    resolution loss and noise, the worst case over them first; the bacterial / viral split too, for a subtype model."""
    from pneumo.evaluation_run import shift_suite
    from pneumo.robustness import format_table

    results = _run(shift_suite, data_dir, split_csv, model=model, extra=extra or (), tta=tta, out_json=out_json)
    print(format_table(results))


@app.command()
def adapt(
    site_folder: Annotated[Path, typer.Argument(help="The site's labelled sample: NORMAL/ and PNEUMONIA/ folders")],
    out_file: Annotated[Path, typer.Option("--out", help="Site model file to write, e.g. site.pneumo")],
    model: ModelOpt = None,
    target_sensitivity: Annotated[float, typer.Option(help="Sensitivity the site threshold is chosen for")] = 0.98,
    report: Annotated[Path | None, typer.Option(help="Folder for report.txt, metrics.json and plots")] = None,
    refer: Annotated[bool, typer.Option(help="Three-way NORMAL / REFER / PNEUMONIA decisions")] = False,
    refer_error: Annotated[
        float | None, typer.Option(help="With --refer: bound on each confident decision's error [default: 1 - target]")
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (by patient)")] = 5,
    name: Annotated[str | None, typer.Option(help="Site name recorded in the file [default: the folder name]")] = None,
    patients: Annotated[
        Path | None, typer.Option(help="CSV path,patient_id (paths relative to SITE_FOLDER) [default: from names]")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the bootstrap")] = 0,
) -> None:
    """Refit calibration, threshold (and a REFER band) on a site's own labelled sample; write a site model file."""
    from pneumo.adapt import adapt_site

    if folds < 2:
        _fail(UsageError(f"--folds must be at least 2, got {folds}"))
    result = _run(
        adapt_site, site_folder, out_file, model=model, target_sensitivity=target_sensitivity, report_dir=report,
        refer=refer, refer_error=refer_error, folds=folds, name=name, seed=seed, patients_csv=patients,
    )  # fmt: skip
    out.print(result.report, highlight=False, markup=False, soft_wrap=True)
    for w in result.warnings:
        err.print(f"[bold red]WARNING:[/] {w}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_file}" + (f" and {report}/" if report else ""), highlight=False)


@app.command()
def info(model: ModelOpt = None) -> None:
    """Print a model file's metadata (its model card) as JSON; its figures, labelled with what they were measured
    on, and a site calibration in force go to stderr."""
    from pneumo.modelfile import read_meta

    meta = _run(read_meta, model)
    print(meta.model_dump_json(indent=2))
    for line in meta.figures_summary():
        err.print(line, highlight=False, soft_wrap=True)
    if (site := meta.site) is not None:
        cv = site.cross_validated
        band = f"; REFER {site.refer.low:.3f}-{site.refer.high:.3f}" if site.refer else ""
        err.print(
            f"site calibration in force: {site.name} ({site.created}, {site.sample.n} images; threshold "
            f"{site.threshold:.4f}{band}; cross-validated sensitivity {cv.sensitivity.value:.3f}, specificity "
            f"{cv.specificity.value:.3f}) over {site.base.name} {site.base.version}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told otherwise)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    model: ModelOpt = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload")] = 50.0,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(help="Also answer this Host name (a reverse proxy's, say); repeatable [default: served names]"),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="Let pages from this origin (https://site.example) POST and read answers; repeatable"),
    ] = None,
) -> None:
    """The web page and REST API (http://HOST:PORT/, API docs at /docs)."""
    from pneumo.serve.app import run_server

    _run(
        run_server,
        host=host,
        port=port,
        model=model,
        max_upload_mb=max_upload_mb,
        allow_hosts=allow_host or (),
        allow_origins=allow_origin or (),
    )


@app.command("dicom-listen")
def dicom_listen(
    ae_title: Annotated[str, typer.Option(help="This node's AE title")] = "PNEUMO",
    port: Annotated[int, typer.Option(help="DICOM port to listen on")] = 11112,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told otherwise)")] = "127.0.0.1",
    forward: Annotated[
        str | None, typer.Option(help="C-STORE each SR and SC to this node, HOST:PORT:AET (e.g. the PACS)")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Also write each SR and SC into this folder")] = None,
    calling_aet: Annotated[
        list[str] | None, typer.Option("--calling-aet", help="Accept associations only from these AE titles")
    ] = None,
    model: ModelOpt = None,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold [default: the model's]")] = None,
    workers: Annotated[int, typer.Option(help="Instances analysed at the same time")] = 2,
    queue_size: Annotated[int, typer.Option(help="Instances waiting at most; beyond, senders get A700")] = 16,
    heatmaps: Annotated[bool, typer.Option(help="Heat map in the Secondary Capture")] = True,
) -> None:
    """A DICOM node (C-STORE SCP): analyses every chest CR / DX it receives and sends back an SR and an SC."""
    from pneumo.dicom import require

    _run(require, "pynetdicom", "highdicom")
    from pneumo.dicom.node import listen

    threshold = _threshold(threshold)
    if forward is None and out_dir is None:
        _fail(UsageError("nothing to do with the results: give --forward HOST:PORT:AET and/or --out DIR"))
    from pneumo.dicom.node import Destination
    from pneumo.errors import ConfigError

    try:
        Destination.parse(forward) if forward else None
    except ConfigError as exc:
        _fail(UsageError(str(exc)))
    _run(listen, model=model, ae_title=ae_title, host=host, port=port, forward=forward, out_dir=out_dir,
         calling_ae_titles=calling_aet, workers=workers, queue_size=queue_size, threshold=threshold,
         heatmaps=heatmaps)  # fmt: skip


@app.command()
def dicomweb(
    url: Annotated[str, typer.Option(help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")],
    study: Annotated[str, typer.Option(help="Study Instance UID")],
    model: ModelOpt = None,
    threshold: Annotated[float | None, typer.Option(help="Decision threshold [default: the model's]")] = None,
    store: Annotated[bool, typer.Option(help="STOW-RS the SRs and SCs back into the study")] = True,
    heatmaps: Annotated[bool, typer.Option(help="Heat map in the Secondary Capture")] = True,
) -> None:
    """Fetch a study's chest radiographs with WADO-RS, analyse them, STOW-RS an SR and an SC for each back.

    Exit code 3 when some CR / DX instances could not be analysed."""
    from pneumo.dicom import require

    _run(require)
    from pneumo.dicom.dicomweb import run

    threshold = _threshold(threshold)
    outcomes = _run(run, url, study, model=model, threshold=threshold, heatmaps=heatmaps, store=store)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``main([...])`` runs in-process (tests) and returns the exit code."""
    try:
        # Outside standalone mode click returns the code of a typer.Exit instead of raising it.
        rv = app(args=argv, prog_name="pneumo", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click's own usage errors
        return int(exc.code or 0)
    except ImportError as exc:  # an optional part that is not installed: name the extra that installs it
        from pneumo.errors import missing_extra

        if (missing := missing_extra(exc)) is None or _state["debug"]:
            raise
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(missing))}", highlight=False, soft_wrap=True)
        return 1
    except Exception as exc:
        # click's usage errors (typer vendors click, so match by shape rather than by class)
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        if type(exc).__name__ == "Abort":
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
