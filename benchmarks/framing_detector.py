"""Would a classical lung-field crop give a canonical framing? How often it finds both lung fields, by class.

The crop of issue #10 ("find the thorax ... crop/pad to it") needs a box that is found as reliably on pneumonia as
on normal images, or the crop itself becomes a class-dependent framing, the very shortcut it should remove.
Lung fields are taken as the classical way: dark regions (equalised, smoothed, below 0.35) that do not touch the
image border, opened, the two largest above 1 % of the frame; found = two fields whose box covers >= 30 %.

    python benchmarks/framing_detector.py shared/data/chest_xray/train --split-csv split.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pneumo.imaging import load_image
from pneumo.inputs import read_split_csv
from pneumo.preprocess import equalize


def lung_fields(img: np.ndarray, dark: float = 0.35) -> tuple[int, float]:
    """Number of lung-field candidates kept (0-2) and the share of the frame their bounding box covers."""
    h, w = img.shape
    lab, n = ndi.label(ndi.binary_opening(ndi.gaussian_filter(equalize(img), 1.5) < dark, iterations=2))
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
    sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    keep = sorted(((s, i + 1) for i, s in enumerate(sizes) if i + 1 not in border and s > 0.01 * h * w), reverse=True)
    if not keep:
        return 0, 0.0
    ys, xs = np.nonzero(np.isin(lab, [k[1] for k in keep[:2]]))
    return min(len(keep), 2), float((np.ptp(ys) + 1) * (np.ptp(xs) + 1) / (h * w))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--split-csv", type=Path, required=True)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    found: dict[str, list[bool]] = {}
    for row in read_split_csv(args.split_csv):
        if row.split != "val":
            continue
        n, area = lung_fields(load_image(args.data_dir / row.path, args.size))
        found.setdefault(row.label, []).append(n == 2 and area >= 0.3)
    for label, ok in sorted(found.items()):
        print(f"{label:10s} {len(ok):4d} validation images: both lung fields found in {np.mean(ok):.1%}")


if __name__ == "__main__":
    main()
