"""Domain-guard rates of a model: validation X-rays flagged, non-X-ray images flagged, adult chest CRs flagged.

    python benchmarks/domain_guard.py [--model M] [--data ../shared/data] [--split-csv split.csv]

Validation images come from the patient-grouped split (made with the same seed as training when no CSV is given).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pneumo.data import make_split
from pneumo.evaluation_run import select_records
from pneumo.inference import Predictor
from pneumo.ood import adult_chest_radiographs, photographs, synthetic

REPO = Path(__file__).resolve().parents[1]


def rate(predictor: Predictor, samples) -> tuple[float, int, list[str]]:
    preds = list(predictor.predict_sources(samples))
    ok = [p for p in preds if p.error is None]
    passed = [p.path for p in ok if p.in_domain]
    return (1 - len(passed) / len(ok)) if ok else float("nan"), len(ok), passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--split-csv", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    predictor = Predictor.load(args.model)
    results = {}
    train = args.data / "chest_xray" / "train"
    if train.is_dir():
        split_csv = args.split_csv or Path("/tmp/pneumo_guard_split.csv")
        if args.split_csv is None:
            make_split(train, split_csv, val_fraction=0.1, seed=0)
        recs, _ = select_records(train, "val", split_csv)
        results["validation X-rays flagged"] = rate(predictor, ((str(r.path), r.path) for r in recs))
        full = args.data / "chest_xray_fullres" / "val"
        if full.is_dir():
            recs = select_records(full)[0]
            results["original-size X-rays flagged"] = rate(predictor, ((str(r.path), r.path) for r in recs))
        dicoms = args.data / "dicom"
        adult = [p for p in (dicoms / "RG1_J2KI.dcm", dicoms / "Issue44_Monochrome1-Jpeg.dcm") if p.is_file()]
        results["adult chest CR (shared/data/dicom) flagged"] = rate(predictor, ((str(p), p) for p in adult))
    else:
        print(f"{train} not found: skipping the validation rates")
    results["photographs flagged"] = rate(predictor, photographs())
    results["blank/noise/text/documents flagged"] = rate(predictor, synthetic())
    results["adult chest CR (pydicom-data) flagged"] = rate(predictor, adult_chest_radiographs())
    print(f"model: {predictor.meta.name} (cut-off {predictor.meta.domain_guard.cutoff:.3f})")
    for name, (r, n, passed) in results.items():
        print(f"{name:45s} {r:6.1%} of {n}" + (f"   passed: {', '.join(passed[:6])}" if passed and r > 0.5 else ""))
    if args.json:
        args.json.write_text(json.dumps({k: {"rate": r, "n": n} for k, (r, n, _) in results.items()}, indent=2))


if __name__ == "__main__":
    main()
