"""Does the bacterial / viral split drift with the order of acquisition? Subtype recall by patient-number period.

Kermany file names number the pneumonia patients (``person1234_bacteria_5678``) in the order they were collected;
the 16 original-size images of the official val split are patients 1946-1954, later than every training image.
This runs the validation rows of a split (and any ``--extra`` folder) through the user's path (``Predictor``, the
model file's test-time views) and reports, per period of patient numbers, how often a bacterial image gets
p_bacterial > p_viral and a viral image the reverse.

    python benchmarks/subtype_drift.py shared/data/chest_xray/train --split-csv split.csv \
        --extra shared/data/chest_xray_fullres/val [--model runs/x] [--edges 500 1000 1500]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from pneumo.data import parse_kermany_name, patient_number
from pneumo.evaluation.metrics import says_viral
from pneumo.inference import Predictor
from pneumo.inputs import read_split_csv


def recall_by_period(names, subtypes, p_bacterial, p_viral, edges) -> list[tuple[str, int, int, float, float]]:
    """(period, n bacterial, n viral, bacterial recall, viral recall) per period of patient numbers."""
    num = np.array([-1 if (k := patient_number(n)) is None else k for n in names])
    sub = np.array(subtypes)
    says_bacterial = ~says_viral(p_bacterial, p_viral)
    bounds = [0, *edges, np.inf]
    rows = []
    for lo, hi in itertools.pairwise(bounds):
        inside = (num >= lo) & (num < hi)
        bac, vir = inside & (sub == "bacteria"), inside & (sub == "virus")
        if bac.any() or vir.any():
            label = f"{int(lo)}-{'' if hi == np.inf else int(hi) - 1}"
            rec_b = float(says_bacterial[bac].mean()) if bac.any() else float("nan")
            rec_v = float((~says_bacterial[vir]).mean()) if vir.any() else float("nan")
            rows.append((label, int(bac.sum()), int(vir.sum()), rec_b, rec_v))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--split-csv", type=Path, required=True)
    ap.add_argument("--model", default=None, help="model file or run directory [default: the bundled model]")
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="labelled folders reported on their own")
    ap.add_argument("--edges", type=int, nargs="*", default=[500, 1000, 1500], help="period boundaries")
    args = ap.parse_args()
    predictor = Predictor.load(args.model)
    if predictor.meta.arch_kwargs.get("subtype_head") is not True and predictor.meta.task != "subtype":
        raise SystemExit(f"{predictor.meta.name}: the model has no subtype output")
    sets = {"validation": [args.data_dir / r.path for r in read_split_csv(args.split_csv) if r.split == "val"]}
    sets |= {str(folder): sorted(folder.rglob("person*_*.*")) for folder in args.extra}
    print(f"model {predictor.meta.name}; recall = share with the right one of p_bacterial / p_viral larger\n")
    print("| images | patients | bacterial | viral | bacterial recall | viral recall |")
    print("|---|---|---:|---:|---:|---:|")
    for name, paths in sets.items():
        kept = [p for p in paths if parse_kermany_name(p)[1] in ("bacteria", "virus")]
        preds = [p for p in predictor.predict_sources((str(p), p) for p in kept) if p.error is None]
        rows = recall_by_period(
            [p.path for p in preds],
            [parse_kermany_name(p.path)[1] for p in preds],
            [p.p_bacterial for p in preds],
            [p.p_viral for p in preds],
            args.edges,
        )
        for period, nb, nv, rb, rv in rows:
            print(f"| {name} | {period} | {nb} | {nv} | {rb:.3f} | {rv:.3f} |".replace("nan", "—"))


if __name__ == "__main__":
    main()
