"""The held-out check of issue 21 on any labelled folder: the figures a held-out test set is judged on, with targets.

    python benchmarks/heldout.py chest_xray/test [--model M] [--ood FOLDER] [--plots DIR] [--json out.json]
    python benchmarks/heldout.py chest_xray/test --lung-masks test_masks/ [--map-limit N]   # and issue 30's
    python benchmarks/heldout.py ../shared/data/chest_xray/train --split-csv split.csv     # its val rows

On the folder (NORMAL/ and PNEUMONIA/; Kermany file names give the bacterial / viral subtype), at the model's own
threshold: accuracy, ROC AUC, sensitivity, specificity, ECE (10 bins); under zoom 0.8 / 1.0 / 1.25 (content scaled,
margin or crop) AUC and specificity and their spread; with the outer 15 % border, the burnt-in marks or the central
lung box hidden (flat grey) the AUC; the share the domain guard flags, on the folder and on images it should flag
(``--ood``, default the adult chest CRs that pydicom-data ships); bacterial vs viral accuracy among the pneumonia
images whose file names tell it. Reliability diagrams per condition with ``--plots``. With ``--lung-masks`` (a folder
of each image's lung mask, ``CLASS/STEM.png``, 255 = lung) also issue 30's: the AUC with the lungs hidden (each mask
grown by 4 % of the side, flat grey) and with only the lungs shown, and over the pneumonia images the occlusion heat
map's mass inside the lungs and the share of hottest points inside them (``benchmarks/lung_maps.py``'s measure, the
masks ungrown; ``--map-limit`` maps at most that many images per class, seeded). Every figure is printed with its
target and whether it is met; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pneumo.evaluation.robustness import CONTROLS, PERTURBATIONS, lung_checks, shifted_validation
from pneumo.evaluation.run import binary_targets
from pneumo.inference import Predictor
from pneumo.inputs import select_records
from pneumo.lungs import LungSource

ZOOMS = ("zoom 0.8 (margin)", "zoom 1.25 (cropped)")
OCCLUSION = ("border masked 15%", "markers masked")
CONDITIONS = {**{k: PERTURBATIONS[k] for k in (*ZOOMS, *OCCLUSION)}, **CONTROLS}


def ece_from_bins(rel: dict) -> float:
    """ECE from reliability bins: sum over bins of count / N * |mean probability - observed rate|."""
    count = np.array(rel["count"], dtype=float)
    conf = np.array([np.nan if v is None else v for v in rel["confidence"]], dtype=float)
    acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], dtype=float)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(conf[filled] - acc[filled])) / count.sum())


def figures(results: dict, ood_flagged: float | None) -> list[tuple[str, float, str, bool]]:
    """(figure, value, target, met) rows of issue 21's table."""
    clean = results["clean"]
    zoom = {"0.8": results[ZOOMS[0]], "1.0": clean, "1.25": results[ZOOMS[1]]}
    aucs = [r["roc_auc"] for r in zoom.values()]
    specs = [r["specificity"] for r in zoom.values()]
    rows = [
        ("accuracy", clean["accuracy"], ">= 0.95", clean["accuracy"] >= 0.95),
        ("ROC AUC", clean["roc_auc"], ">= 0.992", clean["roc_auc"] >= 0.992),
        ("sensitivity", clean["sensitivity"], ">= 0.97", clean["sensitivity"] >= 0.97),
        ("specificity", clean["specificity"], ">= 0.90", clean["specificity"] >= 0.90),
        ("ECE (10 bins)", ece_from_bins(clean["reliability"]), "<= 0.04", ece_from_bins(clean["reliability"]) <= 0.04),
    ]
    for z, r in zoom.items():
        rows.append((f"zoom {z}: AUC", r["roc_auc"], "spread <= 0.02", max(aucs) - min(aucs) <= 0.02))
    for z, r in zoom.items():
        ok = r["specificity"] >= 0.85 and max(specs) - min(specs) <= 0.10
        rows.append((f"zoom {z}: specificity", r["specificity"], ">= 0.85, spread <= 0.10", ok))
    border = results["border masked 15%"]["roc_auc"]
    rows.append(("AUC, border masked 15%", border, "within 0.01 of clean", clean["roc_auc"] - border <= 0.01))
    marks = results["markers masked"]["roc_auc"]
    rows.append(("AUC, markers masked", marks, "within 0.01 of clean", clean["roc_auc"] - marks <= 0.01))
    lungs = results["lung box masked"]["roc_auc"]
    rows.append(("AUC, lung box masked (control)", lungs, "<= 0.70", lungs <= 0.70))
    flagged = clean["flagged_out_of_domain"]
    rows.append(("domain guard: this folder flagged", flagged, "<= 0.03", flagged <= 0.03))
    if ood_flagged is not None:
        rows.append(("domain guard: --ood images flagged", ood_flagged, ">= 0.95", ood_flagged >= 0.95))
    if "bacterial_vs_viral" in clean:
        bv = clean["bacterial_vs_viral"]
        rows.append(("bacterial vs viral (file names)", bv, ">= 0.80 (validation)", bv >= 0.80))
    return rows


def lung_figures(predictor: Predictor, paths, y, masks: Path, map_limit: int | None) -> list:
    """(figure, value, target, met) rows of issue 30's table, with each image's own lung mask under ``masks``."""
    from lung_maps import OCCLUSION, measure_maps  # this folder's map measure

    lungs = LungSource.from_masks(paths, masks)
    checks = lung_checks(predictor, paths, y, lungs)
    maps = measure_maps(predictor, paths, y, lungs, [OCCLUSION], map_limit)[OCCLUSION]
    hidden, only = checks["lungs hidden"]["roc_auc"], checks["only the lungs"]["roc_auc"]
    return [
        ("AUC, lungs hidden (own masks grown 4 %)", hidden, "<= 0.80", hidden <= 0.80),
        ("AUC, only the lungs shown", only, ">= 0.97", only >= 0.97),
        ("heat-map mass in the lungs (pneumonia)", maps["mass_in_lungs"], ">= 0.60", maps["mass_in_lungs"] >= 0.60),
        ("hottest point in the lungs (pneumonia)", maps["hottest_in_lungs"], ">= 0.90",
         maps["hottest_in_lungs"] >= 0.90),
    ]  # fmt: skip


def ood_rate(predictor: Predictor, folder: Path | None) -> tuple[float, int] | None:
    if folder is None:
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from ood import adult_chest_radiographs

            samples = list(adult_chest_radiographs())
        except ImportError:  # pydicom-data is a dev extra
            return None
    else:
        samples = [(str(p), p) for p in sorted(folder.rglob("*")) if p.is_file()]
    preds = [p for p in predictor.predict_sources(samples) if p.error is None]
    return (float(np.mean([p.in_domain is False for p in preds])), len(preds)) if preds else None


def plot_reliability_per_condition(results: dict, out: Path) -> Path:
    """One reliability panel per condition, from the bins the suite records."""
    from matplotlib.figure import Figure

    names = ["clean", *CONDITIONS]
    fig = Figure(figsize=(3.2 * len(names), 3.4))
    for ax, name in zip(fig.subplots(1, len(names)), names, strict=True):
        rel = results[name]["reliability"]
        conf = [np.nan if v is None else v for v in rel["confidence"]]
        acc = [np.nan if v is None else v for v in rel["accuracy"]]
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.plot(conf, acc, "o-", ms=4)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted p")
        ax.set_title(f"{name}\nECE {ece_from_bins(rel):.3f}", fontsize=8)
    fig.axes[0].set_ylabel("observed pneumonia rate")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reliability_per_condition.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a labelled folder (NORMAL/, PNEUMONIA/) or, with --split-csv, its root")
    ap.add_argument("--split-csv", type=Path, default=None, help="take the val rows of this split of FOLDER")
    ap.add_argument("--model", default=None)
    ap.add_argument("--ood", type=Path, default=None, help="images the guard should flag [adult chest CRs]")
    ap.add_argument("--plots", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--lung-masks", type=Path, default=None, help="each image's lung mask: issue 30's figures too")
    ap.add_argument("--map-limit", type=int, default=None, help="heat maps on at most this many images per class")
    args = ap.parse_args()

    recs, _ = select_records(args.folder, "val", args.split_csv) if args.split_csv else select_records(args.folder)
    predictor = Predictor.load(args.model)
    y = binary_targets(recs, args.folder)
    results = shifted_validation(
        predictor, [r.path for r in recs], y, conditions=CONDITIONS, subtypes=[r.subtype for r in recs]
    )
    ood = ood_rate(predictor, args.ood)
    rows = figures(results, None if ood is None else ood[0])
    if args.lung_masks is not None:
        rows += lung_figures(predictor, [r.path for r in recs], y, args.lung_masks, args.map_limit)
    where = f"{args.folder} ({'val rows of ' + args.split_csv.name if args.split_csv else 'whole folder'})"
    print(f"model {predictor.meta.name}, threshold {predictor.threshold:.4f}; {len(recs)} images of {where}")
    if ood is not None:
        print(f"--ood: {ood[1]} images ({args.ood or 'pydicom-data adult chest CRs'})")
    print("\n| figure | value | target | met |\n|---|---:|---|---|")
    for name, value, target, met in rows:
        print(f"| {name} | {value:.4f} | {target} | {'yes' if met else '**no**'} |")
    if args.plots:
        print(f"\nwrote {plot_reliability_per_condition(results, args.plots)}")
    if args.json:
        args.json.write_text(json.dumps({"figures": {n: v for n, v, _, _ in rows}, "suite": results}, indent=2))


if __name__ == "__main__":
    main()
