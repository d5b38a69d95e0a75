"""``pneumo predict ... --dicom-out DIR``: an SR and an SC for every DICOM input that was analysed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from pneumo.dicom.instance import DicomAnalyser, DicomError, write_results
from pneumo.imaging import ImageLoadError, is_dicom, maybe_headerless_dicom
from pneumo.inference import Prediction, Predictor


def predict_with_dicom_outputs(
    files: Sequence[Path],
    predictor: Predictor,
    out_dir: Path,
    *,
    batch_size: int = 64,
    mirror: bool = False,
    heatmaps: bool = True,
    notes: list[str] | None = None,
) -> Iterator[Prediction]:
    """The rows of ``pneumo predict`` for ``files``, in input order, writing ``<stem>.sr.dcm`` / ``<stem>.sc.dcm``
    into ``out_dir`` for each DICOM input on the way.

    Each file is read once. A DICOM input's bytes give its header and, decoded once, the network input, the SC's
    image and the heat map (:class:`DicomAnalyser`); the other inputs are predicted in batches from the bytes read
    (:meth:`Predictor.predict_sources`). A DICOM that cannot be analysed (not a chest CR / DX, no pixel data) gets
    its row's error and no output. One-line notes (files written, non-DICOM inputs skipped) are appended to
    ``notes`` as the rows go by."""
    notes = [] if notes is None else notes
    analyser = DicomAnalyser(predictor, heatmaps=heatmaps)
    used: set[str] = set()
    skipped = 0
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        read = [_read(f) for f in chunk]
        # A file that could not be read goes by its path, so that its row carries predict's own error.
        others = [
            (str(f), f if data is None else data) for f, data in zip(chunk, read, strict=True) if not _dicom(data)
        ]
        predicted = predictor.predict_sources(others, batch_size=batch_size, mirror=mirror)
        for f, data in zip(chunk, read, strict=True):
            if _dicom(data):
                yield _analyse(analyser, f, data, out_dir, used, notes, mirror)
            else:
                row = next(predicted)
                skipped += row.error is None
                yield row
    if skipped:
        notes.append(f"--dicom-out: {skipped} non-DICOM input{'s' if skipped != 1 else ''} skipped "
                     "(no study to attach a result to)")  # fmt: skip


def _read(path: Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _dicom(data: bytes | None) -> bool:
    return data is not None and (is_dicom(data) or maybe_headerless_dicom(data))


def _analyse(
    analyser: DicomAnalyser, path: Path, data: bytes, out_dir: Path, used: set[str], notes: list[str], mirror: bool
) -> Prediction:
    """One DICOM input's row; its SR and SC written when it is a chest radiograph that could be predicted."""
    name = str(path)
    images = analyser.images
    try:
        net_input, display = images.decode(data, name)
    except ImageLoadError as exc:  # the row predict gives an unreadable file
        return Prediction(path=name, threshold=analyser.predictor.threshold, error=str(exc))
    analysis = images.analyse_decoded(net_input, display, name, heatmap=False, mirror=mirror)
    pred = analysis.prediction
    if pred.error:
        return pred
    try:
        header = analyser.check(data, name)  # before the heat map: a CT or an instance without pixels costs none
        analysis.heatmap, analysis.heatmap_error = images.heatmap(net_input, display.shape)
        res = analyser.results(header, analysis)
    except DicomError as exc:
        return Prediction(path=name, threshold=pred.threshold, error=f"{exc} (no DICOM result written)")
    stem = Path(path).name.removesuffix(Path(path).suffix) or Path(path).name
    while stem in used:  # the same file name in two folders
        stem += "_"
    used.add(stem)
    written = write_results(res, out_dir, stem)
    notes.append(f"wrote {written[0]} and {written[1]}")
    return pred
