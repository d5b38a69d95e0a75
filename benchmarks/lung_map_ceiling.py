"""How much of a heat map's mass a grid can put on the lungs at best.

An ideal occlusion map of a model that reads only the lungs gives each cell evidence in proportion to its share of
lung. Drawn as the shipped maps are (bilinear between cell centres, at the network's input size) and measured as
``benchmarks/lung_maps.py`` measures (mass in the lungs, per image's own mask, ungrown), it shows the ceiling that
cells straddling the lung edge leave: the issue's target of 0.60 against what a grid can reach at all.

    python benchmarks/lung_map_ceiling.py [--masks ../shared/data/lung_masks/val/PNEUMONIA] [--size 128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pneumo.imaging import resize_map
from pneumo.lungs import DEFAULT_MASKS, load_mask, mass_inside


def ideal_mass(mask: np.ndarray, cells: int) -> float:
    """Mass in ``mask`` of the ideal map on a ``cells`` x ``cells`` grid: each cell's evidence its share of lung."""
    size = mask.shape[0]
    e = np.round(np.linspace(0, size, cells + 1)).astype(int)
    share = np.array([[mask[e[a] : e[a + 1], e[b] : e[b + 1]].mean() for b in range(cells)] for a in range(cells)])
    return mass_inside(np.maximum(resize_map(share.astype(np.float32), mask.shape), 0), mask)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=Path, default=DEFAULT_MASKS / "val" / "PNEUMONIA")
    ap.add_argument("--size", type=int, default=128, help="the network's input size")
    args = ap.parse_args(argv)
    paths = sorted(args.masks.glob("*.png"))
    if not paths:
        print(f"{args.masks}: no masks", file=sys.stderr)
        return 1
    masks = [load_mask(p, (args.size, args.size)) for p in paths]
    share = np.mean([m.mean() for m in masks])
    print(f"{len(masks)} masks of {args.masks}, at {args.size} px; the lungs are {share:.3f} of the frame")
    print("| cells per side | cell size | ideal mass in the lungs |")
    print("|---:|---:|---:|")
    for cells in (4, 8, 16, 32):
        mass = np.mean([ideal_mass(m, cells) for m in masks])
        print(f"| {cells} | {args.size / cells:.0f} px | {mass:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
