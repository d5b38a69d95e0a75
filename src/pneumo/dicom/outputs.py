"""``pneumo predict ... --dicom-out DIR``: an SR and an SC for every DICOM input that was analysed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pneumo.dicom.analysis import DicomAnalyser, DicomError, write_results
from pneumo.imaging import is_dicom
from pneumo.inference import Prediction, Predictor


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    # The preamble-less form starts in group 0002 or 0008, as imaging.py's reader accepts it.
    return is_dicom(head) or head[:2] in (b"\x02\x00", b"\x08\x00")


def write_dicom_outputs(
    files: Sequence[Path], results: Sequence[Prediction], predictor: Predictor, out_dir: Path, *, heatmaps: bool = True
) -> tuple[list[Prediction], list[str]]:
    """Write ``<stem>.sr.dcm`` / ``<stem>.sc.dcm`` into ``out_dir`` for each predicted DICOM file.

    Returns the rows (a DICOM that cannot be analysed - not a chest CR / DX, no pixel data - gets its row's error
    and no output) and one-line notes (files written, non-DICOM inputs skipped)."""
    analyser = DicomAnalyser(predictor, heatmaps=heatmaps)
    rows, notes, skipped, used = [], [], 0, set()
    for path, pred in zip(files, results, strict=True):
        if pred.error or not _looks_like_dicom(path):
            skipped += not pred.error
            rows.append(pred)
            continue
        try:
            res = analyser.analyse(Path(path).read_bytes(), pred.path, prediction=pred)
        except DicomError as exc:
            rows.append(Prediction(path=pred.path, threshold=pred.threshold, error=f"{exc} (no DICOM result written)"))
            continue
        except OSError as exc:
            rows.append(Prediction(path=pred.path, threshold=pred.threshold, error=f"{pred.path}: {exc.strerror}"))
            continue
        stem = Path(path).name.removesuffix(Path(path).suffix) or Path(path).name
        while stem in used:  # the same file name in two folders
            stem += "_"
        used.add(stem)
        written = write_results(res, out_dir, stem)
        notes.append(f"wrote {written[0]} and {written[1]}")
        rows.append(pred)
    if skipped:
        notes.append(f"--dicom-out: {skipped} non-DICOM input{'s' if skipped != 1 else ''} skipped "
                     "(no study to attach a result to)")  # fmt: skip
    return rows, notes
