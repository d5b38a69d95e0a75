"""Site adaptation on real data: does ``pneumo adapt`` restore the operating point at a "new site"?

The new site: the patient-grouped validation split of the training data under the worst perturbation of the shift
suite (``pneumo.evaluation.robustness``: by default the worst geometric shift the model file records, ``--screen`` runs
the whole suite to find it, ``--perturbation`` names one), plus the 16 original-size images of the official val split.
Half of its patients (stratified) are the site's labelled sample: ``pneumo adapt`` runs on them; the other half are
the site's future studies: sensitivity, specificity and ECE there, base model as shipped against the site file,
with bootstrap 95 % intervals; with ``--refer`` also the REFER band's figures.

    python benchmarks/site_adapt.py [--data ../shared/data] [--split-csv /work/split.csv] [--model M] [--screen]
                                    [--perturbation NAME] [--refer [--refer-error A]] [--out DIR] [--json FILE]

The split CSV is made with ``pneumo data split DATA/chest_xray/train --val-fraction 0.1 --seed 0 --out CSV`` when it
does not exist. Prints a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.adapt.site import adapt_site
from pneumo.data import make_split, scan_dataset, split_dataset
from pneumo.evaluation.metrics import binary_metrics
from pneumo.evaluation.report import bootstrap_ci
from pneumo.evaluation.robustness import PERTURBATIONS
from pneumo.imaging import load_image
from pneumo.inference import Predictor
from pneumo.inputs import select_records

REPO = Path(__file__).resolve().parents[1]


def perturbed_png(path: Path, perturb) -> bytes:
    """The file as ``pneumo robustness`` perturbs it: decoded, perturbed, re-encoded losslessly."""
    img = Image.fromarray(np.round(load_image(path) * 255).astype(np.uint8))
    buf = io.BytesIO()
    perturb(img).save(buf, format="PNG")
    return buf.getvalue()


def recorded_worst(predictor: Predictor) -> str | None:
    """The model file's own worst geometric shift of validation (lowest specificity, then highest ECE), named as
    in the shift suite: e.g. ``zoom 1.25`` -> ``zoom 1.25 (cropped)``."""
    shifts = {k: v for k, v in (predictor.meta.validation.geometry_shift or {}).items() if k != "worst"}
    if not shifts:
        return None
    worst = min(shifts, key=lambda k: (shifts[k].specificity, -shifts[k].ece))
    names = [n for n in PERTURBATIONS if n.split(" (")[0] == worst]
    return names[0] if names else None


def screen(predictor: Predictor, recs, seed: int = 0, n: int | None = None) -> tuple[str, dict]:
    """The worst perturbation of the suite on the validation images (or a seeded subset of ``n``): lowest
    specificity at the shipped threshold, then highest ECE."""
    rng = np.random.default_rng(seed)
    pick = recs if n is None else [recs[i] for i in np.sort(rng.choice(len(recs), min(n, len(recs)), replace=False))]
    y = np.array([r.label == "PNEUMONIA" for r in pick], dtype=int)
    table = {}
    for name, f in PERTURBATIONS.items():
        preds = predictor.predict_sources(((r.rel, perturbed_png(r.path, f)) for r in pick), batch_size=32)
        prob = np.array([p.probability for p in preds])
        m = binary_metrics(y, prob, predictor.threshold)
        table[name] = {"specificity": m["specificity"], "sensitivity": m["sensitivity"], "ece": m["ece"]}
    worst = min(table, key=lambda k: (table[k]["specificity"], -table[k]["ece"]))
    return worst, table


def build_site(root: Path, val_recs, fullres: Path, perturb, out: Path) -> Path:
    """NORMAL/ and PNEUMONIA/ of the perturbed validation images (original names: patient ids) and the 16 images."""
    for label in ("NORMAL", "PNEUMONIA"):
        (out / label).mkdir(parents=True, exist_ok=True)
    for r in val_recs:
        (out / r.label / f"{Path(r.rel).stem}.png").write_bytes(perturbed_png(r.path, perturb))
    for r in scan_dataset(fullres).records:
        (out / r.label / r.path.name).write_bytes(r.path.read_bytes())
    return out


def half_split(site: Path, seed: int) -> tuple[list, list]:
    """Half of the site's patients, stratified by class and subtype (pneumo.data.split_dataset)."""
    recs = scan_dataset(site).records
    sides = split_dataset(recs, val_fraction=0.5, seed=seed)
    return [r for r, s in zip(recs, sides, strict=True) if s == "train"], [
        r for r, s in zip(recs, sides, strict=True) if s == "val"
    ]


def link_folder(recs, out: Path) -> Path:
    for r in recs:
        (out / r.label).mkdir(parents=True, exist_ok=True)
        (out / r.label / r.path.name).symlink_to(r.path.resolve())
    return out


def measure(model: Path | None, recs, n_boot: int = 1000) -> dict:
    """Sensitivity, specificity, ECE (bootstrap 95 %) and, for a site file with a band, REFER figures."""
    predictor = Predictor.load(model)
    preds = list(predictor.predict_sources((str(r.path), r.path) for r in recs))
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    prob = np.array([p.probability for p in preds])
    m = binary_metrics(y, prob, predictor.threshold)
    ci = bootstrap_ci(y, prob, predictor.threshold, n_boot=n_boot)
    out = {k: (m[k], *ci[k]) for k in ("sensitivity", "specificity", "ece", "roc_auc")}
    out["threshold"] = predictor.threshold
    if predictor.refer is not None:
        d = np.array([p.prediction for p in preds])
        out["referred"] = float(np.mean(d == "REFER"))
        out["miss_rate"] = float(np.mean(d[y == 1] == "NORMAL"))
        out["false_alarm_rate"] = float(np.mean(d[y == 0] == "PNEUMONIA"))
        out["refer_band"] = (predictor.refer.low, predictor.refer.high)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--split-csv", type=Path, default=Path("/work/split.csv"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument(
        "--perturbation", default=None, help="a condition of pneumo.evaluation.robustness [default: the worst]"
    )
    ap.add_argument("--screen", action="store_true", help="find the worst condition by running the whole suite")
    ap.add_argument("--refer-error", type=float, default=None, help="with --refer [default: 1 - target]")
    ap.add_argument("--refer", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/site_adapt"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    train = args.data / "chest_xray" / "train"
    if not args.split_csv.is_file():
        make_split(train, args.split_csv, val_fraction=0.1, seed=0)
    val_recs, _ = select_records(train, "val", args.split_csv)
    base = Predictor.load(args.model)
    screened = None
    name = args.perturbation
    if name is None and not args.screen:
        name = recorded_worst(base)
    if name is None:
        name, screened = screen(base, val_recs, args.seed)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose another --out")
    site = build_site(
        args.out, val_recs, args.data / "chest_xray_fullres" / "val", PERTURBATIONS[name], args.out / "site"
    )
    fit_recs, test_recs = half_split(site, args.seed)
    sample = link_folder(fit_recs, args.out / "sample")
    site_file = args.out / "site.pneumo"
    result = adapt_site(sample, site_file, model=args.model, report_dir=args.out / "report", refer=args.refer,
                        refer_error=args.refer_error, name=f"benchmark: {name}", seed=args.seed)  # fmt: skip
    before, after = measure(args.model, test_recs), measure(site_file, test_recs)
    n_pos = sum(r.label == "PNEUMONIA" for r in test_recs)
    summary = {
        "perturbation": name,
        "screening": screened,
        "site_images": len(fit_recs) + len(test_recs),
        "adapted_on": {"images": len(fit_recs), "pneumonia": sum(r.label == "PNEUMONIA" for r in fit_recs)},
        "measured_on": {"images": len(test_recs), "pneumonia": n_pos, "normal": len(test_recs) - n_pos},
        "cross_validated_on_sample": {
            k: v for k, v in result.after.items() if k in ("sensitivity", "specificity", "ece")
        },
        "warnings": result.warnings,
        "before": before,
        "after": after,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"new site: validation split under '{name}' + 16 original-size images = {summary['site_images']} images")
    print(f"adapted on {len(fit_recs)} images (by patient), measured on the other {len(test_recs)} "
          f"({n_pos} pneumonia)\n")  # fmt: skip
    print("| held-out half of the site | sensitivity | specificity | ECE | ROC AUC | threshold |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in (("base model as shipped", before), ("site file (pneumo adapt)", after)):
        cells = [
            f"{r[k][0]:.3f} ({r[k][1]:.3f}-{r[k][2]:.3f})" for k in ("sensitivity", "specificity", "ece", "roc_auc")
        ]
        print(f"| {label} | " + " | ".join(cells) + f" | {r['threshold']:.4f} |")
    if "referred" in after:
        lo, hi = after["refer_band"]
        print(f"\nREFER band {lo:.4f}-{hi:.4f}: referred {after['referred']:.3f}, "
              f"miss rate {after['miss_rate']:.3f}, false alarms {after['false_alarm_rate']:.3f}")  # fmt: skip
    for w in result.warnings:
        print(f"\nwarning from pneumo adapt: {w}")
    print(f"\n{summary['seconds']} s; report in {args.out / 'report'}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


if __name__ == "__main__":
    main()
