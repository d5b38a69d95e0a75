"""How much of the gap at a new period does ``pneumo adapt`` close? Measured on block validation.

    python benchmarks/block_adapt.py --data ../shared/data/chest_xray --split-csv blocks.csv [--model M]
                                     [--out /tmp/block_adapt] [--json FILE]

The "new site" is the held-out acquisition blocks of a block split (``pneumo data split DATA --by blocks``): periods
the model did not train on. Within each block the earlier half of its patients (by their sequence number) is the
site's labelled sample, on which ``pneumo adapt`` fits the site file; the later half are the site's future studies.
On the future half: sensitivity, specificity, accuracy, ECE and the worst block's specificity / sensitivity, the
base model as shipped against the site file. Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pneumo.adapt.site import adapt_site
from pneumo.data import patient_sequence
from pneumo.evaluation.metrics import binary_metrics, block_figures
from pneumo.inference import Predictor
from pneumo.inputs import select_records

sys.path.insert(0, str(Path(__file__).resolve().parent))
from site_adapt import link_folder


def earlier_and_later(recs, block_of: dict[str, str]) -> tuple[list, list]:
    """Per block, the patients with the lower half of the sequence numbers, and the rest."""
    by_block: dict[str, set[int]] = defaultdict(set)
    for r in recs:
        by_block[block_of[r.rel]].add(patient_sequence(r.patient_id)[1])
    cut = {b: np.median(sorted(n)) for b, n in by_block.items()}
    early = [r for r in recs if patient_sequence(r.patient_id)[1] <= cut[block_of[r.rel]]]
    late = [r for r in recs if patient_sequence(r.patient_id)[1] > cut[block_of[r.rel]]]
    return early, late


def measure(model: Path | None, recs, block_of: dict[str, str]) -> dict:
    predictor = Predictor.load(model)
    prob = np.array([p.probability for p in predictor.predict_sources((str(r.path), r.path) for r in recs)])
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    m = binary_metrics(y, prob, predictor.threshold, n_bins=10)
    b = block_figures(y, prob, [block_of[r.rel] for r in recs], predictor.threshold)
    return {
        "threshold": predictor.threshold,
        **{k: m[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "ece")},
        "worst_block_specificity": b["worst_specificity"]["value"],
        "worst_block_sensitivity": b["worst_sensitivity"]["value"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split-csv", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("/tmp/block_adapt"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    recs, _ = select_records(args.data, "val", args.split_csv)
    block_of = {r.rel: r.block for r in recs if r.block and r.block != "random"}  # as select_records read them
    recs = [r for r in recs if r.rel in block_of]
    sample, future = earlier_and_later(recs, block_of)
    args.out.mkdir(parents=True, exist_ok=True)
    site_folder = link_folder(sample, args.out / f"sample_{int(time.time())}")
    site_file = args.out / "site.pneumo"
    adapt_site(site_folder, site_file, model=args.model, n_boot=200)
    rows = {
        "base model": measure(args.model, future, block_of),
        "after pneumo adapt": measure(site_file, future, block_of),
    }
    print(f"site sample: {len(sample)} images (earlier half of each block); future: {len(future)} images\n")
    cols = list(rows["base model"])
    print("| on the later half of each block | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
