"""The ``pneumo`` command line: parse, call one library function, print. Heavy imports stay inside commands."""

from __future__ import annotations

import contextlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pneumo._version import __version__

app = typer.Typer(
    help="Pneumonia detection in pediatric chest X-rays: inspect data, train, evaluate, predict, explain, serve.\n\n"
    "Example: pneumo predict scan.jpeg",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect a dataset folder and split it by patient.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)
_state = {"debug": False}


def _default(text: str) -> str:
    """`` [default: text]`` for a help string, escaped: rich would take an unescaped ``[default: …]`` for markup
    and swallow it. For options whose real default is decided later (by the model file, by the config)."""
    return rf" \[default: {text}]"


def _bundled_threshold() -> str:
    """The bundled model's threshold for the help texts, read from its meta.json alone (a few ms, stdlib only);
    an empty string when the file is missing or damaged (the commands say so when they need it)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(Path(__file__).parent / "assets" / "default.pneumo") as zf:
            return f"{float(json.loads(zf.read('meta.json'))['threshold']):.3f}"
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return ""


_BUNDLED_T = _bundled_threshold()
_MODEL_THRESHOLD = "the model's own" + (f"; {_BUNDLED_T} for the bundled model" if _BUNDLED_T else "")
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Model file (.pneumo or exported .onnx) or run directory" + _default("the bundled model"),
    ),
]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="Decision threshold, 0-1 (PNEUMONIA at or above it)" + _default(_MODEL_THRESHOLD))
]


class HeatMethod(StrEnum):
    occlusion = "occlusion"
    cam = "cam"


class Task(StrEnum):
    binary = "binary"
    subtype = "subtype"


class Balance(StrEnum):
    weights = "weights"
    oversample = "oversample"
    none = "none"


class Transfer(StrEnum):
    full = "full"
    top = "top"
    linear = "linear"


class Normalization(StrEnum):
    equalize = "equalize"
    none = "none"


class Rule(StrEnum):
    worst_case = "worst_case"
    pooled = "pooled"


class Engine(StrEnum):
    local = "local"
    ray = "ray"


class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"


class SplitBy(StrEnum):
    blocks = "blocks"
    patient = "patient"


class OutputFormat(StrEnum):
    csv = "csv"
    json = "json"


# What ``train`` does when an option is not given: TrainConfig's defaults (tests/test_cli_conventions.py checks
# that these are the same). Shown in the help; the options themselves default to None so that a --config file's
# values are not overridden by defaults.
TRAIN_DEFAULTS = {
    "arch": "efficientnet_lite0",
    "task": "binary",
    "subtype_head": False,
    "epochs": 6,
    "image_size": 128,
    "normalization": "equalize",
    "batch_size": 32,
    "lr": 0.001,
    "balance": "weights",
    "transfer": "full",
    "val_fraction": 0.1,
    "seed": 0,
    "target_sensitivity": 0.98,
    "target_specificity": 0.9,
    "threshold_rule": "worst_case",
    "patience": 4,
    "devices": 1,
    "num_nodes": 1,
    "strategy": "auto",
}


def _td(name: str) -> str:
    value = TRAIN_DEFAULTS[name]
    return _default(
        ("on" if value else "off")
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


class UsageError(Exception):
    """Bad arguments that typer itself cannot catch (exit code 2)."""


def _fail(exc: BaseException) -> None:
    """One line a person can act on, then a non-zero exit (2 for usage errors, the library error's own
    ``exit_code`` otherwise); the traceback only with --debug."""
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
    raise typer.Exit(2 if isinstance(exc, UsageError) else getattr(exc, "exit_code", 1))


def _run(fn, *args, **kwargs):
    """``fn(...)``, with the library's errors (and OS errors, and invalid options) as one line and exit code 1
    (2 for the library's usage errors, :class:`pneumo.errors.InputError`).

    Anything else (a RuntimeError or ValueError from our own code) is a bug and keeps its traceback."""
    from pydantic import ValidationError

    from pneumo.errors import PneumoError

    try:
        return fn(*args, **kwargs)
    except (UsageError, PneumoError, OSError, ValidationError) as exc:
        _fail(exc)


def _usage(fn, *args, **kwargs):
    """``fn(...)`` whose library errors are the user's to fix: each is a usage error (exit 2)."""
    from pneumo.errors import PneumoError

    try:
        return fn(*args, **kwargs)
    except PneumoError as exc:
        _fail(UsageError(str(exc)))


def _threshold(threshold: float | None) -> float | None:
    """A ``--threshold`` option checked by the decision core (:func:`pneumo.decision.check_threshold`); out of
    range or NaN it is a usage error (exit 2)."""
    if threshold is None:
        return None
    from pneumo.decision import check_threshold

    return _usage(check_threshold, threshold, "--threshold")


def _version(value: bool) -> None:
    if value:
        print(f"pneumo {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug


@data_app.command("inspect")
def data_inspect(
    directory: Annotated[
        Path, typer.Argument(help="Dataset root: CLASS/ folders (NORMAL/, PNEUMONIA/), optionally under train/val/test")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    plots: Annotated[Path | None, typer.Option(help="Write histogram PNGs into this folder.")] = None,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="Skip reading image headers.")] = False,
    verify: Annotated[
        bool | None,
        typer.Option(help="Decode every image to find damaged ones" + _default("on below 20,000 images")),
    ] = None,
) -> None:
    """Count images per split, class, subtype and patient; image sizes and modes; unreadable files.

    Example: pneumo data inspect chest_xray/train --plots plots/
    """
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
    out_csv: Annotated[
        Path,
        typer.Option("--output", "-o", "--out", help="CSV to write (path,split,label,patient_id,subtype[,block])"),
    ],
    by: Annotated[
        SplitBy,
        typer.Option(
            help="blocks: hold out contiguous blocks of each patient-numbering sequence (acquisition periods), per "
            "class; patient: random patient-grouped split (flatters: every period on both sides)"
        ),
    ] = SplitBy.blocks,
    blocks: Annotated[int, typer.Option(min=1, help="Blocks per sequence (one at each end, the rest inside)")] = 3,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of each class held out for validation")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed (random split, or the block split's fallback)")] = 0,
) -> None:
    """Patient-grouped train/val split, by acquisition blocks (default) or at random; reproducible.

    Example: pneumo data split chest_xray -o split.csv
    """
    from collections import Counter

    from pneumo.data import make_split

    by = by.value
    rows, unsequenced = _run(
        make_split, directory, out_csv, val_fraction=val_fraction, seed=seed, by=by, n_blocks=blocks
    )
    counts = Counter((r.split, r.label) for r in rows)
    patients = {s: len({r.patient_id for r in rows if r.split == s}) for s in ("train", "val")}
    for s in ("train", "val"):
        per_class = ", ".join(f"{lbl} {n}" for (sp, lbl), n in sorted(counts.items()) if sp == s)
        out.print(f"{s}: {per_class} ({patients[s]} patients)", highlight=False)
    if by == "blocks":
        held = Counter(r.block for r in rows if r.split == "val" and r.block != "random")
        for block, n in sorted(held.items()):
            out.print(f"  held-out block {block}: {n} images", highlight=False)
        if unsequenced:
            err.print(
                f"WARNING: {unsequenced} of {len(rows)} images have names outside every patient-numbering sequence "
                "(IM-, NORMAL2-IM-, person…_bacteria, person…_virus); they were split AT RANDOM by patient (block "
                "'random'), which flatters the validation figures",
                highlight=False,
            )
    out.print(f"wrote {out_csv}", highlight=False)


_RULE_HELP = (
    "worst_case: the largest margin to both targets in the worst framing condition; pooled: the target sensitivity "
    "on validation pooled with its checked copies"
)
_TARGET_SPEC_HELP = "The worst_case rule's specificity target"
OutOpt = Annotated[Path, typer.Option("--output", "-o", "--out", help="Run directory")]


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Dataset root (the train split is used; val is carved by patient)")],
    out_dir: OutOpt,
    arch: Annotated[str | None, typer.Option(help="Architecture (see `pneumo models`)" + _td("arch"))] = None,
    task: Annotated[Task | None, typer.Option(help="What the model predicts" + _td("task"))] = None,
    subtype_head: Annotated[
        bool | None,
        typer.Option(help="With --task binary: add a normal/bacterial/viral head" + _td("subtype_head")),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs" + _td("epochs"))] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels" + _td("image_size"))] = None,
    normalization: Annotated[
        Normalization | None, typer.Option(help="equalize: histogram equalisation" + _td("normalization"))
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size" + _td("batch_size"))] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate" + _td("lr"))] = None,
    balance: Annotated[Balance | None, typer.Option(help="Class balancing" + _td("balance"))] = None,
    transfer: Annotated[
        Transfer | None, typer.Option(help="Layers trained: all, the top block, or the head" + _td("transfer"))
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(help="Start from shipped ImageNet weights" + _default("when the architecture ships them")),
    ] = None,
    augment: Annotated[bool, typer.Option(help="Random augmentation")] = True,
    split: Annotated[Path | None, typer.Option(help="Split CSV from `pneumo data split`")] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Validation share when no --split" + _td("val_fraction"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed" + _td("seed"))] = None,
    target_sensitivity: Annotated[
        float | None, typer.Option(help="Operating-point sensitivity" + _td("target_sensitivity"))
    ] = None,
    target_specificity: Annotated[
        float | None, typer.Option(help=_TARGET_SPEC_HELP + _td("target_specificity"))
    ] = None,
    threshold_rule: Annotated[Rule | None, typer.Option(help=_RULE_HELP + _td("threshold_rule"))] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs" + _td("patience"))] = None,
    max_train_images: Annotated[
        int | None, typer.Option(min=1, help="Subsample the training images" + _default("all"))
    ] = None,
    devices: Annotated[
        int | None, typer.Option(min=1, help="Processes per node (data parallel)" + _td("devices"))
    ] = None,
    num_nodes: Annotated[int | None, typer.Option(min=1, help="Nodes" + _td("num_nodes"))] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp" + _td("strategy"))] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per process" + _default("torch's"))] = None,
    config: Annotated[Path | None, typer.Option(help="A config.yaml to start from (flags override it)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Resume from the run's last checkpoint")] = False,
) -> None:
    """Train a model and write a self-describing model.pneumo into the run directory.

    Example: pneumo train chest_xray -o runs/lite0 --split split.csv

    Example (the bundled model's recipe): pneumo train chest_xray -o runs/default --config configs/default.yaml
    """
    from pneumo.config import TrainConfig

    # Every option named like a config field sets it; the two whose names differ are mapped by hand. Choices
    # travel as their plain string values (what the config file holds).
    given = {
        k: (v.value if isinstance(v, StrEnum) else v)
        for k, v in locals().items()
        if k in TrainConfig.model_fields and k != "augment"
    }
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
    target_sensitivity: Annotated[
        float | None, typer.Option(help="Operating-point sensitivity" + _default("the run's"))
    ] = None,
    target_specificity: Annotated[float | None, typer.Option(help=_TARGET_SPEC_HELP + _default("the run's"))] = None,
    threshold_rule: Annotated[Rule | None, typer.Option(help=_RULE_HELP + _default("the run's"))] = None,
) -> None:
    """Recalibrate, choose the threshold, refit the domain guard and re-export a run without retraining.

    Example: pneumo finalize runs/lite0 --target-sensitivity 0.99
    """
    from pneumo.training.train import refinalize

    rule = None if threshold_rule is None else threshold_rule.value
    path = _run(refinalize, run_dir, target_sensitivity, target_specificity=target_specificity,
                threshold_rule=rule)  # fmt: skip
    out.print(f"wrote {path}", highlight=False)


@app.command()
def models() -> None:
    """List the architectures `pneumo train --arch` accepts.

    Example: pneumo models
    """
    from pneumo.training.models import ARCHS

    for name, spec in sorted(ARCHS.items()):
        weights = "ImageNet weights shipped" if spec.pretrained_available else "from scratch"
        out.print(f"{name:20s} {spec.description} ({weights})", highlight=False)


@app.command()
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Folder of NORMAL/ and PNEUMONIA/ (or a root with a split level)")],
    out_dir: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="Folder for report.txt, metrics.json and plots")
    ],
    model: ModelOpt = None,
    split: Annotated[
        Split | None,
        typer.Option(help="Which split of a root with train/val/test" + _default("test; val with --split-csv")),
    ] = None,
    split_csv: Annotated[Path | None, typer.Option(help="Evaluate the 'val' rows of a `pneumo data split` CSV")] = None,
    threshold: ThresholdOpt = None,
    mirror: Annotated[bool, typer.Option("--tta", help="Average with the mirrored image")] = False,
) -> None:
    """Evaluate a model on labelled images: report, metrics with 95 % intervals, plots and a gallery.

    Intervals: Wilson for accuracy, sensitivity, specificity, precision and NPV; a class-stratified bootstrap for
    AUC, F1, ECE and Brier. Files: report.txt, metrics.json, predictions.csv (predict's columns, then label and
    correct), confusion matrix, ROC, PR, reliability and gallery PNGs.

    Example: pneumo evaluate chest_xray --split test -o eval/
    """
    from pneumo.evaluation.run import evaluate_folder

    threshold = _threshold(threshold)
    split_name = None if split is None else split.value
    result = _run(
        evaluate_folder, data_dir, out_dir, model=model, split=split_name, split_csv=split_csv, threshold=threshold,
        mirror=mirror,
    )  # fmt: skip
    out.print(result["report"], highlight=False)
    out.print(f"wrote {out_dir}", highlight=False)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, model files or `evaluate` output folders")],
    out_md: Annotated[
        Path | None, typer.Option("--output", "-o", "--out", help="Markdown table to write" + _default("print it"))
    ] = None,
    out_csv: Annotated[Path | None, typer.Option("--csv", help="CSV to write")] = None,
) -> None:
    """One comparison table of trained models (accuracy, sensitivity, specificity, AUC, F1, size, speed).

    Example: pneumo compare runs/* -o comparison.md --csv comparison.csv
    """
    from pneumo.evaluation.compare import compare_runs, format_markdown, write_csv

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
    from pneumo.predict_io import (
        STDOUT,
        display_names,
        expand_inputs,
        output_format,
        predict_files,
        render_table,
        summary_line,
        write_predictions,
    )

    threshold = _threshold(threshold)
    kind = _usage(output_format, output, None if fmt is None else fmt.value)
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

    to_file = output is not None and output != STDOUT
    run = _run(predict_files, files, model=model, threshold=threshold, mirror=mirror, batch_size=batch_size,
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


@app.command()
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
        result = _run(run_batch, inputs, output, model=model, engine=engine.value, address=address,
                      batch_size=batch_size, part_size=part_size, resume=resume, threshold=threshold, mirror=mirror,
                      actors=actors, on_start=on_start, progress=progress)  # fmt: skip
    finally:
        if bar is not None:
            bar.stop()
    out.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
    if result.errors:
        raise typer.Exit(3)


@app.command()
def explain(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs")],
    output: Annotated[Path, typer.Option("--output", "-o", "--out", help="Folder for the overlay PNGs")],
    model: ModelOpt = None,
    method: Annotated[
        HeatMethod,
        typer.Option(
            help="occlusion: the drop in calibrated pneumonia log-odds when each 16-px region is hidden, on one "
            "absolute scale; cam: the class activation map, scaled to its own maximum",
        ),
    ] = HeatMethod.occlusion,
) -> None:
    """Heat maps over the X-ray, with probability and decision, one PNG per image.

    Example: pneumo explain scan.jpeg -o heatmaps/ --method occlusion
    """
    from pneumo.explain.explainer import explain_files
    from pneumo.predict_io import expand_inputs

    files, missing = expand_inputs(images)
    if missing or not files:
        _fail(UsageError(f"{(missing or images)[0]}: no such file, folder or matching glob"))
    written, failures = _run(explain_files, files, output, model=model, method=HeatMethod(method).value)
    for p in written:
        out.print(f"wrote {p}", highlight=False)
    for msg in failures:
        err.print(f"[red]error:[/] {msg}", highlight=False)
    if failures:
        raise typer.Exit(3)


@app.command()
def export(
    output: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="model.onnx (graph + metadata) or model.pneumo")
    ],
    model: ModelOpt = None,
    int8: Annotated[bool, typer.Option("--int8", help="A quantised INT8 graph (needs --calibration-data)")] = False,
    calibration_data: Annotated[
        Path | None, typer.Option(help="--int8: images to calibrate on (validation images left out if told apart)")
    ] = None,
    validation_data: Annotated[
        Path | None,
        typer.Option(help="--int8: labelled validation images for parity" + _default("--calibration-data")),
    ] = None,
    split_csv: Annotated[Path | None, typer.Option(help="--int8: its 'val' rows are the validation images")] = None,
    calibration_images: Annotated[int, typer.Option(min=1, help="--int8: at most this many calibration images")] = 256,
) -> None:
    """Export to ONNX; fails unless ONNX Runtime reproduces PyTorch to 1e-3. With --int8: a QDQ INT8 graph,
    written only if on the validation images the AUC drops by <= 0.002, decisions agree on >= 99 % and the
    domain guard's flag rate moves by <= 1 point.

    Example: pneumo export -m runs/lite0 -o model.onnx
    """
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
    output: Annotated[Path, typer.Option("--output", "-o", "--out", help="The ensemble's model file (.pneumo)")],
    name: Annotated[str | None, typer.Option(help="Model name" + _default("the first member's, -ensembleN"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Decoded-image cache" + _default("as the members'"))] = None,
) -> None:
    """One ONNX graph averaging the members' logits (the first member's domain guard), recalibrated and
    thresholded again on the members' common validation split pooled with its geometry-shifted copies.

    Example: pneumo ensemble runs/s0 runs/s1 runs/s2 --data chest_xray --split split.csv -o ensemble.pneumo
    """
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
    out_json: Annotated[Path | None, typer.Option("--output", "-o", "--out", help="Write the results as JSON")] = None,
    mirror: Annotated[bool, typer.Option("--tta", help="Also average with the mirror images")] = False,
) -> None:
    """The shift suite: metrics under zoom, squeeze, translation, exposure, contrast, blur, sharpening, JPEG,
    resolution loss and noise, the worst case over them first; the bacterial / viral split too, for a subtype model.

    Example: pneumo robustness chest_xray --split-csv split.csv -o robustness.json
    """
    from pneumo.evaluation.robustness import format_table
    from pneumo.evaluation.run import shift_suite

    results = _run(shift_suite, data_dir, split_csv, model=model, extra=extra or (), mirror=mirror, out_json=out_json)
    print(format_table(results))


@app.command()
def adapt(
    site_folder: Annotated[Path, typer.Argument(help="The site's labelled sample: NORMAL/ and PNEUMONIA/ folders")],
    out_file: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="Site model file to write, e.g. site.pneumo")
    ],
    model: ModelOpt = None,
    target_sensitivity: Annotated[float, typer.Option(help="Sensitivity the site threshold is chosen for")] = 0.98,
    report: Annotated[Path | None, typer.Option(help="Folder for report.txt, metrics.json and plots")] = None,
    refer: Annotated[bool, typer.Option("--refer", help="Three-way NORMAL / REFER / PNEUMONIA decisions")] = False,
    refer_error: Annotated[
        float | None,
        typer.Option(help="With --refer: bound on each confident decision's error" + _default("1 - target")),
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (by patient)")] = 5,
    name: Annotated[
        str | None, typer.Option(help="Site name recorded in the file" + _default("the folder name"))
    ] = None,
    patients: Annotated[
        Path | None,
        typer.Option(help="CSV path,patient_id (paths relative to SITE_FOLDER)" + _default("from the file names")),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the bootstrap")] = 0,
) -> None:
    """Refit calibration, threshold (and a REFER band) on a site's own labelled sample; write a site model file.

    Example: pneumo adapt site_sample/ -o site.pneumo --report site_report/
    """
    from pneumo.adapt.site import adapt_site

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
    """Print a model file's metadata (its model card) as JSON.

    Its figures, labelled with what they were measured on, and a site calibration in force go to stderr.

    Example: pneumo info -m site.pneumo
    """
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


PortOpt = Annotated[int, typer.Option(min=1, max=65535, help="TCP port")]


@app.command()
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
    import math

    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        _fail(UsageError(f"--max-upload-mb must be a positive number of megabytes, got {max_upload_mb:g}"))
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

    _run(require, "pynetdicom", "highdicom")
    from pneumo.dicom.node import listen

    threshold = _threshold(threshold)
    if forward is None and out_dir is None:
        _fail(UsageError("nothing to do with the results: give --forward HOST:PORT:AET and/or --output DIR"))
    from pneumo.dicom.node import Destination

    if forward:
        _usage(Destination.parse, forward)
    _run(listen, model=model, ae_title=ae_title, host=host, port=port, forward=forward, out_dir=out_dir,
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
        _fail(UsageError(f"--url {url}: not an http(s) URL with a host, e.g. http://127.0.0.1:8042/dicom-web"))
    return url


@app.command()
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


def _flags_without_metavar(command) -> None:
    """On/off flags show no value type in the help (``--json``, not ``--json <bool>``); recursively."""
    ctx_class = getattr(command, "context_class", None)
    params = list(getattr(command, "params", ()))
    if ctx_class is not None:
        with contextlib.suppress(Exception):  # the help option is cosmetics: never let it stop the command
            params.append(command.get_help_option(ctx_class(command)))
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_without_metavar(sub)


def command():
    """The click command behind ``pneumo`` (typer builds it from :data:`app`), with the help cosmetics applied."""
    cmd = typer.main.get_command(app)
    _flags_without_metavar(cmd)
    return cmd


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``main([...])`` runs in-process (tests) and returns the exit code."""
    try:
        # Outside standalone mode click returns the code of a typer.Exit instead of raising it.
        rv = command().main(args=argv, prog_name="pneumo", standalone_mode=False)
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
