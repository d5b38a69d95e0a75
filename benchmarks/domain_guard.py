"""Domain-guard rates of a model, per condition: the share answered "not a pediatric chest X-ray" (result withheld)
and the share answered "unusual acquisition" (result stands, with a note).

    python benchmarks/domain_guard.py [--model M] [--data ../shared/data] [--split-csv split.csv] [--limit N]
        [--conditions all|framing|none] [--json out.json]

Rows: validation X-rays as they are and under the conditions of the shift suite (made as ``pneumo robustness``
makes them), the original-size validation X-rays, the adult chest CRs (``shared/data/dicom`` and ``pydicom-data``,
as they are and zoomed out / in), other body parts and modalities shipped by ``pydicom-data``, photographs, and
generated blanks / noise / documents. Validation images come from the split CSV (``split=val``), or from a
patient-grouped split made with seed 0 when none is given. A model file from before the two answers has one
answer: its flags all count as "not pediatric".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pneumo.data import make_split
from pneumo.domain import domain_rates
from pneumo.evaluation.shifts import SUITE, encode_png, gray8, perturbed_png
from pneumo.imaging import ImageLoadError, load_image, probe_image
from pneumo.inference import Predictor
from pneumo.inputs import read_split_csv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference images that are not pediatric chest X-rays
from ood import ADULT_CHEST_DICOMS, adult_chest_radiographs, photographs, synthetic  # noqa: E402

ZOOMS = ("zoom 0.8 (margin)", "zoom 1.25 (cropped)")


def rates(predictor: Predictor, samples: Iterable[tuple[str, object]]) -> dict:
    preds = [p for p in predictor.predict_sources(samples) if p.error is None]
    r = domain_rates(preds)
    passed = [p.path for p in preds if p.domain != "not_pediatric"]
    return {"not_pediatric": r["flagged_not_pediatric"], "unusual": r["flagged_unusual_acquisition"],
            "n": len(preds), "passed": passed}  # fmt: skip


def other_dicoms() -> Iterable[tuple[str, bytes]]:
    """pydicom-data's grayscale images that are not chest radiographs (CT, MR, an extremity CR, ...)."""
    from pydicom.data import get_testdata_files

    for f in sorted(get_testdata_files("*.dcm")):
        name = Path(f).name
        if name in ADULT_CHEST_DICOMS:
            continue
        try:
            probe_image(f)
            load_image(f, 32)
        except (ImageLoadError, ValueError):
            continue
        yield f"pydicom-data:{name}", Path(f).read_bytes()


def zoomed(samples: Iterable[tuple[str, bytes]], condition: str) -> Iterable[tuple[str, bytes]]:
    for name, data in samples:
        yield f"{name} ({condition})", encode_png(SUITE[condition].perturb(gray8(load_image(data))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--split-csv", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None, help="at most this many validation images (the first)")
    ap.add_argument("--conditions", choices=("all", "framing", "none"), default="all")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    predictor = Predictor.load(args.model)
    results: dict[str, dict] = {}
    root = args.data / "chest_xray"
    t0 = time.time()
    if (root / "train").is_dir():
        split_csv = args.split_csv or Path("/tmp/pneumo_guard_split.csv")
        if args.split_csv is None:
            make_split(root, split_csv, val_fraction=0.1, seed=0, by="patient")
        paths = [root / r.path for r in read_split_csv(split_csv) if r.split == "val"][: args.limit]
        results["validation, clean"] = rates(predictor, ((str(p), p) for p in paths))
        framing = [k for k in SUITE if SUITE[k].family == "geometry"] + ["crop 15%"]
        for cond in {"all": list(SUITE), "framing": framing}.get(args.conditions, []):
            f = SUITE[cond].perturb
            results[f"validation, {cond}"] = rates(predictor, ((str(p), perturbed_png(p, f)) for p in paths))
    else:
        print(f"{root / 'train'} not found: skipping the validation rates")
    full = args.data / "chest_xray_fullres" / "val"
    if full.is_dir():
        results["original-size validation X-rays"] = rates(
            predictor, ((p.name, p) for p in sorted(full.rglob("*.jpeg")))
        )
    dicoms = args.data / "dicom"
    shared = [(p.name, p.read_bytes()) for p in (dicoms / "RG1_J2KI.dcm", dicoms / "Issue44_Monochrome1-Jpeg.dcm")
              if p.is_file()]  # fmt: skip
    if shared:
        results["adult chest CR (shared/data/dicom)"] = rates(predictor, shared)
    adult = shared + list(adult_chest_radiographs())
    results["adult chest CR (pydicom-data)"] = rates(predictor, adult_chest_radiographs())
    for cond in ZOOMS:
        results[f"adult chest CR, {cond}"] = rates(predictor, zoomed(adult, cond))
    results["other body parts / modalities (pydicom-data)"] = rates(predictor, other_dicoms())
    results["photographs"] = rates(predictor, photographs())
    results["blank / noise / documents"] = rates(predictor, synthetic())
    g = predictor.meta.domain_guard
    kind = "two answers" if g is not None and g.pediatric is not None else "one answer (made before the two)"
    print(f"model: {predictor.meta.name}, domain guard with {kind}; {time.time() - t0:.0f} s")
    print(f"{'condition':58s} {'not pediatric':>13s} {'unusual acq.':>13s} {'n':>5s}")
    for name, r in results.items():
        line = f"{name:58s} {r['not_pediatric']:13.3f} {r['unusual']:13.3f} {r['n']:5d}"
        if ("adult" in name or "photo" in name or "other" in name) and r["passed"]:
            line += "   passed: " + ", ".join(Path(p).name for p in r["passed"][:4])
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps({k: {x: r[x] for x in ("not_pediatric", "unusual", "n")} for k, r in results.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
