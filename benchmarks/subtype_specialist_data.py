"""Build the data of the bv160 trial: bacterial against viral pneumonia as a two-class folder, same patient split.

Trial bv160 (docs/experiments.md) trains a network of its own for the bacterial / viral split, with `pneumo train`'s
binary task: the bacterial images of a Kermany-style folder become ``OUT/NORMAL`` and the viral ones
``OUT/PNEUMONIA`` (symbolic links, nothing is copied), and each keeps the train / val assignment it has in an
existing split CSV, so that the trial is validated on exactly the pneumonia images of that split. Normal images and
pneumonia of unknown subtype are left out.

    python benchmarks/subtype_specialist_data.py shared/data/chest_xray/train --split-csv split.csv \\
        --out bv --split-out bv_split.csv
    pneumo train bv --out runs/bv160 --config bv160.yaml --split bv_split.csv

where ``bv160.yaml`` is ``configs/default.yaml`` without ``subtype_head`` and with ``image_size: 160``. The
probability the model gives is then the probability of *viral* pneumonia among pneumonia images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.data import scan_dataset, write_split_csv
from pneumo.inputs import read_split_csv
from pneumo.labels import NORMAL, PNEUMONIA

FOLDER = {"bacteria": NORMAL, "virus": PNEUMONIA}  # the class folder each subtype becomes


def build(data_dir: Path, split_csv: Path, out: Path, split_out: Path) -> dict[tuple[str, str], int]:
    """Link the images and write the split; return the number of images per (split, subtype)."""
    split_of: dict[str, str] = {}
    counts: dict[tuple[str, str], int] = {}
    for row in read_split_csv(split_csv):
        if row.subtype not in FOLDER:
            continue
        link = out / FOLDER[row.subtype] / Path(row.path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to((data_dir / row.path).resolve())
        split_of[link.relative_to(out).as_posix()] = row.split
        counts[row.split, row.subtype] = counts.get((row.split, row.subtype), 0) + 1
    records = scan_dataset(out).records
    missing = [r.rel for r in records if r.rel not in split_of]
    if missing:
        raise SystemExit(f"{out}: {len(missing)} images not in {split_csv} (e.g. {missing[0]}); use an empty folder")
    write_split_csv(split_out, records, [split_of[r.rel] for r in records])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="the dataset root the split CSV refers to")
    ap.add_argument("--split-csv", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for the NORMAL/ and PNEUMONIA/ links")
    ap.add_argument("--split-out", type=Path, required=True, help="split CSV to write for --out")
    args = ap.parse_args()
    counts = build(args.data_dir, args.split_csv, args.out, args.split_out)
    for (split, subtype), n in sorted(counts.items()):
        print(f"{split} {subtype} -> {FOLDER[subtype]}: {n}")
    print(f"wrote {args.split_out}")


if __name__ == "__main__":
    main()
