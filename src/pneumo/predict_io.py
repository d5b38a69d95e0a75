"""``pneumo predict``: predicting the files :func:`pneumo.inputs.expand_inputs` found (:func:`predict_files`);
CSV / JSON / table output."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pneumo import atomic
from pneumo.errors import InputError, visible
from pneumo.inference import Prediction, Predictor, columns
from pneumo.labels import NORMAL, PNEUMONIA, REFER


def display_names(files: Sequence[Path], inputs: Sequence[str]) -> list[str]:
    """Short names for the table: a file found in a folder given as input is shown from that folder's own name
    down (``scans/NORMAL/a.jpeg`` for ``/long/path/scans``); a file or glob match as given."""
    folders = [Path(i) for i in inputs if Path(i).is_dir()]
    names = []
    for f in files:
        root = next((d for d in folders if f.is_relative_to(d)), None)
        names.append(str(f if root is None or root.parent == root else f.relative_to(root.parent)))
    return names


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}" if math.isfinite(value) else ""
    return str(value)


def _has_refer(preds: Sequence[Prediction]) -> bool:
    return any(p.refer_low is not None for p in preds)


def _field(p: Prediction, column: str):
    value = getattr(p, column)
    return visible(value) if column in ("path", "error") and value is not None else value


STDOUT = "-"  # ``-o -``: the results go to stdout, for a pipe
FORMATS = {".csv": "csv", ".json": "json"}


def output_format(output: str | Path | None, fmt: str | None = None) -> str | None:
    """The format ``predict`` writes: ``"csv"`` or ``"json"``, from ``fmt`` or the output file's extension;
    None for the terminal table (no output, no format). ``-`` is stdout (CSV unless ``fmt`` says json). An output
    name with another extension (``res.xlsx``, ``res``) or one that contradicts ``fmt`` is an :class:`InputError`:
    the file would not hold what its name says."""
    if fmt is not None and fmt not in FORMATS.values():
        raise InputError(f"--format must be one of {', '.join(FORMATS.values())}, got {fmt!r}")
    if output is None:
        return fmt
    if str(output) == STDOUT:
        return fmt or "csv"
    suffix = Path(output).suffix.lower()
    named = FORMATS.get(suffix)
    if named is None:
        raise InputError(
            f"{output}: the output name must end in .csv or .json (or be '-' for stdout), not "
            f"{suffix or 'no extension'}"
        )
    if fmt is not None and fmt != named:
        raise InputError(f"{output}: a {suffix} name with --format {fmt}; give the name the format's extension")
    return named


def _json_text(preds: Sequence[Prediction], cols: Sequence[str]) -> str:
    return json.dumps([{c: _field(p, c) for c in cols} for p in preds], indent=2) + "\n"


def _write_csv(preds: Sequence[Prediction], cols: Sequence[str], f: TextIO) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(cols)
    w.writerows([_cell(_field(p, c)) for c in cols] for p in preds)


def write_predictions(
    preds: Sequence[Prediction], path: Path | TextIO, subtypes: bool, fmt: str | None = None
) -> Path | TextIO:
    """The results as CSV or JSON (a list of objects with the same fields as the CSV's columns) into ``path`` (a
    file, written atomically, or an open text stream such as stdout). ``fmt`` (``"csv"`` / ``"json"``) defaults
    to the file's extension (:func:`output_format`). Paths and messages go through :func:`visible`, so a file
    name that is not UTF-8 cannot cut the output short."""
    cols = columns(subtypes, _has_refer(preds))
    if not isinstance(path, str | Path):
        if (fmt or "csv") == "json":
            path.write(_json_text(preds, cols))
        else:
            _write_csv(preds, cols, path)
        return path
    path = Path(path)
    if (fmt or output_format(path)) == "json":
        atomic.write_text(path, _json_text(preds, cols))
        return path
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as f:
        _write_csv(preds, cols, f)
    return path


@dataclass
class PredictRun:
    """What :func:`predict_files` found: one result per file, in input order; notes of the DICOM outputs; whether
    the model has subtype outputs (the subtype columns)."""

    results: list[Prediction]
    notes: list[str]
    subtypes: bool


def predict_files(
    files: Sequence[Path],
    *,
    model: str | Path | None = None,
    threshold: float | None = None,
    mirror: bool = False,
    batch_size: int = 64,
    dicom_out: Path | None = None,
    output: Path | None = None,
    fmt: str | None = None,
    progress: Callable[[Iterable[Prediction], int], Iterable[Prediction]] | None = None,
) -> PredictRun:
    """``pneumo predict``: predict ``files`` (from :func:`pneumo.inputs.expand_inputs`); with ``dicom_out`` a DICOM
    SR and SC per analysed DICOM input go there; with ``output`` the results are written (:func:`write_predictions`,
    in ``fmt`` or as the name says). ``progress(results, total)`` may wrap the stream of results, e.g. in a progress
    bar. Options that cannot work (a ``batch_size`` below 1, an output name that is neither .csv nor
    .json) raise :class:`InputError` before the model is loaded."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a whole number of at least 1, got {batch_size!r}")
    if output is not None:
        fmt = output_format(output, fmt)
    predictor = Predictor.load(model, threshold=threshold)
    notes: list[str] = []
    if dicom_out is None:
        stream = predictor.predict_sources(((str(f), f) for f in files), batch_size=batch_size, mirror=mirror)
    else:  # each DICOM input read and decoded once, for its row, its SR and its SC
        from pneumo.dicom import require

        require()
        from pneumo.dicom.outputs import predict_with_dicom_outputs

        stream = predict_with_dicom_outputs(
            files, predictor, dicom_out, batch_size=batch_size, mirror=mirror, notes=notes
        )
    results = list(stream if progress is None else progress(stream, len(files)))
    subtypes = predictor.meta.has_subtypes
    if output is not None:
        write_predictions(results, output, subtypes, fmt)
    return PredictRun(results=results, notes=notes, subtypes=subtypes)


def summary_line(preds: Sequence[Prediction]) -> str:
    """e.g. ``12 files: 7 PNEUMONIA, 4 NORMAL, 1 unreadable; 2 outside the validated domain``."""
    counts = Counter(p.prediction or "unreadable" for p in preds)
    parts = [f"{counts[k]} {k}" for k in (PNEUMONIA, REFER, NORMAL, "unreadable") if counts[k]]
    if counts[REFER]:
        parts[parts.index(f"{counts[REFER]} {REFER}")] += f" ({counts[REFER] / len(preds):.0%} referred)"
    ood = sum(p.in_domain is False for p in preds)
    unusual = sum(getattr(p, "domain", None) == "unusual_acquisition" for p in preds)
    line = f"{len(preds)} file{'s' if len(preds) != 1 else ''}: " + ", ".join(parts)
    if ood:
        line += f"; {ood} outside the validated domain (treat those predictions with caution)"
    if unusual:
        line += f"; {unusual} framed or exposed unusually (results stand; check the framing)"
    return line


# How each domain verdict reads in the table: the domain column, and what the decision cell adds under the
# decision, so that a decision not to rely on cannot be read without its warning. ``domain`` where the model
# file's guards say which (pneumo.domain: not_pediatric withholds the result, unusual_acquisition notes it);
# ``in_domain`` alone otherwise ("out").
DOMAIN_WORDS = {
    "typical": ("ok", ""),
    "unusual_acquisition": ("[yellow]unusual[/]", "\n[yellow](unusual image)[/]"),
    "not_pediatric": ("[bold yellow]not pediatric[/]", "\n[bold yellow]DO NOT RELY[/]"),
    "out": ("[bold yellow]OUT[/]", "\n[bold yellow]DO NOT RELY[/]"),
}


def domain_verdict(p: Prediction) -> str | None:
    """``typical`` / ``unusual_acquisition`` / ``not_pediatric`` (the prediction's ``domain`` when it has one),
    ``out`` for an out-of-domain prediction without it, None when the model has no domain guard."""
    domain = getattr(p, "domain", None)
    if domain is not None:
        return str(domain) if str(domain) in DOMAIN_WORDS else "out"
    if p.in_domain is None:
        return None
    return "typical" if p.in_domain else "out"


def render_table(preds: Sequence[Prediction], subtypes: bool, names: Sequence[str] | None = None):
    """A rich Table for the terminal; ``names`` (one per prediction, e.g. from :func:`display_names`) are shown
    instead of the full paths. Names and messages are escaped: nothing in a file name reaches the terminal raw. A
    decision outside the validated domain says so in its own cell."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("file", overflow="fold", ratio=1, min_width=16)
    # The figures never wrap: a folded probability or decision is easy to misread.
    for name in ["P(pneum.)", "decision", "domain"] + (["normal/bact/viral"] if subtypes else []):
        table.add_column(name, no_wrap=True)
    for i, p in enumerate(preds):
        shown = escape(visible(p.path if names is None else names[i]))
        if p.error:  # the reason goes under the file name, so the narrow figure columns stay narrow
            reason = p.error.removeprefix(f"{p.path}: ")
            row = [f"{shown}\n[red]{escape(visible(reason))}[/red]", "", "[red]unreadable[/red]", ""]
        else:
            style = {PNEUMONIA: "bold red", REFER: "bold yellow"}.get(p.prediction or "", "green")
            verdict = domain_verdict(p)
            domain, warning = DOMAIN_WORDS.get(verdict, ("", ""))
            if p.domain_score is not None:
                domain += f" {p.domain_score:.2f}"
            row = [shown, f"{p.probability:.3f}", f"[{style}]{p.prediction}[/]{warning}", domain.strip()]
        if subtypes:
            row.append("" if p.p_normal is None else f"{p.p_normal:.2f}/{p.p_bacterial:.2f}/{p.p_viral:.2f}")
        table.add_row(*row)
    return table
