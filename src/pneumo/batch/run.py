"""``pneumo batch``: archive-scale prediction into a Parquet dataset, resumable, on one machine or on Ray Data.

The output is a folder (``OUT.parquet/``) of part files, each committed atomically (:mod:`pneumo.atomic`), so a
killed run loses at most the parts it had in flight, and ``--resume`` skips every input already in a committed
part. Any Parquet reader opens the folder as one table (``pyarrow.parquet.read_table("OUT.parquet")``).

One run at a time writes an output: a run holds a lock on ``OUT.parquet/.pneumo-batch.lock`` (released by the
kernel when the process ends, also on ``kill -9``), and a second run is refused. Every part records the settings
that decide its rows (the threshold in force, ``--tta``) in its Parquet metadata, and ``--resume`` refuses an
output written with other ones, so one output never mixes operating points. File names that are not UTF-8 are
written as ``predict`` writes them (:func:`pneumo.errors.visible`).

Rows carry every column of ``pneumo predict`` (the same values, errors included), then the extra columns of a
manifest, then ``model_name`` and ``model_sha256``. The engines differ only in who runs the work: ``local`` is the
decode-overlapped ONNX Runtime path of ``predict`` (:meth:`Predictor.predict_sources`); ``ray`` is in
:mod:`pneumo.batch.ray_engine`. Their common output format (schema, part writer) is :mod:`pneumo.batch.parts`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pneumo.batch.parts import (
    MODEL_COLUMNS,
    SETTINGS_KEY,
    BatchInputs,
    PartWriter,
    Progress,
    committed_parts,
    has_refer,
    predictions_table,
)
from pneumo.choices import ENGINES
from pneumo.errors import InputError, visible
from pneumo.inference import Prediction, Predictor, columns, open_model
from pneumo.inputs import expand_inputs
from pneumo.modelfile import ModelFile

MANIFEST_SUFFIXES = {".csv", ".parquet"}


LOCK_NAME = ".pneumo-batch.lock"  # hidden: Parquet readers skip names starting with a dot


class BatchError(InputError):
    """Bad inputs or an output folder that cannot be continued (or is being written by another run); the message
    says what to do. A usage error, as ``predict``'s are (the CLI exits 2)."""


@dataclass
class BatchResult:
    """What one run did; ``rows`` and ``errors`` count this run's rows, ``skipped`` the inputs already done."""

    output: Path
    rows: int = 0
    errors: int = 0
    skipped: int = 0
    parts: int = 0
    seconds: float = 0.0
    engine: str = "local"
    written: list[Path] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """e.g. ``5216 rows (3 errors) in 19.1 s, 273.1 images/s (local engine); 6 parts in out.parquet``."""
        line = (
            f"{self.rows} row{'s' if self.rows != 1 else ''} ({self.errors} error{'s' if self.errors != 1 else ''}) "
            f"in {self.seconds:.1f} s, {self.images_per_second:.1f} images/s ({self.engine} engine)"
        )
        if self.skipped:
            line += f"; {self.skipped} skipped (already in committed parts)"
        return line + f"; {self.parts} part{'s' if self.parts != 1 else ''} in {self.output}"


# ---------------------------------------------------------------------------------------------------- the inputs


def _read_manifest(path: Path) -> pa.Table:
    """A CSV (every column as text: a CSV has no types, and ids like ``00123`` must survive) or Parquet
    manifest with a ``path`` column."""
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            with open(path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            if dup := next((h for i, h in enumerate(header) if h in header[:i]), None):
                raise BatchError(f"{path}: the manifest has two columns named {dup!r}; rename one")
            if "" in (h.strip() for h in header):
                raise BatchError(f"{path}: the manifest has a column without a name; name it or remove it")
            opts = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False)
            table = pacsv.read_csv(path, convert_options=opts)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"{path}: not a readable manifest ({str(exc).splitlines()[0]})") from exc
    if "path" not in table.column_names:
        raise BatchError(f"{path}: a manifest needs a 'path' column (found {', '.join(table.column_names) or 'none'})")
    if not pa.types.is_string(table.schema.field("path").type) and not pa.types.is_large_string(
        table.schema.field("path").type
    ):
        raise BatchError(f"{path}: the 'path' column must hold text, not {table.schema.field('path').type}")
    table = table.set_column(table.column_names.index("path"), "path", table.column("path").cast(pa.string()))
    if table.column("path").null_count or "" in table.column("path").to_pylist():
        raise BatchError(f"{path}: the 'path' column has empty cells")
    return table


def collect_inputs(inputs: Sequence[str]) -> BatchInputs:
    """Folders (recursive), globs, files and manifests (``.csv`` / ``.parquet`` with a ``path`` column), in the
    order given. A path listed twice is predicted once, with its first listing's columns."""
    reserved = set(columns(True, True)) | set(MODEL_COLUMNS)
    segments: list[tuple[pa.Table, list[str]]] = []
    plain: list[str] = []

    def flush_plain() -> None:
        if not plain:
            return
        files, missing = expand_inputs(plain)
        if missing:
            raise BatchError(f"{visible(str(missing[0]))}: no such file, folder or matching glob")
        # The file to read keeps its bytes (os.fsdecode's surrogate escapes); the path written is predict's.
        sources = [str(f) for f in files]
        names = [visible(n) for n in sources]
        segments.append((pa.table({"path": pa.array(names, type=pa.string())}), sources))
        plain.clear()

    for item in inputs:
        p = Path(item)
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            flush_plain()
            table = _read_manifest(p)
            clash = sorted(set(table.column_names) & reserved - {"path"})
            if clash:
                raise BatchError(f"{p}: manifest column '{clash[0]}' clashes with an output column; rename it")
            sources = [s if Path(s).is_absolute() else str(p.parent / s) for s in table.column("path").to_pylist()]
            segments.append((table, sources))
        else:
            plain.append(item)
    flush_plain()
    if not segments:
        raise BatchError("no inputs given")
    table = pa.concat_tables([s[0] for s in segments], promote_options="permissive")
    sources = [s for seg in segments for s in seg[1]]
    first: dict[str, int] = {}
    for i, name in enumerate(table.column("path").to_pylist()):
        first.setdefault(name, i)
    if len(first) < len(sources):
        keep = sorted(first.values())
        table, sources = table.take(keep), [sources[i] for i in keep]
    if not sources:
        raise BatchError("no image files found in the given inputs")
    return BatchInputs(table=table.combine_chunks(), sources=sources)


# ---------------------------------------------------------------------------------------------------- the output


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def done_paths(output: Path, model_sha256: str, settings: dict | None = None) -> set[str]:
    """Inputs already in committed parts; refuses parts written by another model or, with ``settings``, with
    other settings (one output, one model, one operating point), and an output in which an input has two rows."""
    done: set[str] = set()
    for part in committed_parts(output):
        try:
            t = pq.read_table(part, columns=["path", "model_sha256", "threshold"])
            recorded = (pq.read_schema(part).metadata or {}).get(SETTINGS_KEY)
        except (pa.ArrowException, OSError) as exc:
            raise BatchError(f"{part}: unreadable part file ({str(exc).splitlines()[0]}); move it away") from exc
        shas = set(t.column("model_sha256").to_pylist())
        if shas - {model_sha256}:
            raise BatchError(
                f"{output}: its parts were written by another model (sha256 {sorted(shas)[0][:12]}...); "
                "resume with that model or write to a new --output"
            )
        if settings is not None:
            _check_settings(output, part, recorded, set(t.column("threshold").to_pylist()), settings)
        counts = Counter(t.column("path").to_pylist())
        if twice := sorted(done.intersection(counts) | {p for p, n in counts.items() if n > 1}):
            raise BatchError(
                f"{output}: {twice[0]} has two rows (two runs wrote into this output at once); write to a new --output"
            )
        done.update(counts)
    return done


def _check_settings(output: Path, part: Path, recorded: bytes | None, thresholds: set, settings: dict) -> None:
    """A part's settings against this run's: its recorded ones, or for a part written before they were recorded,
    the threshold of its rows."""
    theirs = json.loads(recorded) if recorded else {"threshold": next(iter(thresholds - {None}), None)}
    for key, value in settings.items():
        if key in theirs and theirs[key] is not None and theirs[key] != value:
            raise BatchError(
                f"{output}: its parts were written with {_setting(key, theirs[key])}, not {_setting(key, value)}; "
                "resume with the same settings or write to a new --output"
            )


def _setting(key: str, value) -> str:
    if key == "tta":
        return "--tta" if value else "no --tta"
    return f"--{key.replace('_', '-')} {value:g}" if isinstance(value, float) else f"--{key} {value}"


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold ``output``'s lock for the block; BatchError at once when another run holds it. The kernel releases an
    ``flock`` when its process ends, however it ends, so a killed run never leaves a stale lock."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no advisory lock; the settings and duplicate checks still hold
            pass
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise BatchError(
                f"{output}: another pneumo batch (pid {holder}) is writing to this output; wait for it to finish "
                "or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- the run


def run_local(
    predictor: Predictor,
    inputs: BatchInputs,
    todo: Sequence[int],
    writer: PartWriter,
    *,
    batch_size: int,
    mirror: bool,
    progress: Progress,
) -> None:
    """The ``predict`` path: decoding overlapped with ONNX Runtime in one process."""
    paths = inputs.paths
    stream = predictor.predict_sources(
        ((paths[i], inputs.sources[i]) for i in todo), batch_size=batch_size, mirror=mirror
    )
    chunk: list[Prediction] = []
    start = 0
    for pred in stream:
        chunk.append(pred)
        if len(chunk) == batch_size:
            writer.add(todo[start : start + len(chunk)], predictions_table(chunk, writer.subtypes, writer.refer))
            start += len(chunk)
            progress(len(chunk))
            chunk = []
    if chunk:
        writer.add(todo[start : start + len(chunk)], predictions_table(chunk, writer.subtypes, writer.refer))
        progress(len(chunk))


def run_batch(
    inputs: Sequence[str],
    output: str | Path,
    *,
    model: str | Path | ModelFile | None = None,
    engine: str = "local",
    address: str | None = None,
    batch_size: int = 64,
    part_size: int = 1024,
    resume: bool = False,
    threshold: float | None = None,
    mirror: bool = False,
    actors: int | None = None,
    on_start: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> BatchResult:
    """Predict every input into the Parquet folder ``output``; see the module docstring.

    ``on_start(n)`` is called with the number of inputs still to do, ``progress(k)`` after every ``k`` rows."""
    if engine not in ENGINES:
        raise BatchError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if batch_size < 1 or part_size < 1:
        raise BatchError("--batch-size and --part-size must be at least 1")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise BatchError(f"{output}: exists and is not a folder; the output is a folder of Parquet parts")
    if engine == "ray":
        try:
            import ray.data  # noqa: F401
        except ImportError as exc:
            raise BatchError("--engine ray needs Ray Data: pip install 'pneumo[distributed]'") from exc
    mf = model if isinstance(model, ModelFile) else open_model(model)
    predictor = Predictor(mf, threshold=threshold)
    sha = file_sha256(mf.path) if mf.path is not None else hashlib.sha256(mf.onnx or b"").hexdigest()
    batch_inputs = collect_inputs(inputs)
    with output_lock(output):
        return _run_locked(predictor, mf, sha, batch_inputs, output, engine=engine, address=address,
                           batch_size=batch_size, part_size=part_size, resume=resume, threshold=threshold,
                           mirror=mirror, actors=actors, on_start=on_start, progress=progress)  # fmt: skip


def _run_locked(
    predictor: Predictor,
    mf: ModelFile,
    sha: str,
    batch_inputs: BatchInputs,
    output: Path,
    *,
    engine: str,
    address: str | None,
    batch_size: int,
    part_size: int,
    resume: bool,
    threshold: float | None,
    mirror: bool,
    actors: int | None,
    on_start: Callable[[int], None] | None,
    progress: Progress | None,
) -> BatchResult:
    """The run, with the output's lock held."""
    subtypes = mf.meta.has_subtypes
    settings = {"threshold": float(predictor.threshold), "tta": bool(mirror)}
    if committed_parts(output) and not resume:
        raise BatchError(f"{output}: already holds results; pass --resume to continue it or choose a new --output")
    done = done_paths(output, sha, settings) if resume else set()
    todo = [i for i, p in enumerate(batch_inputs.paths) if p not in done]
    writer = PartWriter(output, batch_inputs, subtypes, mf.meta.name, sha, part_size, refer=has_refer(predictor),
                        settings=settings)  # fmt: skip
    if on_start:
        on_start(len(todo))
    tick = progress or (lambda _k: None)
    t0 = time.perf_counter()
    if todo:
        output.mkdir(parents=True, exist_ok=True)
        if engine == "local":
            run_local(predictor, batch_inputs, todo, writer, batch_size=batch_size, mirror=mirror, progress=tick)
        else:
            from pneumo.batch.ray_engine import run_ray

            run_ray(
                predictor,
                batch_inputs,
                todo,
                writer,
                batch_size=batch_size,
                mirror=mirror,
                progress=tick,
                address=address,
                actors=actors,
                threshold=threshold,
            )
        writer.close()
    return BatchResult(
        output=output,
        rows=writer.rows,
        errors=writer.errors,
        skipped=len(batch_inputs.sources) - len(todo),
        parts=len(writer.written),
        seconds=time.perf_counter() - t0,
        engine=engine,
        written=list(writer.written),
    )


def read_results(output: str | Path) -> pa.Table:
    """Every committed row of an output folder as one table."""
    parts = committed_parts(Path(output))
    if not parts:
        raise BatchError(f"{output}: no committed part files")
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")
