"""The result as a DICOM Structured Report: a TID 1500 Measurement Report (highdicom) in the source's study.

One TID 1501 measurement group per finding: pneumonia (SNOMED CT 233604007) with the calibrated probability as a
numeric value, the threshold it was compared against, the decision as a qualitative evaluation (Present / Absent,
or Undetermined (373068000) when a site's REFER band sends the study to a reader) and the domain check; with a
subtype head, one group each for bacterial (53084003) and viral (75570004) pneumonia with their probabilities.
Each group names the algorithm (TID 4019: model name and version, Pneumo's version, the threshold, band and
calibration as parameters) and references the source image, which the Image Library lists too. When a REFER band
is in force (``pneumo adapt --refer``) its limits are two more numeric values, and a referred study carries a coded
note that it awaits a reader: "pneumonia absent" must never stand for "not sure". Concepts DICOM has no code for
(the domain check, the band, the note) use the private coding scheme ``99PNEUMO``, declared in the Coding Scheme
Identification Sequence as the standard asks of private schemes.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pneumo import labels
from pneumo._version import __version__
from pneumo.inference import Prediction
from pneumo.modelfile import ModelMeta

MANUFACTURER = "Pneumo"
SERIES_DESCRIPTION = "Pneumo AI result - decision support only"
PRIVATE_SCHEME = "99PNEUMO"

PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
BACTERIAL = CodedConcept("53084003", "SCT", "Bacterial pneumonia")
VIRAL = CodedConcept("75570004", "SCT", "Viral pneumonia")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
THRESHOLD = CodedConcept("122411", "DCM", "Threshold Value")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
# SNOMED CT 373068000 |Undetermined|: the third member of DICOM's Present/Absent value set (CID 240), beside
# Present and Absent, so that a reader validating the SR against that set recognises it (codes.SCT.Undetermined).
INDETERMINATE = CodedConcept("373068000", "SCT", "Undetermined")
YES = CodedConcept("373066001", "SCT", "Yes")
NO = CodedConcept("373067005", "SCT", "No")
CHEST_IMAGING = CodedConcept("413815006", "SCT", "Chest imaging")
RECOMMENDATION = CodedConcept("121075", "DCM", "Recommendation")  # CID 7002, Diagnostic Imaging Report Element
IN_DOMAIN = CodedConcept("DOMAIN", PRIVATE_SCHEME, "Image within the validated image domain")
DOMAIN_SCORE = CodedConcept("DOMAINSCORE", PRIVATE_SCHEME, "Domain score")
WARNING = CodedConcept("WARNING", PRIVATE_SCHEME, "Warning")
OUT_OF_DOMAIN = CodedConcept("OOD", PRIVATE_SCHEME, "Image unlike the validated X-rays: do not rely on it")
REFER_LOW = CodedConcept("REFERLOW", PRIVATE_SCHEME, "REFER band lower limit")
REFER_HIGH = CodedConcept("REFERHIGH", PRIVATE_SCHEME, "REFER band upper limit")
# Code meanings are LO (64 characters at most): the note says what the reader must know, the band says why.
REFERRED = CodedConcept("REFER", PRIVATE_SCHEME, "Referred for a reader: the site data back neither decision")
DECISIONS = {labels.PNEUMONIA: PRESENT, labels.NORMAL: ABSENT, labels.REFER: INDETERMINATE}


def decision_concept(prediction: str) -> CodedConcept:
    """The qualitative value of a decision. Anything but the three known decisions is an error, never Absent."""
    try:
        return DECISIONS[prediction]
    except KeyError:
        raise ValueError(f"unknown decision {prediction!r}: expected one of {', '.join(DECISIONS)}") from None


def refer_band(pred: Prediction) -> tuple[float, float] | None:
    """The REFER band the prediction was decided with, or None for a two-way decision."""
    if pred.refer_low is None and pred.refer_high is None:
        return None
    if pred.refer_low is None or pred.refer_high is None:
        raise ValueError(f"{pred.path}: a REFER band needs both limits (low {pred.refer_low}, high {pred.refer_high})")
    return pred.refer_low, pred.refer_high


def algorithm(meta: ModelMeta, threshold: float, band: tuple[float, float] | None = None) -> AlgorithmIdentification:
    """TID 4019: the model's name and version; Pneumo's version and the operating point (threshold, or REFER band
    with the site it was fitted for) as parameters."""
    parameters = [
        f"Pneumo {__version__}",
        f"architecture {meta.arch}",
        f"threshold {threshold:.6g}",
        f"calibration temperature {meta.temperature:.6g}, bias {meta.calibration_bias:.6g}",
    ]
    if band is not None:
        site = f" (site {meta.site.name})" if meta.site is not None else ""
        parameters.append(f"REFER band {band[0]:.6g} to {band[1]:.6g}{site}")
    return AlgorithmIdentification(
        name=meta.name, version=meta.version, manufacturer=MANUFACTURER, parameters=parameters
    )


def device_uid(meta: ModelMeta) -> str:
    """A UID for the observing device that stays the same for one model version (so reports can be grouped)."""
    return generate_uid(entropy_srcs=["pneumo", meta.name, meta.version, meta.created])


def _probability(value: float) -> Measurement:
    return Measurement(name=PROBABILITY, value=round(float(value), 6), unit=NO_UNITS)


def _groups(source: Dataset, pred: Prediction, meta: ModelMeta) -> list[MeasurementsAndQualitativeEvaluations]:
    band = refer_band(pred)
    algo = algorithm(meta, pred.threshold, band)
    lung = [FindingSite(codes.SCT.Lung)]

    def image_ref() -> list[SourceImageForMeasurementGroup]:
        return [SourceImageForMeasurementGroup.from_source_image(source)]

    evaluations = [QualitativeEvaluation(PNEUMONIA, decision_concept(pred.prediction))]
    if pred.prediction == labels.REFER:
        evaluations.append(QualitativeEvaluation(RECOMMENDATION, REFERRED))
    measurements = [
        _probability(pred.probability),
        Measurement(name=THRESHOLD, value=round(pred.threshold, 6), unit=NO_UNITS),
    ]
    if band is not None:
        measurements += [
            Measurement(name=REFER_LOW, value=round(band[0], 6), unit=NO_UNITS),
            Measurement(name=REFER_HIGH, value=round(band[1], 6), unit=NO_UNITS),
        ]
    if pred.in_domain is not None:
        evaluations.append(QualitativeEvaluation(IN_DOMAIN, YES if pred.in_domain else NO))
        if not pred.in_domain:
            evaluations.append(QualitativeEvaluation(WARNING, OUT_OF_DOMAIN))
    if pred.domain_score is not None:
        measurements.append(Measurement(name=DOMAIN_SCORE, value=round(pred.domain_score, 6), unit=NO_UNITS))
    groups = [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="Pneumonia"),
            finding_type=PNEUMONIA,
            finding_sites=lung,
            algorithm_id=algo,
            measurements=measurements,
            qualitative_evaluations=evaluations,
            source_images=image_ref(),
        )
    ]
    for code, p in ((BACTERIAL, pred.p_bacterial), (VIRAL, pred.p_viral)):
        if p is not None:
            groups.append(
                MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=code.meaning),
                    finding_type=code,
                    finding_sites=lung,
                    algorithm_id=algo,
                    measurements=[_probability(p)],
                    source_images=image_ref(),
                )
            )
    return groups


def _library_entry(source: Dataset) -> Dataset:
    """What the Image Library describes of the source. highdicom's projection-radiography descriptors (TID 1603)
    read PatientOrientation and ImagerPixelSpacing, which many CR / DX instances lack; without them the entry keeps
    the TID 1601 descriptors only (its Modality code comes from the SOP class, not from the Modality copied here)."""
    entry = Dataset()
    for key in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID", "Modality",
                "PatientOrientation", "ImagerPixelSpacing"):  # fmt: skip
        if key in source:
            setattr(entry, key, source[key].value)
    orientation, spacing = entry.get("PatientOrientation"), entry.get("ImagerPixelSpacing")
    if not (orientation and len(orientation) == 2 and all(orientation) and spacing and len(spacing) == 2):
        entry.Modality = "OT"
    return entry


def build_sr(source: Dataset, pred: Prediction, meta: ModelMeta, *, series_number: int = 9901) -> ComprehensiveSR:
    """The Measurement Report for one analysed image, in the source's study (Patient and Study modules copied,
    a new series, new UIDs, the source referenced as evidence and in every measurement group).

    ``source`` is the source image's header (pixel data may be absent); ``pred`` a successful prediction."""
    if pred.probability is None or pred.prediction is None:
        raise ValueError(f"{pred.path}: no prediction to report ({pred.error})")
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid(meta), name="Pneumo", manufacturer_name=MANUFACTURER, model_name=meta.name
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_IMAGING,
        imaging_measurements=_groups(source, pred, meta),
        referenced_images=[_library_entry(source)],
    )
    return ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=meta.name,
        software_versions=[f"Pneumo {__version__}", f"{meta.name} {meta.version}"],
        series_description=SERIES_DESCRIPTION,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="Pneumo private concepts", responsible_organization="Pneumo"
            )
        ],
        is_complete=True,
    )
