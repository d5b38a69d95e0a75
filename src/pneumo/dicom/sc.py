"""The result as a DICOM Secondary Capture (highdicom ``SCImage``): the X-ray with the heat map over it and the
result burnt in above it, ``BurnedInAnnotation`` YES, in the source's study.

The text band sits above the X-ray rather than on it, so no text hides any of the lungs. The result line is red
for PNEUMONIA, green for NORMAL and amber for REFER (a site's REFER band: neither decision backed, a reader must
decide), so a referred study never looks like a normal one. Drawing needs numpy and
Pillow only; the overlay is :mod:`pneumo.explain.cam`'s, so it looks as on the web page.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, generate_uid

from pneumo._version import __version__
from pneumo.dicom.sr import MANUFACTURER, SERIES_DESCRIPTION
from pneumo.explain.cam import ALPHA_FLOOR, EMPTY_MAP, overlay_rgb
from pneumo.explain.field import EDGE_RGB
from pneumo.inference import Prediction
from pneumo.labels import NORMAL, PNEUMONIA, REFER
from pneumo.modelfile import ModelMeta

DISCLAIMER = "Decision support only - not a diagnosis; a clinician must read the image."
WARNING_TEXT = "WARNING: unlike the X-rays this model was validated on - do not rely on this result."
REFER_TEXT = "REFER: the site's data back neither NORMAL nor PNEUMONIA here - a reader must decide."
_LOSSY_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000, JPEGLSNearLossless})
_RED, _GREEN, _ORANGE, _GREY = (229, 57, 53), (67, 160, 71), (255, 152, 0), (200, 200, 200)
_MAGENTA = EDGE_RGB  # the field edge's line, and the words that say what it is
_AMBER = (255, 200, 0)  # yellower than the out-of-domain orange, far from both red and green
DECISION_COLOURS = {PNEUMONIA: _RED, NORMAL: _GREEN, REFER: _AMBER}


def overlay(image: np.ndarray, heatmap: np.ndarray | None, edge: np.ndarray | None = None) -> np.ndarray:
    """The gray X-ray ([0, 1], H x W) with the heat map composited over it (``pneumo.explain.cam``'s colours and smooth
    opacity, and a lung-field model's dashed field ``edge``, as on the web page and in ``pneumo explain``), H x W x 3
    uint8."""
    if heatmap is None:
        return np.repeat(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    return overlay_rgb(image, heatmap, edge)


def decision_colour(prediction: str) -> tuple[int, int, int]:
    """The result line's colour. An unknown decision is an error, never drawn as a NORMAL."""
    try:
        return DECISION_COLOURS[prediction]
    except KeyError:
        raise ValueError(f"unknown decision {prediction!r}: expected one of {', '.join(DECISION_COLOURS)}") from None


def result_line(pred: Prediction) -> str:
    """The one line of result text, e.g. ``PNEUMONIA  P(pneumonia) 0.93 (threshold 0.87)  bacterial 0.71 / viral
    0.29``; with a REFER band in force, the band the decision was made with instead of the threshold (three
    decimals, so the probability and the limits it was compared with read consistently), e.g. ``REFER  P(pneumonia)
    0.412 (REFER band 0.180 to 0.655)``."""
    if pred.refer_low is not None and pred.refer_high is not None:
        line = (
            f"{pred.prediction}  P(pneumonia) {pred.probability:.3f} "
            f"(REFER band {pred.refer_low:.3f} to {pred.refer_high:.3f})"
        )
    else:
        line = f"{pred.prediction}  P(pneumonia) {pred.probability:.2f} (threshold {pred.threshold:.2f})"
    if pred.p_bacterial is not None and pred.p_viral is not None:
        line += f"  bacterial {pred.p_bacterial:.2f} / viral {pred.p_viral:.2f}"
    if pred.domain_score is not None:
        line += f"  domain score {pred.domain_score:.2f}"
    return line


def render(
    image: np.ndarray,
    heatmap: np.ndarray | None,
    pred: Prediction,
    meta: ModelMeta,
    field_edge: np.ndarray | None = None,
    field_note: str | None = None,
) -> np.ndarray:
    """The RGB uint8 picture: a text band (result, what REFER means, warning when out of domain, disclaimer) over
    the overlay; a lung-field model's ``field_edge`` (at the image's shape) is drawn and ``field_note`` said."""
    h, w = image.shape
    lines = [(result_line(pred), decision_colour(pred.prediction))]
    if pred.prediction == REFER:
        lines.append((REFER_TEXT, _AMBER))
    if pred.in_domain is False:
        lines.append((WARNING_TEXT, _ORANGE))
    lines.append((DISCLAIMER, _GREY))
    lines.append((f"{meta.name} {meta.version}, Pneumo {__version__}", _GREY))
    if heatmap is None:
        lines.append(("No heat map (the heat-map model is unavailable on this node).", _GREY))
    elif float(np.max(heatmap)) < ALPHA_FLOOR:  # a map scaled to its own maximum ("cam") never gets here
        lines.append((f"Heat map: {EMPTY_MAP}.", _GREY))
    if heatmap is not None and field_note:
        lines.append((f"The {field_note}.", _MAGENTA))
    size = max(10, round(w / 40))
    font = ImageFont.load_default(size=size)
    widest = max(font.getlength(text) for text, _ in lines)
    if widest > w * 0.96:  # shrink until the longest line fits: text cut at the edge could hide a word like "not"
        size = max(8, int(size * w * 0.96 / widest))
        font = ImageFont.load_default(size=size)
    band = round(size * 1.35 * len(lines) + size * 0.6)
    canvas = Image.new("RGB", (w, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(overlay(image, heatmap, field_edge)), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, (text, colour) in enumerate(lines):
        draw.text((round(size * 0.4), round(size * 0.3 + i * size * 1.35)), text, fill=colour, font=font)
    return np.asarray(canvas)


def _source_reference(source: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def build_sc(
    source: Dataset,
    image: np.ndarray,
    heatmap: np.ndarray | None,
    pred: Prediction,
    meta: ModelMeta,
    *,
    series_number: int = 9902,
    field_edge: np.ndarray | None = None,
    field_note: str | None = None,
) -> SCImage:
    """The Secondary Capture for one analysed image. ``image`` is the X-ray at display size in [0, 1] (MONOCHROME2
    look), ``heatmap`` the map at the same size in [0, 1] or None, ``field_edge`` and ``field_note`` a lung-field
    model's (:class:`pneumo.explain.analyser.ImageAnalysis`)."""
    pixels = render(image, heatmap, pred, meta, field_edge, field_note)
    orientation = source.get("PatientOrientation")
    known = orientation is not None and len(orientation) == 2 and all(orientation)
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        # highdicom insists on an orientation for PATIENT images; without one in the source it is emptied below
        patient_orientation=tuple(orientation) if known else ("L", "F"),
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=meta.name,
        software_versions=[f"Pneumo {__version__}", f"{meta.name} {meta.version}"],
    )
    if not known:
        sc.PatientOrientation = None  # type 2: present and empty means "unknown"
    # General Series Laterality is type 2C and dciodvfy wants it present: the source's, or empty (unknown).
    sc.Laterality = source.get("Laterality") or None
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = source.get("RecognizableVisualFeatures", "NO")
    # Derived from a lossy-compressed source, the SC carries that history even though it is stored losslessly.
    syntax = getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", None)
    lossy = source.get("LossyImageCompression") == "01" or syntax in _LOSSY_SYNTAXES
    sc.LossyImageCompression = "01" if lossy else "00"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = "Pneumo result: heat map and result text burnt in over the X-ray"
    sc.SourceImageSequence = [_source_reference(source)]
    refer = f" {REFER_TEXT}" if pred.prediction == REFER else ""
    sc.ImageComments = f"{result_line(pred)}.{refer} {DISCLAIMER}"[:10240]
    return sc
