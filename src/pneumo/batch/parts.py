"""The output format of ``pneumo batch``, shared by its engines (:mod:`pneumo.batch.run` runs the local one and the run
itself, :mod:`pneumo.batch.ray_engine` the Ray one): the inputs, the Arrow schema of a row and the writer of the atomic
Parquet part files. Both engines import it; it imports neither.
"""

from __future__ import annotations

import json
import secrets
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pneumo import atomic
from pneumo.inference import Prediction, Predictor, columns

MODEL_COLUMNS = ["model_name", "model_sha256"]
# Parquet key-value metadata of every part: the settings its rows were predicted with (JSON), which a resume must
# match (pneumo.batch.run.done_paths).
SETTINGS_KEY = b"pneumo_settings"
PART_PREFIX = "part-"
_ARROW_TYPES = {str: pa.string(), float: pa.float64(), bool: pa.bool_()}

Progress = Callable[[int], None]


@dataclass
class BatchInputs:
    """What to predict: ``table`` has ``path`` (as given) and the manifests' extra columns, one row per input;
    ``sources`` is the file to read for each row (a manifest's relative paths are relative to the manifest)."""

    table: pa.Table
    sources: list[str]

    @property
    def paths(self) -> list[str]:
        return self.table.column("path").to_pylist()


def _arrow_type(annotation) -> pa.DataType:
    """``str | None`` -> string, ``float | None`` -> float64, ...: the Parquet type of a Prediction field."""
    args = [a for a in typing.get_args(annotation) if a is not types.NoneType]
    return _ARROW_TYPES[args[0] if args else annotation]


def has_refer(predictor: Predictor) -> bool:
    """Whether ``predict`` would add the REFER band's columns: a site band in force (fixed for the whole run)."""
    return getattr(predictor, "refer", None) is not None


def prediction_schema(subtypes: bool, refer: bool = False) -> pa.Schema:
    """The ``predict`` columns, in ``predict``'s order, typed from :class:`Prediction`'s fields."""
    fields = Prediction.model_fields
    return pa.schema([pa.field(c, _arrow_type(fields[c].annotation)) for c in columns(subtypes, refer)])


def predictions_table(preds: Sequence[Prediction], subtypes: bool, refer: bool = False) -> pa.Table:
    """Predictions as an Arrow table of the ``predict`` columns (the engines' common currency)."""
    schema = prediction_schema(subtypes, refer)
    return pa.table({c: pa.array([getattr(p, c) for p in preds], type=schema.field(c).type) for c in schema.names})


def committed_parts(output: Path) -> list[Path]:
    """The part files of an output folder (temporary files of parts in flight are hidden and never match)."""
    return sorted(output.glob(f"{PART_PREFIX}*.parquet")) if output.is_dir() else []


class PartWriter:
    """Collects prediction rows and commits them ``part_size`` at a time as atomic Parquet part files."""

    def __init__(
        self, output: Path, inputs: BatchInputs, subtypes: bool, model_name: str, model_sha256: str, part_size: int,
        refer: bool = False, settings: dict | None = None,
    ):  # fmt: skip
        self.output, self.inputs, self.subtypes, self.part_size = output, inputs, subtypes, part_size
        self.refer = refer
        self.settings = json.dumps(settings or {}, sort_keys=True).encode()
        self.model_name, self.model_sha256 = model_name, model_sha256
        self.extras = inputs.table.drop_columns(["path"])
        # A new run's parts never overwrite an earlier run's: the run id is part of every name.
        self.run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        self.pending_index: list[int] = []
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.written: list[Path] = []
        self.rows = self.errors = 0

    def add(self, index: Sequence[int], table: pa.Table) -> None:
        """Rows ``table`` (the ``predict`` columns) for the inputs at ``index``; commits every full part."""
        self.pending_index.extend(index)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.part_size:
            self._commit(self.part_size)

    def close(self) -> None:
        while self.pending_rows:
            self._commit(min(self.part_size, self.pending_rows))

    def _commit(self, n: int) -> None:
        preds = pa.concat_tables(self.pending).combine_chunks() if len(self.pending) > 1 else self.pending[0]
        head, rest = preds.slice(0, n), preds.slice(n)
        idx, self.pending_index = self.pending_index[:n], self.pending_index[n:]
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        table = head
        extras = self.extras.take(pa.array(idx, type=pa.int64()))
        for name in extras.column_names:
            table = table.append_column(extras.schema.field(name), extras.column(name))
        table = table.append_column("model_name", pa.array([self.model_name] * n, type=pa.string()))
        table = table.append_column("model_sha256", pa.array([self.model_sha256] * n, type=pa.string()))
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), SETTINGS_KEY: self.settings})
        path = self.output / f"{PART_PREFIX}{self.run_id}-{len(self.written):05d}.parquet"
        with atomic.atomic_open(path, "wb") as f:
            pq.write_table(table, f)
        self.written.append(path)
        self.rows += n
        self.errors += n - head.column("error").null_count
