"""Split a scanned dataset: by patient, or by acquisition blocks of Kermany's patient numbering.

The scan, the Kermany name rule and the split CSV's rows live in :mod:`pneumo.inputs` (re-exported here for the
callers that import them from this module). Decoding lives in :mod:`pneumo.imaging`; the training cache in
:mod:`pneumo.training.cache`; the dataset summary (which reads image headers) in :mod:`pneumo.inspect_report`.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pneumo.choices import SPLIT_METHODS
from pneumo.errors import ConfigError, DataError
from pneumo.inputs import (
    ImageRecord,
    SplitRow,
    parse_kermany_name,
    scan_dataset,
    write_split_csv,
)


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


@dataclass
class SplitData:
    """Decoded images of one split with their targets, as training and finalising read them."""

    images: np.ndarray  # N x H x W uint8 (a memory map)
    targets: np.ndarray  # N class indices for the task
    paths: list[str]
    subtypes: list[str]
    blocks: list[str] = field(default_factory=list)  # held-out acquisition block per image (a block split's val)


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
