"""From one DICOM instance (bytes) to its two result instances: checks, prediction, heat map, SR and SC.

The pixels are decoded once (:class:`pneumo.explain.analyser.ImageAnalyser`, :mod:`pneumo.imaging`) from the instance's
own bytes, exactly as ``pneumo predict`` decodes a file, so the probability in the SR is the one ``pneumo predict``
prints for the same file.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pneumo.errors import PneumoError
from pneumo.explain.analyser import ImageAnalyser, ImageAnalysis
from pneumo.imaging import ImageLoadError, check_dicom_codestream
from pneumo.inference import Prediction, Predictor

log = logging.getLogger("pneumo.dicom")
# highdicom warns about odd person names by quoting them: a patient's or physician's name must not reach the logs.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name")

SC_MAX_SIDE = 1024
CHEST_SOP_CLASSES = frozenset(
    {
        UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
        UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
        UID("1.2.840.10008.5.1.4.1.1.1.1.1"),  # Digital X-Ray Image Storage - For Processing
    }
)
CHEST_MODALITIES = frozenset({"CR", "DX"})
# BodyPartExamined is free text in practice: CHEST is the defined term, the others are what devices also send.
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "PCHEST", "TORAX", "THORAX_PA", "CHEST_PA"})
# Type 2 attributes that highdicom reads straight off the source; an absent one is copied as empty.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")  # fmt: skip


class DicomError(PneumoError):
    """A DICOM instance that Pneumo cannot analyse; ``reason`` says which rule it broke (for DIMSE statuses)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
NOT_SUPPORTED, NO_PIXELS, NOT_CHEST, UNREADABLE = "sop-class", "no-pixels", "not-chest", "unreadable"
COLOUR, BAD_UID = "colour", "bad-uid"


@dataclass
class DicomResults:
    """The two new instances for one analysed source instance."""

    prediction: Prediction
    sr: Dataset
    sc: Dataset
    source_sop_instance_uid: str
    study_instance_uid: str


# DICOM UI: components of digits without leading zeros (a lone 0 is fine), separated by dots, 64 characters at most.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def valid_uid(text: object) -> bool:
    """True when ``text`` is a DICOM UID (PS3.5 9.1): what a file name may be made of, and safe in a log line."""
    return isinstance(text, str) and len(text) <= 64 and _UID.fullmatch(text) is not None


def check_uids(ds: Dataset, name: str) -> None:
    """DicomError (bad-uid) unless the instance's SOP Instance, Study, Series and SOP Class UIDs are valid UIDs:
    the DICOM node names its output files after the first and logs them all."""
    for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        if key in ds and not valid_uid(str(ds.get(key) or "")):
            raise DicomError(f"{name}: its {key} is not a valid DICOM UID (digits and dots, at most 64 characters)",
                             BAD_UID)  # fmt: skip


def read_header(data: bytes, name: str) -> Dataset:
    """The instance's data set with the pixel data left out; DicomError (unreadable) when it does not parse, its
    uncompressed pixel data is shorter than its rows and columns say (a truncated transfer), or its compressed
    pixel data declares another size than the header or one over the decode budget
    (:func:`pneumo.imaging.check_dicom_codestream`: refused before any decoder runs)."""
    try:
        ds = dcmread(io.BytesIO(data))
        has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
        short = _short_native_pixels(ds) if "PixelData" in ds else None
        if "PixelData" in ds and not short:
            try:
                check_dicom_codestream(ds, name)
            except ImageLoadError as exc:
                short = str(exc).removeprefix(f"{name}: ")
        for tag in _PIXEL_TAGS:
            if tag in ds:
                delattr(ds, tag)
        ds.ensure_file_meta()
    except Exception as exc:  # pydicom raises many kinds for damaged data; all mean the same to a sender
        raise DicomError(f"{name}: damaged DICOM data set ({str(exc).splitlines()[0][:200]})", UNREADABLE) from exc
    if short:
        raise DicomError(f"{name}: damaged DICOM data set ({short})", UNREADABLE)
    ds.pneumo_has_pixels = has_pixels  # a plain attribute, never written out
    return ds


def _short_native_pixels(ds: Dataset) -> str | None:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_encapsulated:
        return None
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    per_pixel = int(ds.get("SamplesPerPixel", 1)) * max(1, int(ds.get("BitsAllocated", 8))) / 8
    expected, got = int(rows * cols * per_pixel), len(ds.PixelData or b"")
    return f"pixel data truncated: {got} of {expected} bytes" if got < expected else None


def check_chest_radiograph(ds: Dataset, name: str) -> None:
    """Raise DicomError unless ``ds`` is a CR / DX image with pixel data whose body part (when given) is the chest."""
    sop = ds.get("SOPClassUID")
    modality = str(ds.get("Modality", "")).strip().upper()
    if sop is not None and sop not in CHEST_SOP_CLASSES and modality not in CHEST_MODALITIES:
        raise DicomError(
            f"{name}: not a radiograph ({UID(sop).name}, Modality {modality or 'absent'}); only CR and DX chest "
            "radiographs are analysed",
            NOT_SUPPORTED,
        )
    if modality not in CHEST_MODALITIES:
        raise DicomError(f"{name}: Modality {modality or 'absent'}, not CR or DX; only chest radiographs are "
                         "analysed", NOT_SUPPORTED)  # fmt: skip
    part = str(ds.get("BodyPartExamined", "")).strip().upper()
    if part and part not in CHEST_BODY_PARTS:
        raise DicomError(f"{name}: BodyPartExamined is {part}, not CHEST; only chest radiographs are analysed",
                         NOT_CHEST)  # fmt: skip
    if not getattr(ds, "pneumo_has_pixels", "PixelData" in ds):
        raise DicomError(f"{name}: DICOM instance has no pixel data", NO_PIXELS)
    # Refused from the header, so a node never acknowledges an instance it will not analyse (CR and DX are grayscale).
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = str(ds.get("SamplesPerPixel", 1)).strip()
    if samples != "1" or pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{name}: colour pixel data (PhotometricInterpretation {pi[:16]}, {samples[:4]} samples per "
                         "pixel); only grayscale CR and DX radiographs are analysed", COLOUR)  # fmt: skip
    for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        if not ds.get(key):
            raise DicomError(f"{name}: the DICOM instance has no {key}; results cannot be attached to it", UNREADABLE)


def _evidence(ds: Dataset) -> Dataset:
    """The source header as highdicom wants evidence: every type 2 attribute present, empty when unknown."""
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, None)
    return ds


class DicomAnalyser:
    """Turns chest CR / DX instances into SR + SC results with one loaded Predictor (thread-safe). Decoding,
    prediction and the fail-soft heat map are :class:`pneumo.explain.analyser.ImageAnalyser`'s; an SC without the heat
    map says so."""

    def __init__(self, predictor: Predictor, *, heatmaps: bool = True):
        self.predictor = predictor
        self.heatmaps = heatmaps
        self.images = ImageAnalyser(predictor, max_side=SC_MAX_SIDE, heatmaps=heatmaps, log=log)

    def analyse(self, data: bytes, name: str) -> DicomResults:
        """Both result instances for one instance's bytes (a Part 10 file); DicomError when it cannot be used.
        The header is checked before the pixels are decoded: a CT or a study without pixels costs no decoding."""
        header = self.check(data, name)
        net_input, display = self.decode(data, name)
        return self.results(header, self.images.analyse_decoded(net_input, display, name))

    @staticmethod
    def check(data: bytes, name: str) -> Dataset:
        """The instance's header (:func:`read_header`), checked to be a chest radiograph; DicomError if not."""
        header = read_header(data, name)
        check_chest_radiograph(header, name)
        return header

    def decode(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(network input, SC-sized display image) from one decoding of the instance's pixels."""
        try:
            return self.images.decode(data, name)
        except ImageLoadError as exc:
            raise DicomError(str(exc), UNREADABLE) from exc

    def results(self, header: Dataset, analysis: ImageAnalysis) -> DicomResults:
        """The SR and the SC of an analysed instance; DicomError when the prediction failed."""
        from pneumo.dicom.sc import build_sc
        from pneumo.dicom.sr import build_sr

        prediction = analysis.prediction
        if prediction.error:
            raise DicomError(prediction.error, UNREADABLE)
        source = _evidence(header)
        meta = self.predictor.meta
        return DicomResults(
            prediction=prediction,
            sr=build_sr(source, prediction, meta),
            sc=build_sc(
                source,
                analysis.image,
                analysis.heatmap,
                prediction,
                meta,
                field_edge=analysis.field_edge,
                field_note=analysis.field_note,
            ),
            source_sop_instance_uid=str(source.SOPInstanceUID),
            study_instance_uid=str(source.StudyInstanceUID),
        )

    def heatmap(self, net_input: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The heat map at ``shape`` in [0, 1], or None when this node cannot make one (the SC then says so)."""
        return self.images.heatmap(net_input, shape)[0]

    def warm_up(self) -> None:
        """Load what the heat maps need now (seconds when it is PyTorch's Grad-CAM) rather than on the first image."""
        self.images.prepare()


def write_results(results: DicomResults, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.sr.dcm`` and ``<stem>.sc.dcm`` in ``out_dir``, each written atomically; a ``stem`` that is not a
    plain file name (a separator, ``..``, a control character) is refused, never written elsewhere."""
    from pneumo import atomic

    if not stem or stem in (".", "..") or Path(stem).name != stem or "/" in stem or not stem.isprintable():
        raise DicomError(f"{stem!r:.80}: not a plain file name; no result written", BAD_UID)
    paths = []
    for kind, ds in (("sr", results.sr), ("sc", results.sc)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        paths.append(atomic.write_bytes(out_dir / f"{stem}.{kind}.dcm", buf.getvalue()))
    return paths
