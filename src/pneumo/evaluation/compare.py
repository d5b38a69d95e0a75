"""Side-by-side comparison of trained models: one row per model file, run directory or evaluate output directory.

A model file (or a run directory holding ``model.pneumo``) contributes the validation metrics stored in its
metadata; an ``evaluate`` output directory without a model file contributes its ``metrics.json`` (test metrics),
with architecture and timings taken from the ``"model"`` entry if the evaluation recorded one. The ``metrics``
column says which. Missing values are ``None`` in the rows, an empty cell in CSV and "—" in Markdown.

Block-split models add their worst held-out period's specificity, and models whose lung checks were recorded their
AUC with the lungs hidden and with only the lungs shown (validation, atlas). ``--by-recipe``
(:mod:`pneumo.recipes`) pools runs that differ only by seed.

Accuracy, sensitivity and specificity carry their 95 % Wilson interval, from the counts they were measured on
(``n``, ``n_pos``, ``n_neg``): two models whose intervals overlap widely are not told apart by these figures.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pneumo import atomic
from pneumo.evaluation.report import proportion_ci
from pneumo.modelfile import SUFFIX, ModelFileError, ModelMeta, read_meta

MISSING = "—"
METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "f1", "ece")
COLUMNS = (
    "name",
    "arch",
    "task",
    "image_size",
    *METRICS,
    "shift_worst_auc",
    "shift_worst_specificity",
    "worst_block_specificity",
    "lungs_hidden_auc",
    "only_lungs_auc",
    "params",
    "epochs",
    "train_minutes",
    "cpu_ms_per_image",
    "metrics",
)
# Rates with a Wilson interval, and the count each is a proportion of.
RATE_COUNTS = {"accuracy": "n", "sensitivity": "n_pos", "specificity": "n_neg"}
CI_COLUMNS = tuple(f"{k}_ci_{end}" for k in RATE_COUNTS for end in ("low", "high"))
CSV_COLUMNS = (*COLUMNS, *CI_COLUMNS)
HEADERS = {
    "image_size": "size",
    "roc_auc": "ROC AUC",
    "shift_worst_auc": "worst-shift AUC",
    "shift_worst_specificity": "worst-shift spec",
    "worst_block_specificity": "worst-block spec",
    "lungs_hidden_auc": "lungs-hidden AUC",
    "only_lungs_auc": "only-lungs AUC",
    "train_minutes": "train min",
    "cpu_ms_per_image": "CPU ms/img",
    "metrics": "metrics from",
}


def _number(value: Any) -> float | None:
    """A finite float, or None for absent, null, NaN or non-numeric values."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _interval(rate: float | None, n: float | None) -> tuple[float | None, float | None]:
    """The Wilson 95 % interval of a rate measured on ``n`` cases (its count recovered as ``rate * n``)."""
    if rate is None or n is None or n < 1 or not 0 <= rate <= 1:
        return None, None
    return proportion_ci(round(rate * n), int(n))


def _name(path: Path) -> str:
    # A run directory names the run; "model.pneumo" inside it says nothing, so use its directory's name.
    if path.is_dir():
        return path.name
    return path.parent.name if path.stem == "model" else path.stem


def _row(name: str, meta: Mapping[str, Any], metrics: Mapping[str, Any], source: str) -> dict[str, Any]:
    training = meta.get("training") or {}
    seconds = _number(training.get("train_seconds"))
    epochs = _number(training.get("epochs"))
    params = _number(meta.get("params"))
    config = training_config(meta)
    row: dict[str, Any] = {
        "config": config,  # not a column: what groups runs into recipes (pneumo.recipes)
        "combines": combines(meta),  # nor this: a soup or an ensemble is not one more seed of its recipe
        "name": name,
        "arch": meta.get("arch"),
        "task": meta.get("task"),
        "image_size": (meta.get("preprocessing") or {}).get("image_size"),
    }
    row.update({k: _number(metrics.get(k)) for k in METRICS})
    for k, count in RATE_COUNTS.items():
        row[f"{k}_ci_low"], row[f"{k}_ci_high"] = _interval(row[k], _number(metrics.get(count)))
    # Models are chosen on the worst geometric shift of validation, not on its clean figures (which reward
    # reading the framing): the worst case that finalisation recorded, when it did.
    worst = (metrics.get("geometry_shift") or {}).get("worst") or {}
    row.update(shift_worst_auc=_number(worst.get("roc_auc")), shift_worst_specificity=_number(worst.get("specificity")))
    # A block split's worst held-out period, and the lung checks when they were recorded (validation's atlas set)
    row["worst_block_specificity"] = _number(
        ((metrics.get("blocks") or {}).get("worst_specificity") or {}).get("value")
    )
    lungs = _lung_check(metrics.get("lung_checks") or {})
    row.update(lungs_hidden_auc=_number(lungs.get("lungs_hidden")), only_lungs_auc=_number(lungs.get("only_lungs")))
    row.update(
        params=int(params) if params else None,  # 0 is ModelMeta's "not recorded"
        epochs=int(epochs) if epochs is not None else None,
        train_minutes=seconds / 60 if seconds is not None else None,
        cpu_ms_per_image=_number(metrics.get("cpu_ms_per_image")),
        metrics=source,
        seed=config.get("seed"),
    )
    return row


def _lung_check(checks: Mapping[str, Any]) -> Mapping[str, Any]:
    """The lung check measured on validation with the atlas (the set every model of a split shares), else the first."""
    for name, figures in checks.items():
        if "atlas" in name:
            return figures or {}
    return next(iter(checks.values()), None) or {}


def combines(meta: Mapping[str, Any]) -> str | None:
    """What a model file combines: ``"soup of N"`` (averaged weights), ``"ensemble of N"`` (averaged logits), or
    None for one trained network."""
    training = meta.get("training") or {}
    if soup := (training.get("soup") or {}).get("members"):
        return f"soup of {len(soup)}"
    if members := meta.get("members") or training.get("members"):
        return f"ensemble of {len(members)}"
    return None


def training_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The training config a model file records (empty for files that record none)."""
    return dict((meta.get("training") or {}).get("config") or {})


def read_row(model: str | Path) -> dict[str, Any]:
    """The comparison row for one model file, run directory or evaluate output directory."""
    path = Path(model)
    if path.is_dir() and not (path / f"model{SUFFIX}").is_file() and (path / "metrics.json").is_file():
        try:
            data = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{path / 'metrics.json'}: unreadable ({exc})") from exc
        info = data.get("model") or {}
        # The evaluation's own figures (timing included, if present) override those recorded at validation.
        metrics = {**(info.get("validation") or {}), **data}
        return _row(_name(path), info, metrics, "evaluate")
    meta: ModelMeta = read_meta(path)
    # the record as plain data, the shape metrics.json gives the figures in above
    split = (meta.data or {}).get("split_method")  # what the figures were measured on: say it in the table
    source = f"validation ({split})" if split else "validation"
    return _row(_name(path), meta.model_dump(), meta.validation.model_dump(), source)


def compare_runs(models: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per model (see :data:`COLUMNS`), in the order given; raises ModelFileError for unreadable inputs."""
    return [read_row(m) for m in models]


def format_value(key: str, value: Any, row: Mapping[str, Any] | None = None) -> str:
    if value is None:
        return MISSING
    if key in RATE_COUNTS and row is not None and row.get(f"{key}_ci_low") is not None:
        return f"{value:.3f} ({row[f'{key}_ci_low']:.3f}–{row[f'{key}_ci_high']:.3f})"
    if key == "params":
        return _fmt_params(int(value))
    if key in ("train_minutes", "cpu_ms_per_image"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _fmt_params(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub Markdown table: metrics with 3 decimals (accuracy, sensitivity and specificity with their 95 %
    Wilson interval when the counts are known), params as 3.4M, minutes and ms with 1 decimal, "—" if missing."""
    headers = [HEADERS.get(c, c) for c in COLUMNS]
    numeric = set(COLUMNS) - {"name", "arch", "task", "metrics"}
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if c in numeric else "---" for c in COLUMNS) + "|",
    ]
    for row in rows:
        cells = [format_value(c, row.get(c), row).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The rows as CSV with full precision, the intervals' ends as columns of their own (:data:`CSV_COLUMNS`);
    missing values are empty cells (what spreadsheets and pandas expect)."""
    path = Path(path)
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in CSV_COLUMNS})
    return path


def write_comparison(
    models: Sequence[str | Path], out_md: str | Path | None = None, out_csv: str | Path | None = None
) -> list[dict[str, Any]]:
    """Compare ``models`` and write the Markdown table (ending in a newline) and the CSV, each if asked; returns the
    rows."""
    rows = compare_runs(models)
    if out_md is not None:
        atomic.write_text(out_md, format_markdown(rows) + "\n")
    if out_csv is not None:
        write_csv(rows, out_csv)
    return rows
