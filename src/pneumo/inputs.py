"""Which files are inputs: one rule for image names and folder walks, the dataset scan, split records.

The rule (:func:`is_image_name`, :func:`files_below`) decides what ``predict``, ``batch``, ``export --int8``,
``data inspect``/``split``, training and evaluation read from a folder: names with an image suffix (any case) or
none (DICOM often has none); never a hidden name, and never below a hidden folder (``.git``, ``.Trash``,
``.ipynb_checkpoints`` hold copies and leftovers, not inputs). Nothing here decodes an image: a scan only lists and
names files, so it takes milliseconds even on the full dataset. Splitting lives in :mod:`pneumo.data`, decoding in
:mod:`pneumo.imaging`.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pneumo import atomic
from pneumo.errors import DataError
from pneumo.imaging import IMAGE_SUFFIXES
from pneumo.labels import NORMAL

_GLOB_CHARS = set("*?[")

# ---------------------------------------------------------------------------------------------------- the rule


def is_image_name(name: str) -> bool:
    """Whether a file called ``name`` found in a folder is an input: an image suffix or none, and not hidden
    (``.DS_Store`` and friends have no suffix but are never images)."""
    if name.startswith("."):
        return False
    suffix = Path(name).suffix.lower()
    return suffix == "" or suffix in IMAGE_SUFFIXES


def _entries(folder: str, errors: list[tuple[str, str]] | None) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as exc:
        if errors is not None:
            errors.append((str(exc.filename or folder), f"cannot list folder: {exc.strerror or exc}"))
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_input_file(entry: os.DirEntry) -> bool:
    # A link that leads nowhere (dangling, or a loop) is kept, so that it gets a row saying so instead of
    # vanishing; a FIFO or a device is not a file anyone can predict (reading a FIFO would wait forever).
    try:
        if entry.is_file():
            return True
    except OSError:  # a link loop: stat gives ELOOP
        pass
    return entry.is_symlink() and not os.path.exists(entry.path)


def files_below(folder: str | os.PathLike[str], errors: list[tuple[str, str]] | None = None) -> list[Path]:
    """The input files below ``folder``, recursively, sorted.

    Hidden entries are skipped, files and folders alike. A linked folder inside is not entered (the folder given
    may itself be a link): a link back up would loop, and one to elsewhere would reach files outside ``folder``.
    Folders that cannot be listed are appended to ``errors`` as ``(folder, reason)``."""
    found: list[Path] = []
    stack = [os.fspath(folder)]
    while stack:
        for entry in _entries(stack.pop(), errors):
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                if not entry.is_symlink():
                    stack.append(entry.path)
            elif is_image_name(entry.name) and _is_input_file(entry):
                found.append(Path(entry.path))
    return sorted(found)


def unique_files(files: Sequence[Path]) -> list[Path]:
    """Each file once, by the folder it really is in: a glob or folder walk through a link loop (``dir/loop -> dir``)
    reaches one file by many paths (``dir/x.png``, ``dir/loop/x.png``, ``dir/loop/loop/x.png``...). The shortest
    path stands for the file, at the place of its first occurrence. The file's own link is not followed, so a broken
    or looping link still gets its row (and the loader's reason)."""
    keys: list[tuple[str, str]] = []
    best: dict[tuple[str, str], Path] = {}
    for f in files:
        key = (os.path.realpath(f.parent), f.name)
        keys.append(key)
        if key not in best or len(f.parts) < len(best[key].parts):
            best[key] = f
    return [best[k] for k in dict.fromkeys(keys)]


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders recursively (:func:`files_below`), globs expanded; returns (files, inputs that
    matched nothing). A file named explicitly is kept whatever its name: the loader decides."""
    files: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(files_below(p))
        elif p.exists() or p.is_symlink():
            files.append(p)
        elif _GLOB_CHARS & set(item):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True))
            found = [m for m in matched if m.is_file() or m.is_symlink()]
            files.extend(found)
            if not found:
                missing.append(item)
        else:
            missing.append(item)
    return unique_files(files), missing


# ---------------------------------------------------------------------------------------------------- the scan

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


def record_subtype(label: str, parsed_subtype: str) -> str:
    """The subtype of an image given its class: NORMAL is "none"; other classes only trust bacteria/virus."""
    if label == NORMAL:
        return "none"
    return parsed_subtype if parsed_subtype in ("bacteria", "virus") else "unknown"


@dataclass(frozen=True)
class ImageRecord:
    """One image file found by :func:`scan_dataset`. ``rel`` is the POSIX path relative to the dataset root;
    ``block`` is the held-out acquisition block a split CSV gives it (:func:`select_records`), "" otherwise."""

    path: Path
    rel: str
    split: str | None
    label: str
    class_index: int
    patient_id: str
    subtype: str
    block: str = ""


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


def _subdirs(path: Path, errors: list[tuple[str, str]]) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if _is_dir(e) and not e.name.startswith("."))
    except OSError as exc:
        errors.append((str(path), f"cannot list folder: {exc.strerror or exc}"))
        return []


def scan_dataset(root: str | os.PathLike[str]) -> Dataset:
    """List the images of ``root`` without opening them.

    Layouts: ``root/{train,val,test}/CLASS/...`` or ``root/CLASS/...``. Class names are folder names upper-cased,
    so ``normal`` and ``Normal`` in different splits are one class ``NORMAL``; class indices follow sorted names.
    The files of a class are those :func:`files_below` finds in its folder. Records are sorted by split, class and
    path, so two scans give the same list. Folders that cannot be listed go to ``Dataset.errors``; unreadable
    files are found later, by whoever reads them.
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
        found.extend((split, label, p) for p in files_below(class_dir, errors))

    classes = sorted({label for _, label, _ in found})
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for split, label, path in found:
        patient, parsed = parse_kermany_name(path.name)
        rel = path.relative_to(root).as_posix()
        records.append(ImageRecord(path, rel, split, label, index[label], patient, record_subtype(label, parsed)))
    records.sort(key=lambda r: (r.split or "", r.label, r.rel))
    return Dataset(root=root, classes=classes, records=records, errors=errors)


# ---------------------------------------------------------------------------------------------------- split records

SPLIT_COLUMNS = ("path", "split", "label", "patient_id", "subtype")
# Written by a block split (the held-out acquisition block of each validation image); optional when reading.
BLOCK_COLUMN = "block"


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


def select_records(
    data_dir: str | os.PathLike[str], split: str | None = None, split_csv: str | os.PathLike[str] | None = None
) -> tuple[list[ImageRecord], str]:
    """Which labelled images to evaluate, and a description of the choice.

    A split CSV selects its ``split`` rows (``val`` by default), read once: each record carries its row's
    ``block``. A root with a split level defaults to ``test``; otherwise every image. The description names the
    folder and the CSV, not their paths: it travels into reports that get shared.
    """
    ds = scan_dataset(data_dir)
    if split_csv is not None:
        side = split or "val"
        block_of = {row.path: row.block for row in read_split_csv(split_csv) if row.split == side}
        recs = [replace(r, block=block_of[r.rel]) for r in ds.training_records() if r.rel in block_of]
        if not recs:
            raise DataError(
                f"{split_csv}: none of its {side} rows is under {data_dir} (use the folder the split was made on)"
            )
        return recs, f"{side} rows of {Path(split_csv).name}"
    levels = [s for s in ds.splits if s is not None]
    if levels:
        chosen = split or ("test" if "test" in levels else levels[0])
        if chosen not in levels:
            raise DataError(f"{data_dir}: no '{chosen}' split (found {', '.join(levels)})")
        return ds.select(chosen), f"split '{chosen}' of {Path(data_dir).name}"
    if split:
        raise DataError(f"{data_dir}: has no train/val/test level, so --split {split} cannot apply")
    return list(ds.records), f"all images of {Path(data_dir).name}"
