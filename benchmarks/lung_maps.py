"""Do the heat maps land on the lungs, and does the model need the lungs? Measured with lung masks.

For each set of images (a labelled folder with a lung mask per image, e.g. the 16 originals; or the ``val`` rows
of a split CSV, with the atlas placed as the training copies are framed), and for each heat-map method (the
occlusion map, the old class activation map, and with ``--occlusion`` the occlusion alternatives of
:data:`VARIANTS`, side by side):

- mass in lungs: the share of each pneumonia image's positive heat that lies on its lungs, averaged (a uniform
  map scores the lungs' share of the frame, printed beside it);
- hottest in lungs: the share of pneumonia images whose hottest point lies on the lungs;
- visible: the share of pneumonia maps whose peak reaches the overlay's transparent floor (what a user sees at all);
- seconds per map (wall clock, this machine, as loaded as it is: say so when quoting it; ``--threads 1`` for the
  single-thread cost);
- for the occlusion maps, the peak heat (1 = the top of the absolute colour scale) of pneumonia and of NORMAL
  images: a confident normal should show little. The old map is scaled to each image's maximum, so its peak is
  always 1.

Maps are measured on the frame the network sees (the model's input size; the masks squashed to it, which keeps
area shares), on the positive evidence before the colour scale clips it. The map is never cut to the lungs.

Then the lung checks of the shift suite (:func:`pneumo.evaluation.robustness.lung_checks`): AUC clean, with the lungs
hidden (low is right) and with only the lungs shown (near clean is right).

    python benchmarks/lung_maps.py --folder ../shared/data/chest_xray_fullres/val
    python benchmarks/lung_maps.py --data ../shared/data/chest_xray --split /work/runs/blocks.csv --limit 150
    python benchmarks/lung_maps.py --folder ../shared/data/chest_xray_fullres/val --no-auc --methods cam \
        --occlusion occ16,occ32,ms16,ms8,occ16s8,occ16-blur,ms16-blur,fact8,fact8-blur
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np

from pneumo.evaluation.robustness import lung_checks
from pneumo.evaluation.run import binary_targets
from pneumo.explain.cam import ALPHA_FLOOR, CAM, METHODS, OCCLUSION, HeatMapper
from pneumo.explain.occlusion import (
    BLUR,
    FLOOR,
    FULL_SCALE,
    MEAN,
    NORMAL,
    OcclusionGrid,
    evidence,
    filler,
    normal_reference,
    synthetic_reference,
)
from pneumo.imaging import load_image, resize_map
from pneumo.inference import Predictor
from pneumo.inputs import select_records
from pneumo.lungs import LungMaskError, LungSource, hottest_inside, mass_inside
from pneumo.preprocess import to_input
from pneumo.probability import pneumonia_log_odds

# The occlusion alternatives measured against the default (issue 30): name -> (grids, filler) for the library's
# sliding windows, or ("factorial", filler). 16/32: window side in px at 128 px (1 or 2 cells of 8 x 8); s8: stride
# 8 px (a 16 x 16 grid); ms: both window sizes, each pixel the mean of the two.
VARIANTS = {
    "occ16": ((OcclusionGrid(8, 1),), MEAN),
    "occ32": ((OcclusionGrid(8, 2),), MEAN),
    "ms16": ((OcclusionGrid(8, 1), OcclusionGrid(8, 2)), MEAN),
    "ms8": ((OcclusionGrid(16, 2), OcclusionGrid(16, 4)), MEAN),
    "occ16s8": ((OcclusionGrid(16, 2),), MEAN),
    "occ16-blur": ((OcclusionGrid(8, 1),), BLUR),
    "ms16-blur": ((OcclusionGrid(8, 1), OcclusionGrid(8, 2)), BLUR),
    "fact8": ("factorial", MEAN),
    "fact8-blur": ("factorial", BLUR),
    # the normal filler from the split's NORMAL training rows (--data, --split): their mean image, or 4 of them
    "occ16-normal": ((OcclusionGrid(8, 1),), (NORMAL, 0)),
    "occ16-normal4": ((OcclusionGrid(8, 1),), (NORMAL, 4)),
    # four films drawn from a Gaussian model of those rows (mean + top 32 or 128 principal components): no one's film
    "occ16-synth32": ((OcclusionGrid(8, 1),), (NORMAL, "synth", 32)),
    "occ16-synth128": ((OcclusionGrid(8, 1),), (NORMAL, "synth", 128)),
}
_REFERENCE_ROWS: list = []  # the split's NORMAL training rows, set by main() when --data and --split are given


@cache
def _normal_rows(size: int) -> np.ndarray:
    """The split's NORMAL training rows decoded at ``size`` as the training cache holds them (uint8), once."""
    return np.stack([np.rint(load_image(p, size, name=str(p)) * 255).astype(np.uint8) for p in _REFERENCE_ROWS])


def split_reference(predictor: Predictor, samples: int | str, components: int = 0) -> np.ndarray:
    """The normal filler for ``predictor`` from the split's NORMAL training rows (what finalisation would write):
    ``samples`` of them (0: their mean), or with ``samples`` "synth" four films drawn from their top ``components``."""
    if not _REFERENCE_ROWS:
        raise SystemExit("the occ16-normal variants need --data and --split (their NORMAL training rows)")
    rows, pre = _normal_rows(predictor.size), predictor.meta.preprocessing
    if samples == "synth":
        return synthetic_reference(rows, pre, components=components)
    return normal_reference(rows, pre, samples=samples)


def hadamard(n: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order ``n`` (a power of 2): +-1, orthogonal rows."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def factorial_evidence(run, x, temperature, bias, cells: int = 8, fill: str = MEAN, floor: float = FLOOR):
    """Occlusion as a two-level factorial design: the ``cells**2`` cells hidden by the rows of a Hadamard matrix
    and their complements (fold-over: 2 x 64 runs at 8 x 8, half the cells hidden in each); a cell's evidence is
    the mean calibrated log-odds (floored as the default map's) with it shown minus with it hidden. For a model
    whose log-odds add up over cells this is exactly each cell's drop; redundant evidence, which a single hidden
    cell cannot move, shows because half the others are hidden too. An alternative measured, not shipped."""
    vis = hadamard(cells * cells) > 0
    vis = np.concatenate([vis, ~vis])
    x = np.asarray(x, dtype=np.float32)
    grid = OcclusionGrid(cells)
    ey, ex = grid.edges(x.shape[-2]), grid.edges(x.shape[-1])
    hidden = ~vis.reshape(-1, cells, cells)  # runs x cells x cells
    pix = np.zeros((len(vis), x.shape[-2], x.shape[-1]), dtype=bool)
    for a in range(cells):
        for b in range(cells):
            pix[:, ey[a] : ey[a + 1], ex[b] : ex[b + 1]] = hidden[:, a, b, None, None]
    patches = filler(x, fill)
    batch = np.where(pix[:, None], patches[None], x[None]).astype(np.float32)
    z = np.maximum(pneumonia_log_odds(np.asarray(run(batch))) / temperature + bias, np.log(floor / (1 - floor)))
    shown = vis.astype(np.float64)
    eff = (shown.T @ z) / shown.sum(0) - ((1 - shown).T @ z) / (1 - shown).sum(0)
    return eff.reshape(cells, cells).astype(np.float32)


def variant_evidence(predictor: Predictor, name: str):
    """image (at the input size) -> occlusion evidence of the variant ``name`` (:data:`VARIANTS`), ONNX only."""
    grids, fill = VARIANTS[name]
    meta, session = predictor.meta, predictor.session
    reference = None
    if isinstance(fill, tuple):
        fill, reference = fill[0], split_reference(predictor, *fill[1:])

    def run(batch):
        return session.run(["logits"], {"image": batch})[0]

    def evidence_of(image):
        x = to_input([image], meta.preprocessing)[0]
        if grids == "factorial":
            return factorial_evidence(run, x, meta.temperature, meta.calibration_bias, fill=fill)
        return evidence(run, x, meta.temperature, meta.calibration_bias, list(grids), fill=fill, reference=reference)

    return evidence_of


def measure_maps(predictor: Predictor, paths, y, lungs: LungSource, methods, limit: int | None, grid=None, seed=0):
    """Per method: mass in lungs, hottest in lungs (pneumonia images), s/map, and peak heat per class."""
    size = predictor.size
    idx = np.arange(len(paths))
    if limit is not None:  # a seeded sample of each class keeps a large validation set quick
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:limit] for c in (1, 0)])
    images = {i: load_image(paths[i], size, name=str(paths[i])) for i in idx}
    masks = {i: lungs.mask(paths[i], (size, size)) for i in idx}
    out = {"n_pneumonia": int((y[idx] == 1).sum()), "n_normal": int((y[idx] == 0).sum()),
           "lung_share": float(np.mean([m.mean() for m in masks.values()]))}  # fmt: skip
    for method in methods:
        if method in VARIANTS:
            evidence_of = variant_evidence(predictor, method)
        elif method == OCCLUSION:
            evidence_of = HeatMapper(predictor, method, grid).evidence
        else:
            mapper = HeatMapper(predictor, method, grid)
        mass, hot, peaks, seconds = [], [], {0: [], 1: []}, []
        for i in idx:
            t = time.perf_counter()
            if method == OCCLUSION or method in VARIANTS:
                ev = evidence_of(images[i])
                seconds.append(time.perf_counter() - t)
                positive = np.maximum(resize_map(ev, (size, size)), 0) / FULL_SCALE
            else:
                positive = mapper.heatmap(images[i])
                seconds.append(time.perf_counter() - t)
            peaks[int(y[i])].append(float(positive.max()))
            if y[i] == 1:
                mass.append(mass_inside(positive, masks[i]))
                hot.append(hottest_inside(positive, masks[i]))
        out[method] = {
            "mass_in_lungs": float(np.mean([m for m in mass if m is not None])) if any(m is not None for m in mass)
            else float("nan"),
            "hottest_in_lungs": float(np.mean([bool(h) for h in hot])),  # an empty map counts as a miss
            "empty_maps": sum(m is None for m in mass),
            "visible": float(np.mean(np.array(peaks[1]) >= ALPHA_FLOOR)) if peaks[1] else float("nan"),
            "seconds_per_map": float(np.median(seconds)),
            "peak_pneumonia": np.percentile(peaks[1], [50, 90]).tolist() if peaks[1] else [],
            "peak_normal": np.percentile(peaks[0], [50, 90]).tolist() if peaks[0] else [],
            "normal_peak_over_half": float(np.mean(np.array(peaks[0]) >= 0.5)) if peaks[0] else float("nan"),
        }  # fmt: skip
    return out


def report(title: str, predictor, paths, y, sources: list[LungSource], methods, limit, auc: bool, grid=None) -> None:
    print(f"\n## {title}: {len(paths)} images ({int(y.sum())} pneumonia)")
    for lungs in sources:
        m = measure_maps(predictor, paths, y, lungs, methods, limit, grid)
        print(f"\nlungs: {lungs.describe()} (mask for the maps: ungrown); lungs are {m['lung_share']:.3f} of the frame;"
              f" maps on {m['n_pneumonia']} pneumonia and {m['n_normal']} normal images")  # fmt: skip
        print("| method | mass in lungs | hottest in lungs | empty maps | visible | s/map | "
              "peak heat pneumonia p50/p90 | peak heat normal p50/p90 | normals with peak >= 0.5 |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for method in methods:
            r = m[method]
            pp, pn = (("/".join(f"{v:.2f}" for v in r[k]) or "—") for k in ("peak_pneumonia", "peak_normal"))
            name = method if method in VARIANTS else HeatMapper(predictor, method).method
            print(
                f"| {name} | {r['mass_in_lungs']:.3f} | {r['hottest_in_lungs']:.3f} | {r['empty_maps']} | "
                f"{r['visible']:.3f} | {r['seconds_per_map']:.3f} | {pp} | {pn} | {r['normal_peak_over_half']:.3f} |"
            )
        if auc:
            checks = lung_checks(predictor, paths, y, lungs)
            print(f"AUC clean {checks['clean']['roc_auc']:.3f}; lungs hidden {checks['lungs hidden']['roc_auc']:.3f}"
                  f" (low is right); only lungs {checks['only the lungs']['roc_auc']:.3f} (near clean is right); "
                  f"region: {checks['lungs']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file [default: the bundled one]")
    ap.add_argument("--folder", type=Path, action="append", default=[], help="labelled folder with per-image masks")
    ap.add_argument("--data", type=Path, help="dataset root the split CSV refers to")
    ap.add_argument("--split", type=Path, help="split CSV: its val rows, with the atlas")
    ap.add_argument("--atlas", type=Path, default=None, help="atlas_224.png [default: ../shared/data/lung_masks]")
    ap.add_argument("--masks", type=Path, default=None, help="per-image masks folder [default: ../shared/data/...]")
    ap.add_argument("--limit", type=int, default=None, help="maps on at most this many images per class")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--occlusion", default="", help=f"occlusion alternatives to add, of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads [default: the predictor's]")
    ap.add_argument("--no-auc", dest="auc", action="store_false", help="skip the lung checks' AUC")
    ap.add_argument("--cells", type=int, default=OcclusionGrid().cells, help="occlusion grid per side")
    ap.add_argument("--span", type=int, default=OcclusionGrid().span, help="occluding window side, in cells")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m] + [v for v in args.occlusion.split(",") if v]
    unknown = [m for m in methods if m not in METHODS and m not in VARIANTS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}")
    if not args.folder and not args.split:
        ap.error("give --folder and/or --data with --split")
    predictor = Predictor.load(args.model, threads=args.threads)
    grid = OcclusionGrid(args.cells, args.span)
    print(f"model: {predictor.meta.name} ({predictor.meta.arch}, {predictor.size} px); occlusion: full scale "
          f"{FULL_SCALE:g} calibrated log-odds, {grid.cells} x {grid.cells} cells, window {grid.span} cells; "
          f"methods: {', '.join(methods)} ({CAM}: the old map)")  # fmt: skip
    try:
        atlas = LungSource.from_atlas(args.atlas)
    except LungMaskError as exc:
        print(f"no atlas: {exc}", file=sys.stderr)
        atlas = None
    if args.split:
        train_rows, _ = select_records(args.data, "train", args.split)
        _REFERENCE_ROWS[:] = [r.path for r in train_rows if r.label == "NORMAL"]
    for folder in args.folder:
        recs, _ = select_records(folder)
        paths, y = [r.path for r in recs], binary_targets(recs, folder)
        sources = [LungSource.from_masks(paths, args.masks), *([atlas] if atlas else [])]
        report(f"{folder.parent.name}/{folder.name}", predictor, paths, y, sources, methods, args.limit, args.auc, grid)
    if args.split:
        if atlas is None:
            print("the split's rows need the atlas; skipped", file=sys.stderr)
            return 1
        recs, described = select_records(args.data, "val", args.split)
        paths, y = [r.path for r in recs], binary_targets(recs, args.data)
        report(described, predictor, paths, y, [atlas], methods, args.limit, args.auc, grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
