"""Does a picture give the same probability whatever bit depth and format it arrives in?

Each image of a folder is decoded once to its 8-bit gray levels at full size, then written again as an 8-bit PNG,
a 16-bit PNG (levels x 257), a 12-bit image in a 16-bit PNG (levels x 4095 / 255, rounded) and as DICOM (16 bits
stored, levels x 257, a linear window over the full range; and 12 bits stored, as the 12-bit PNG, window 0-4095).
Every copy is predicted with the model; the table gives, per copy, the largest and the median |P - P(8-bit PNG)|
over the images, and how many decisions differ from the 8-bit PNG's.

    python benchmarks/bit_depth.py ../shared/data/chest_xray_fullres/val [--model M]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.inference import Predictor


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _dicom(a: np.ndarray, bits: int) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.Rows, ds.Columns = a.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = 2 ** (bits - 1), 2**bits  # linear over the whole stored range
    ds.PixelData = a.astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def copies(path: Path) -> dict[str, bytes]:
    with Image.open(path) as im:
        levels = np.asarray(im.convert("L"))
    twelve = np.rint(levels.astype(np.float64) * 4095 / 255).astype(np.uint16)
    wide = levels.astype(np.uint16) * 257
    return {
        "JPEG as given": path.read_bytes(),
        "8-bit PNG": _png(levels),
        "16-bit PNG": _png(wide),
        "12-bit in a 16-bit PNG": _png(twelve),
        "DICOM, 16 bits stored": _dicom(wide, 16),
        "DICOM, 12 bits stored": _dicom(twelve, 12),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    predictor = Predictor.load(args.model)
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    probs: dict[str, list[float]] = {}
    calls: dict[str, list[str]] = {}
    for path in paths:
        for kind, data in copies(path).items():
            p = predictor.predict_one(data, path.name)
            probs.setdefault(kind, []).append(p.probability)
            calls.setdefault(kind, []).append(p.prediction)
    ref, ref_calls = np.array(probs["8-bit PNG"]), calls["8-bit PNG"]
    print(f"{predictor.model.meta.name}: {len(paths)} images of {args.folder}")
    print("| copy | max abs(P - P(8-bit PNG)) | median | decisions that differ |")
    print("|---|---:|---:|---:|")
    for kind, ps in probs.items():
        d = np.abs(np.array(ps) - ref)
        flips = sum(a != b for a, b in zip(calls[kind], ref_calls, strict=True))
        print(f"| {kind} | {d.max():.4f} | {np.median(d):.4f} | {flips} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
