"""Model choices measured on block validation: test-time views and the threshold rule, for one model file.

    python benchmarks/block_choices.py MODEL --data ../shared/data/chest_xray --split-csv blocks.csv
        [--views 1.0 --views 0.8,0.9,1.0] [--json out.json]

For each set of test-time content scales (the model file's own calibration and threshold kept) and for each
threshold rule the model file records (its `validation.operating_point.rules`), on the validation rows of the split:
accuracy, ROC AUC, sensitivity, specificity, ECE (10 bins), and the worst held-out block's specificity and
sensitivity (`pneumo.evaluation.metrics.block_figures`). Made with `pneumo data split DATA --by blocks`, the validation
rows are whole acquisition periods the model did not train on. Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumo.evaluation.metrics import binary_metrics, block_figures
from pneumo.evaluation.run import binary_targets
from pneumo.imaging import load_image
from pneumo.inference import Predictor, open_model
from pneumo.inputs import select_records


def figures(y: np.ndarray, prob: np.ndarray, blocks: list[str], threshold: float) -> dict:
    m = binary_metrics(y, prob, threshold, n_bins=10)
    b = block_figures(y, prob, blocks, threshold) if any(blocks) else {}
    return {
        "threshold": threshold,
        **{k: m[k] for k in ("accuracy", "roc_auc", "sensitivity", "specificity", "ece")},
        "worst_block_specificity": b.get("worst_specificity", {}).get("value", float("nan")),
        "worst_block_sensitivity": b.get("worst_sensitivity", {}).get("value", float("nan")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split-csv", type=Path, required=True)
    ap.add_argument("--views", action="append", help="comma-separated content scales; repeatable")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    recs, described = select_records(args.data, "val", args.split_csv)
    y = binary_targets(recs, args.data)
    blocks = [r.block for r in recs]  # select_records read each row's block from the split CSV
    model = open_model(args.model)
    size = model.meta.preprocessing.image_size
    images = [load_image(r.path, size) for r in recs]
    names = [str(r.path) for r in recs]
    rows: dict[str, dict] = {}
    for views in args.views or ["1.0", "0.8,0.9,1.0"]:
        scales = [float(s) for s in views.split(",")]
        pre = model.meta.preprocessing.model_copy(update={"content_scales": [] if scales == [1.0] else scales})
        variant = model.model_copy(update={"meta": model.meta.model_copy(update={"preprocessing": pre})})
        predictor = Predictor(variant)
        prob = np.array([p.probability for p in predictor.predict_arrays(images, names)])
        rows[f"views {views}, threshold in force"] = figures(y, prob, blocks, predictor.threshold)
        if scales == [1.0]:
            recorded = model.meta.validation.operating_point
            for rule, op in ((recorded.rules if recorded else None) or {}).items():
                rows[f"views {views}, {rule} rule"] = figures(y, prob, blocks, float(op.threshold))
    print(f"{args.model.name}: {described} ({len(y)} images)\n")
    cols = list(next(iter(rows.values())))
    print("| variant | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"measured_on": described, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
