"""Lung checks for comparing training trials: ROC AUC clean, with the atlas lungs hidden, and with only them shown.

    python benchmarks/lung_trials.py MODEL [MODEL ...] --data ../shared/data/chest_xray --split-csv blocks.csv

The held-out protocol of the lung-reading measurement, with the atlas standing in for per-image masks: the atlas
(``../shared/data/lung_masks/atlas_224.png``, framed as the 224-px training copies are) above 0.3, grown by 4 % of
the side, filled with the image's mean grey ("lungs hidden") or everything else filled ("only the lungs"), on the
validation rows of the split, then resized to each model's input size. ``pneumo robustness`` reports the same two
conditions with the atlas not grown (:mod:`pneumo.lungs`); the grown region hides more of the lungs' edges.
Prints one line per model; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pneumo.evaluation_run import binary_targets, select_records
from pneumo.imaging import load_image
from pneumo.inference import Predictor
from pneumo.metrics import binary_metrics

REPO = Path(__file__).resolve().parents[1]


def _resized(a: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(np.round(a * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split-csv", type=Path, required=True)
    ap.add_argument("--atlas", type=Path, default=REPO.parent / "shared" / "data" / "lung_masks" / "atlas_224.png")
    ap.add_argument("--level", type=float, default=0.3)
    ap.add_argument("--grow", type=float, default=0.04, help="growth, share of the side")
    args = ap.parse_args()

    recs, described = select_records(args.data, "val", args.split_csv)
    y = binary_targets(recs, args.data)
    atlas = np.asarray(Image.open(args.atlas).convert("L"), dtype=np.float32) / 255 > args.level
    lungs = ndimage.binary_dilation(atlas, iterations=max(1, round(args.grow * atlas.shape[0])))
    images = [load_image(r.path) for r in recs]
    masks = [
        np.asarray(Image.fromarray(lungs.astype(np.uint8) * 255).resize(a.shape[::-1], Image.Resampling.NEAREST)) > 0
        for a in images
    ]
    print(f"{described}: {len(y)} images; atlas > {args.level} grown by {args.grow:.0%} of the side")
    for model in args.models:
        predictor = Predictor.load(model)
        aucs = {}
        for name in ("clean", "lungs hidden", "only lungs"):
            xs = []
            for a, m in zip(images, masks, strict=True):
                if name == "lungs hidden":
                    a = np.where(m, a.mean(), a)
                elif name == "only lungs":
                    a = np.where(m, a, a.mean())
                xs.append(_resized(a, predictor.size))
            prob = np.array([p.probability for p in predictor.predict_arrays(xs, [str(i) for i in range(len(xs))])])
            aucs[name] = binary_metrics(y, prob, predictor.threshold)["roc_auc"]
        print(f"{model}: " + ", ".join(f"AUC {k} {v:.3f}" for k, v in aucs.items()), flush=True)


if __name__ == "__main__":
    main()
