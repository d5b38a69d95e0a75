"""From one DICOM instance (bytes) to its two result instances: checks, prediction, heat map, SR and SC.

The pixels are decoded by :mod:`pneumo.imaging` from the instance's own bytes, exactly as ``pneumo predict`` decodes
a file, so the probability in the SR is the one ``pneumo predict`` prints for the same file.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pneumo.errors import PneumoError
from pneumo.imaging import ImageLoadError, load_image_and_display
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


@dataclass
class DicomResults:
    """The two new instances for one analysed source instance."""

    prediction: Prediction
    sr: Dataset
    sc: Dataset
    source_sop_instance_uid: str
    study_instance_uid: str


def read_header(data: bytes, name: str) -> Dataset:
    """The instance's data set with the pixel data left out; DicomError (unreadable) when it does not parse or its
    uncompressed pixel data is shorter than its rows and columns say (a truncated transfer)."""
    try:
        ds = dcmread(io.BytesIO(data))
        has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
        short = _short_native_pixels(ds) if "PixelData" in ds else None
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
    """Turns chest CR / DX instances into SR + SC results with one loaded Predictor (thread-safe)."""

    def __init__(self, predictor: Predictor, *, heatmaps: bool = True):
        self.predictor = predictor
        self.heatmaps = heatmaps
        self._lock = threading.Lock()
        self._mapper = None
        self._mapper_error: str | None = None

    def analyse(self, data: bytes, name: str, prediction: Prediction | None = None) -> DicomResults:
        """Both result instances for one instance's bytes (a Part 10 file); DicomError when it cannot be used.

        ``prediction`` is the one already made for these bytes (``pneumo predict``); without it one is made."""
        from pneumo.dicom.sc import build_sc
        from pneumo.dicom.sr import build_sr

        header = read_header(data, name)
        check_chest_radiograph(header, name)
        try:
            net_input, display = load_image_and_display(data, self.predictor.size, SC_MAX_SIDE, name=name)
        except ImageLoadError as exc:
            raise DicomError(str(exc), UNREADABLE) from exc
        if prediction is None:
            prediction = self.predictor.predict_arrays([net_input], [name])[0]
        if prediction.error:
            raise DicomError(prediction.error, UNREADABLE)
        cam = self.heatmap(net_input, display.shape)
        source = _evidence(header)
        meta = self.predictor.meta
        return DicomResults(
            prediction=prediction,
            sr=build_sr(source, prediction, meta),
            sc=build_sc(source, display, cam, prediction, meta),
            source_sop_instance_uid=str(source.SOPInstanceUID),
            study_instance_uid=str(source.StudyInstanceUID),
        )

    def heatmap(self, net_input: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The heat map (``pneumo.cam``: the ONNX class-activation map, or Grad-CAM for a graph without one) at
        ``shape`` in [0, 1], or None when this node cannot make one (the SC then says so)."""
        mapper = self._heat_mapper()
        if mapper is None:
            return None
        try:
            return mapper.heatmap(net_input, shape)
        except Exception as exc:  # a heat map is an extra: its failure must not cost the result
            log.error("heat map failed (%s); the SC is written without it", type(exc).__name__)
            return None

    def warm_up(self) -> None:
        """Load what the heat maps need now (seconds when it is PyTorch's Grad-CAM) rather than on the first image."""
        self._heat_mapper()

    def _heat_mapper(self):
        if not self.heatmaps:
            return None
        with self._lock:
            if self._mapper is None and self._mapper_error is None:
                try:
                    from pneumo.cam import HeatMapper

                    mapper = HeatMapper(self.predictor)
                    mapper.prepare()  # no-op for the ONNX map; loads torch and the weights for the fallback
                    self._mapper = mapper
                except Exception as exc:  # no torch, no weights in the model file...: SCs without the overlay
                    self._mapper_error = type(exc).__name__
                    log.warning("no heat maps on this node (%s: %s); SCs carry the result text only",
                                type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")  # fmt: skip
        return self._mapper


def write_results(results: DicomResults, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.sr.dcm`` and ``<stem>.sc.dcm`` in ``out_dir``, each written atomically."""
    from pneumo import atomic

    paths = []
    for kind, ds in (("sr", results.sr), ("sc", results.sc)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        paths.append(atomic.write_bytes(out_dir / f"{stem}.{kind}.dcm", buf.getvalue()))
    return paths
