"""Lung checks for comparing training trials: ROC AUC clean, with the atlas lungs hidden, and with only them shown.

    python benchmarks/lung_trials.py MODEL [MODEL ...] --data ../shared/data/chest_xray --split-csv blocks.csv

The held-out protocol of the lung-reading measurement, with the atlas standing in for per-image masks: the atlas
(framed as the 224-px training copies are) above 0.3, grown by 4 % of the side, filled with the image's mean grey
("lungs hidden") or everything else filled ("only the lungs"), on the validation rows of the split: the suite's own
lung checks (:func:`pneumo.evaluation.robustness.lung_checks`) with a grown region. ``pneumo robustness`` reports them
with the
atlas not grown; the grown region hides more of the lungs' edges. Prints one line per model; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.evaluation.robustness import lung_checks
from pneumo.evaluation.run import binary_targets
from pneumo.inference import Predictor
from pneumo.inputs import select_records
from pneumo.lungs import ATLAS_LEVEL, LungSource


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split-csv", type=Path, required=True)
    ap.add_argument("--atlas", type=Path, default=None, help="atlas_224.png [default: ../shared/data/lung_masks]")
    ap.add_argument("--level", type=float, default=ATLAS_LEVEL)
    ap.add_argument("--grow", type=float, default=0.04, help="growth, share of the side")
    args = ap.parse_args()

    recs, described = select_records(args.data, "val", args.split_csv)
    y = binary_targets(recs, args.data)
    lungs = LungSource.from_atlas(args.atlas, level=args.level, growth=args.grow)
    print(f"{described}: {len(y)} images; lungs: {lungs.describe()}")
    for model in args.models:
        res = lung_checks(Predictor.load(model), [r.path for r in recs], y, lungs)
        aucs = {name: res[name]["roc_auc"] for name in ("clean", "lungs hidden", "only the lungs")}
        print(f"{model}: " + ", ".join(f"AUC {k} {v:.3f}" for k, v in aucs.items()), flush=True)


if __name__ == "__main__":
    main()
