"""Remake docs/dicom_sc.png: a Kermany original wrapped as a 12-bit CR, through `pneumo predict --dicom-out`, and
the Secondary Capture's pixels written as PNG (what a PACS viewer shows).

    python benchmarks/dicom_sc_picture.py [--image person1947_bacteria_4876.jpeg] [--out docs/dicom_sc.png] [-m M]

The X-ray is Kermany, Zhang, Goldbaum et al., Cell 172(5), 2018 (doi 10.17632/rscbjbr9sj, CC BY 4.0); the patient
name and id in the wrapper are made up. Needs the shared data (``PNEUMO_SHARED_DATA`` overrides ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
FULLRES = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data")) / "chest_xray_fullres" / "val"


def wrap_as_cr(jpeg: Path, out: Path) -> Path:
    """The JPEG's gray pixels as a 12-bit MONOCHROME2 chest CR (made-up patient, new UIDs)."""
    pixels = np.asarray(Image.open(jpeg).convert("L")).astype(np.uint16) * 16
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientOrientation = "CR", "CHEST", ["R", "F"]
    ds.PatientName, ds.PatientID, ds.StudyDate = "Kermany^Example", jpeg.stem[:16], "20180222"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="person1947_bacteria_4876.jpeg", help="a PNEUMONIA original's file name")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dicom_sc.png")
    ap.add_argument("-m", "--model", default=None, help="model file [default: the bundled one]")
    args = ap.parse_args(argv)
    jpeg = FULLRES / "PNEUMONIA" / args.image
    if not jpeg.is_file():
        raise SystemExit(f"error: {jpeg} not found (set PNEUMO_SHARED_DATA to the folder holding chest_xray_fullres)")
    with tempfile.TemporaryDirectory() as tmp:
        cr = wrap_as_cr(jpeg, Path(tmp) / "cr.dcm")
        cmd = [
            "pneumo",
            "predict",
            str(cr),
            "--dicom-out",
            str(Path(tmp) / "out"),
            *(["-m", args.model] * bool(args.model)),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        sc = pydicom.dcmread(Path(tmp) / "out" / "cr.sc.dcm")
        Image.fromarray(sc.pixel_array).save(args.out)
    print(f"wrote {args.out} ({sc.Columns} x {sc.Rows} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
