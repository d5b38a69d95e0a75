"""Scan a dataset folder, read patient ids and pneumonia subtypes from Kermany file names, split by patient.

Nothing here decodes an image: the scan only lists and names files, so it takes milliseconds even on the full
dataset. Decoding lives in :mod:`pneumo.imaging`; the training cache in :mod:`pneumo.training.cache`; the dataset
summary (which reads image headers) in :mod:`pneumo.inspect_report`.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo import atomic
from pneumo.errors import ConfigError, DataError
from pneumo.imaging import IMAGE_SUFFIXES
from pneumo.labels import NORMAL

SPLIT_COLUMNS = ("path", "split", "label", "patient_id", "subtype")
# Written by a block split (the held-out acquisition block of each validation image); optional when reading.
BLOCK_COLUMN = "block"

# Folder names recognised as a split level above the class folders; "valid"/"validation" are common spellings.
_SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

# person1234_bacteria_5678 / person56_virus_112; one real file has an extra counter (person447_virus_921_1).
_PERSON_RE = re.compile(r"^(person\d+)_(bacteria|virus)_\d+(?:_\d+)*$", re.IGNORECASE)
# IM-0115-0001, NORMAL2-IM-0427-0001, and multi-view files of one study such as IM-0429-0001-0002.
_IM_RE = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+(?:-\d+)*$", re.IGNORECASE)


def parse_kermany_name(filename: str | os.PathLike[str]) -> tuple[str, str]:
    """Return ``(patient_id, subtype)`` read from a Kermany-style file name.

    ``person1234_bacteria_5678.jpeg`` -> ``("person1234_bacteria", "bacteria")``; ``IM-0115-0001.jpeg`` ->
    ``("IM-0115", "none")``; ``NORMAL2-IM-0427-0001.jpeg`` -> ``("NORMAL2-IM-0427", "none")``. Any other name is
    its own patient: ``(stem, "unknown")``. Each prefix numbers its own series of children: ``IM-`` and
    ``NORMAL2-IM-`` are different series, and so are bacterial and viral patients (``person100_bacteria`` and
    ``person100_virus`` are two children), so the prefix and the subtype stay part of the id.
    """
    name = Path(filename).name
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    if m := _PERSON_RE.match(stem):
        subtype = m.group(2).lower()
        return f"{m.group(1)}_{subtype}", subtype
    if m := _IM_RE.match(stem):
        return m.group(1), "none"
    return stem, "unknown"


def patient_number(filename: str | os.PathLike[str]) -> int | None:
    """1234 for ``person1234_bacteria_5678.jpeg``: Kermany numbers its pneumonia patients in the order they were
    collected. None for a name that numbers no pneumonia patient."""
    m = re.fullmatch(r"person(\d+)_(?:bacteria|virus)", parse_kermany_name(filename)[0], re.IGNORECASE)
    return int(m.group(1)) if m else None


_SEQUENCE_RE = re.compile(r"^(person)(\d+)_(bacteria|virus)$|^((?:NORMAL\d*-)?IM)-(\d+)$", re.IGNORECASE)


def patient_sequence(patient_id: str) -> tuple[str, int] | None:
    """The numbering sequence a patient id belongs to and its number in it, or None for an id outside them.

    ``person100_bacteria`` -> ``("person_bacteria", 100)``, ``person100_virus`` -> ``("person_virus", 100)``,
    ``IM-0115`` -> ``("IM", 115)``, ``NORMAL2-IM-0427`` -> ``("NORMAL2-IM", 427)``. Each sequence numbers its
    children in the order they were collected, so neighbouring numbers are neighbouring acquisition periods.
    """
    m = _SEQUENCE_RE.match(patient_id)
    if not m:
        return None
    if m.group(1):
        return f"person_{m.group(3).lower()}", int(m.group(2))
    return m.group(4).upper(), int(m.group(5))


def record_subtype(label: str, parsed_subtype: str) -> str:
    """The subtype of an image given its class: NORMAL is "none"; other classes only trust bacteria/virus."""
    if label == NORMAL:
        return "none"
    return parsed_subtype if parsed_subtype in ("bacteria", "virus") else "unknown"


@dataclass(frozen=True)
class ImageRecord:
    """One image file found by :func:`scan_dataset`. ``rel`` is the POSIX path relative to the dataset root."""

    path: Path
    rel: str
    split: str | None
    label: str
    class_index: int
    patient_id: str
    subtype: str


@dataclass
class Dataset:
    """The result of a scan: sorted records, sorted class names, and folders that could not be listed."""

    root: Path
    classes: list[str]
    records: list[ImageRecord]
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def splits(self) -> list[str | None]:
        """Split names present, in first-seen (sorted) order; ``[None]`` when there is no split level."""
        return list(dict.fromkeys(r.split for r in self.records)) or [None]

    def select(self, split: str | None) -> list[ImageRecord]:
        """Records of one split (``None`` selects the records of a layout without a split level)."""
        return [r for r in self.records if r.split == split]

    def training_records(self) -> list[ImageRecord]:
        """What a validation split should be carved from: the ``train`` split if there is one, else everything."""
        train = self.select("train")
        return train if train else list(self.records)

    def __len__(self) -> int:
        return len(self.records)


def _is_image_name(name: str) -> bool:
    if name.startswith("."):  # .DS_Store and friends have no suffix but are never images
        return False
    suffix = Path(name).suffix.lower()
    return suffix == "" or suffix in IMAGE_SUFFIXES


def _subdirs(path: Path, errors: list[tuple[str, str]]) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        errors.append((str(path), f"cannot list folder: {exc.strerror or exc}"))
        return []


def _files_below(folder: Path, errors: list[tuple[str, str]]) -> list[Path]:
    found: list[Path] = []

    def onerror(exc: OSError) -> None:
        errors.append((str(exc.filename), f"cannot list folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if _is_image_name(f))
    return found


def scan_dataset(root: str | os.PathLike[str]) -> Dataset:
    """List the images of ``root`` without opening them.

    Layouts: ``root/{train,val,test}/CLASS/...`` or ``root/CLASS/...``. Class names are folder names upper-cased,
    so ``normal`` and ``Normal`` in different splits are one class ``NORMAL``; class indices follow sorted names.
    Files are kept when their suffix is in ``IMAGE_SUFFIXES`` (any case) or when they have none; folders below a
    class folder are searched too. Records are sorted by split, class and path, so two scans give the same list.
    Folders that cannot be listed go to ``Dataset.errors``; unreadable files are found later, by whoever reads them.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    errors: list[tuple[str, str]] = []
    top = _subdirs(root, errors)
    if top and any(d.name.lower() in _SPLIT_DIRS for d in top):
        # Other folders beside train/val/test are not classes of a split layout; they are ignored.
        sources = [
            (_SPLIT_DIRS[d.name.lower()], c) for d in top if d.name.lower() in _SPLIT_DIRS for c in _subdirs(d, errors)
        ]
    else:
        sources = [(None, c) for c in top]

    found: list[tuple[str | None, str, Path]] = []
    for split, class_dir in sources:
        label = class_dir.name.upper()
        found.extend((split, label, p) for p in _files_below(class_dir, errors))

    classes = sorted({label for _, label, _ in found})
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for split, label, path in found:
        patient, parsed = parse_kermany_name(path.name)
        rel = path.relative_to(root).as_posix()
        records.append(ImageRecord(path, rel, split, label, index[label], patient, record_subtype(label, parsed)))
    records.sort(key=lambda r: (r.split or "", r.label, r.rel))
    return Dataset(root=root, classes=classes, records=records, errors=errors)


def split_dataset(records: Sequence[ImageRecord], val_fraction: float = 0.1, seed: int = 0) -> list[str]:
    """Assign each record to ``"train"`` or ``"val"``, grouped by patient and stratified by class and subtype.

    Returns one entry per record, in the order given. All images of a patient land on the same side. Strata are
    (class, subtype) pairs counted in images; a patient with images in several strata (Kermany has people with
    both bacterial and viral images) counts towards each. Patients are visited in a seeded random order and one
    goes to val when that brings the per-stratum val fractions closer to ``val_fraction``, then single patients
    move either way while that still helps: a deterministic greedy fill that lands within a few images of the
    target in every stratum, which fold-based splitters (whose val share is 1/k) cannot promise.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    by_patient: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for r in records:
        by_patient[r.patient_id][(r.label, r.subtype)] += 1
    totals: Counter[tuple[str, str]] = Counter((r.label, r.subtype) for r in records)
    target = {s: val_fraction * n for s, n in totals.items()}
    in_val: Counter[tuple[str, str]] = Counter()

    def gain(counts: Counter[tuple[str, str]], sign: int) -> float:
        # Relative error, so a small stratum (viral images) weighs as much as a large one (bacterial).
        return sum(
            ((in_val[s] + sign * c - target[s]) ** 2 - (in_val[s] - target[s]) ** 2) / totals[s] ** 2
            for s, c in counts.items()
        )

    order = sorted(by_patient)
    random.Random(seed).shuffle(order)
    val_patients: set[str] = set()
    for patient in order:
        if gain(by_patient[patient], +1) < 0:
            val_patients.add(patient)
            in_val.update(by_patient[patient])
    # The fill cannot undo an early choice; patients spanning two strata can leave one stratum a few images over.
    # Moving single patients either way while it helps closes that gap; it converges in a couple of passes.
    for _ in range(10):
        moved = False
        for patient in order:
            counts, sign = by_patient[patient], -1 if patient in val_patients else +1
            if gain(counts, sign) < -1e-12:
                val_patients.symmetric_difference_update({patient})
                in_val.update({s: sign * c for s, c in counts.items()})
                moved = True
        if not moved:
            break
    return ["val" if r.patient_id in val_patients else "train" for r in records]


@dataclass(frozen=True)
class BlockSplit:
    """A split by acquisition blocks: per record its side and, for validation records, the block it belongs to."""

    splits: list[str]
    blocks: list[str]  # "" on the training side; "random" for validation images of names outside every sequence
    unsequenced: int  # images whose names number no sequence, split at random by patient instead


def _block_layout(n: int, held: int, n_blocks: int) -> list[tuple[int, int]]:
    """``n_blocks`` runs of consecutive positions in ``range(n)`` holding ``held`` positions in all: one at each
    end and the rest evenly inside, with equal training gaps between them. Half-open ``(start, stop)`` pairs."""
    b = max(1, min(n_blocks, held))
    sizes = [held // b + (i < held % b) for i in range(b)]
    if b == 1:  # one block: the latest period
        return [(n - held, n)]
    free = n - held
    gaps = [free // (b - 1) + (i < free % (b - 1)) for i in range(b - 1)]
    runs, pos = [], 0
    for i, size in enumerate(sizes):
        runs.append((pos, pos + size))
        pos += size + (gaps[i] if i < b - 1 else 0)
    return runs


def block_split(
    records: Sequence[ImageRecord], val_fraction: float = 0.1, n_blocks: int = 3, seed: int = 0
) -> BlockSplit:
    """Hold out whole acquisition periods: contiguous blocks of patients of each numbering sequence, per class.

    Kermany numbers the children of each sequence (``IM-``, ``NORMAL2-IM-``, ``person…_bacteria``,
    ``person…_virus``: :func:`patient_sequence`) in the order they were collected, and acquisition batches differ
    (exposure, framing, positioning). A random split puts every batch on both sides and so cannot see what a new
    period does to the model; this one holds out ``val_fraction`` of each sequence's patients as ``n_blocks``
    blocks of consecutive numbers, one at each end and the rest evenly inside. The rule depends only on the names
    (never on results); ``seed`` only orders the random fallback for names outside every sequence.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if n_blocks < 1:
        raise ConfigError(f"blocks must be at least 1, got {n_blocks}")
    sequences: dict[tuple[str, str], dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    loose: list[int] = []
    for i, r in enumerate(records):
        seq = patient_sequence(r.patient_id)
        if seq is None:
            loose.append(i)
        else:
            sequences[(r.label, seq[0])][seq[1]].add(r.patient_id)
    block_of: dict[str, str] = {}
    for (label, name), by_number in sorted(sequences.items()):
        numbers = sorted(by_number)
        held = round(val_fraction * len(numbers))
        if held == 0 or held == len(numbers):
            continue  # too few patients to hold a block out and keep some for training
        for start, stop in _block_layout(len(numbers), held, n_blocks):
            block = f"{label} {name} {numbers[start]}-{numbers[stop - 1]}"
            for k in numbers[start:stop]:
                block_of.update(dict.fromkeys(by_number[k], block))
    splits = ["val" if r.patient_id in block_of else "train" for r in records]
    blocks = [block_of.get(r.patient_id, "") for r in records]
    if loose:
        fallback = split_dataset([records[i] for i in loose], val_fraction=val_fraction, seed=seed)
        for i, side in zip(loose, fallback, strict=True):
            splits[i], blocks[i] = side, ("random" if side == "val" else "")
    return BlockSplit(splits, blocks, len(loose))


@dataclass(frozen=True)
class SplitRow:
    """One line of a split CSV; ``path`` is relative to the dataset root; ``block`` is the held-out acquisition
    block of a validation row of a block split ("" otherwise)."""

    path: str
    split: str
    label: str
    patient_id: str
    subtype: str
    block: str = ""


@dataclass
class SplitData:
    """Decoded images of one split with their targets, as training and finalising read them."""

    images: np.ndarray  # N x H x W uint8 (a memory map)
    targets: np.ndarray  # N class indices for the task
    paths: list[str]
    subtypes: list[str]
    blocks: list[str] = field(default_factory=list)  # held-out acquisition block per image (a block split's val)


def write_split_csv(
    path: str | os.PathLike[str],
    records: Sequence[ImageRecord],
    splits: Sequence[str],
    blocks: Sequence[str] | None = None,
) -> Path:
    """Write ``path,split,label,patient_id,subtype`` rows (paths relative to the dataset root, POSIX style), and a
    ``block`` column when ``blocks`` is given."""
    if len(records) != len(splits) or (blocks is not None and len(blocks) != len(records)):
        raise ValueError(f"{len(records)} records but {len(splits)} split assignments")
    path = Path(path)
    columns = (*SPLIT_COLUMNS, BLOCK_COLUMN) if blocks is not None else SPLIT_COLUMNS
    extra = blocks if blocks is not None else [None] * len(records)
    with atomic.atomic_open(path, "w", newline="", encoding="utf-8") as f:
        # "\n" line ends so the same split gives the same bytes on every platform.
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(
            (r.rel, s, r.label, r.patient_id, r.subtype, *([b] if b is not None else []))
            for r, s, b in zip(records, splits, extra, strict=True)
        )
    return path


def read_split_csv(path: str | os.PathLike[str]) -> list[SplitRow]:
    """Read a CSV written by :func:`write_split_csv`; a missing column raises ``DataError`` (a ValueError) naming
    the file."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(SPLIT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: not a split file, missing column(s) {', '.join(sorted(missing))}")
        return [SplitRow(*(row[c] for c in SPLIT_COLUMNS), row.get(BLOCK_COLUMN) or "") for row in reader]


SPLIT_METHODS = ("blocks", "patient")


def make_split(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    val_fraction: float = 0.1,
    seed: int = 0,
    by: str = "blocks",
    n_blocks: int = 3,
) -> tuple[list[SplitRow], int]:
    """Scan ``root``, split its training images and write the CSV to ``out`` (CLI ``data split``).

    ``by="blocks"`` holds out acquisition blocks (:func:`block_split`); ``by="patient"`` is the random
    patient-grouped split (:func:`split_dataset`). With a split level, only ``root/train`` is split (an existing
    test set stays untouched); the CSV paths are relative to ``root``. Returns the rows and the number of images
    that a block split had to split at random (names outside every numbering sequence).
    """
    if by not in SPLIT_METHODS:
        raise ConfigError(f"split method must be one of {', '.join(SPLIT_METHODS)}, got {by!r}")
    records = scan_dataset(root).training_records()
    if not records:
        raise DataError(f"{root}: no images found (expected CLASS/ folders, optionally under train/val/test)")
    if by == "blocks":
        result = block_split(records, val_fraction=val_fraction, n_blocks=n_blocks, seed=seed)
        splits, blocks, unsequenced = result.splits, result.blocks, result.unsequenced
        write_split_csv(out, records, splits, blocks)
    else:
        splits, blocks, unsequenced = split_dataset(records, val_fraction=val_fraction, seed=seed), None, 0
        write_split_csv(out, records, splits)
    rows = [
        SplitRow(r.rel, s, r.label, r.patient_id, r.subtype, b or "")
        for r, s, b in zip(records, splits, blocks or [""] * len(records), strict=True)
    ]
    return rows, unsequenced
