"""Inputs and outputs of ``pneumo predict``: expanding files, folders and globs; CSV / JSON / table output."""

from __future__ import annotations

import csv
import glob
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pneumo import atomic
from pneumo.imaging import IMAGE_SUFFIXES
from pneumo.inference import Prediction

COLUMNS = ["path", "probability", "prediction", "threshold", "in_domain", "domain_score", "error"]
SUBTYPE_COLUMNS = ["p_normal", "p_bacterial", "p_viral"]
_GLOB_CHARS = set("*?[")


def _wanted(p: Path) -> bool:
    # Inside folders: image suffixes and extension-less files (DICOM often has none); never hidden files.
    return p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in IMAGE_SUFFIXES or not p.suffix)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders recursively (sorted), globs expanded; returns (files, inputs that matched nothing)."""
    files: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if _wanted(f)))
        elif p.exists() or p.is_symlink():
            files.append(p)  # named explicitly: the loader decides, whatever the extension
        elif _GLOB_CHARS & set(item):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True))
            found = [m for m in matched if m.is_file() or m.is_symlink()]
            files.extend(found)
            if not found:
                missing.append(item)
        else:
            missing.append(item)
    return list(dict.fromkeys(files)), missing


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}" if math.isfinite(value) else ""
    return str(value)


def columns(subtypes: bool) -> list[str]:
    return COLUMNS + (SUBTYPE_COLUMNS if subtypes else [])


def write_predictions(preds: Sequence[Prediction], path: Path, subtypes: bool) -> Path:
    """``.json`` -> a list of objects with the same fields as the CSV; anything else -> CSV."""
    cols = columns(subtypes)
    if path.suffix.lower() == ".json":
        atomic.write_text(path, json.dumps([{c: getattr(p, c) for c in cols} for p in preds], indent=2) + "\n")
        return path
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        w.writerows([_cell(getattr(p, c)) for c in cols] for p in preds)
    return path


def summary_line(preds: Sequence[Prediction]) -> str:
    """e.g. ``12 files: 7 PNEUMONIA, 4 NORMAL, 1 unreadable; 2 outside the validated domain``."""
    counts = Counter(p.prediction or "unreadable" for p in preds)
    parts = [f"{counts[k]} {k}" for k in ("PNEUMONIA", "NORMAL", "unreadable") if counts[k]]
    ood = sum(p.in_domain is False for p in preds)
    line = f"{len(preds)} file{'s' if len(preds) != 1 else ''}: " + ", ".join(parts)
    if ood:
        line += f"; {ood} outside the validated domain (treat those predictions with caution)"
    return line


def render_table(preds: Sequence[Prediction], subtypes: bool):
    """A rich Table for the terminal."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("file", overflow="fold", ratio=1, min_width=16)
    # The figures never wrap: a folded probability or decision is easy to misread.
    for name in ["P(pneum.)", "decision", "domain"] + (["normal/bact/viral"] if subtypes else []):
        table.add_column(name, no_wrap=True)
    for p in preds:
        if p.error:  # the reason goes under the file name, so the narrow figure columns stay narrow
            reason = p.error.removeprefix(f"{p.path}: ")
            row = [f"{p.path}\n[red]{escape(reason)}[/red]", "", "[red]unreadable[/red]", ""]
        else:
            style = "bold red" if p.prediction == "PNEUMONIA" else "green"
            domain = "" if p.in_domain is None else ("ok" if p.in_domain else "[bold yellow]OUT[/]")
            if p.domain_score is not None:
                domain += f" {p.domain_score:.2f}"
            row = [p.path, f"{p.probability:.3f}", f"[{style}]{p.prediction}[/]", domain]
        if subtypes:
            row.append("" if p.p_normal is None else f"{p.p_normal:.2f}/{p.p_bacterial:.2f}/{p.p_viral:.2f}")
        table.add_row(*row)
    return table
