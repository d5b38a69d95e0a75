"""How the AUC falls as more of the frame is hidden: the lung-box control and the border condition of the shift
suite at several margins, to tell a border shortcut from the lungs' periphery.

    python benchmarks/occlusion_margins.py [--model M] [--data ../shared/data] [--split-csv split.csv]

The suite's own conditions use a 15 % margin (``pneumo.evaluation.shifts.BORDER``); here the central box hidden leaves
10, 5 and 2 % of each side, and the border hidden is 5 and 10 % deep. Validation rows of the split (made with seed 0
when none is given). Prints the AUC per condition; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumo.data import make_split
from pneumo.evaluation.robustness import shifted_validation
from pneumo.evaluation.run import binary_targets
from pneumo.evaluation.shifts import BORDER, hide_box
from pneumo.inference import Predictor
from pneumo.inputs import select_records

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--split-csv", type=Path, default=None)
    args = ap.parse_args()
    train = args.data / "chest_xray" / "train"
    split_csv = args.split_csv or Path("/tmp/pneumo_occlusion_split.csv")
    if args.split_csv is None:
        make_split(train, split_csv, val_fraction=0.1, seed=0)
    recs, _ = select_records(train, "val", split_csv)
    predictor = Predictor.load(args.model)
    conditions = {f"lung box hidden, margin {m:.2f}": hide_box(m, inside=True) for m in (BORDER, 0.10, 0.05, 0.02)}
    conditions |= {f"border hidden, {m:.2f} deep": hide_box(m, inside=False) for m in (0.05, 0.10, BORDER)}
    res = shifted_validation(predictor, [r.path for r in recs], binary_targets(recs, train), conditions=conditions)
    print(f"model {predictor.meta.name}; {len(recs)} validation images; clean AUC {res['clean']['roc_auc']:.4f}")
    for name in conditions:
        print(f"{name:32s} AUC {res[name]['roc_auc']:.4f}")


if __name__ == "__main__":
    main()
