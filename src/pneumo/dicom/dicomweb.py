"""``pneumo dicomweb --url URL --study UID``: analyse a study over DICOMweb (dicomweb-client).

QIDO-RS lists the study's instances; only the CR / DX ones are fetched (WADO-RS, in their stored transfer syntax,
so the pixels are the archive's own and the probability is the one ``pneumo predict`` gives for the same file);
their SRs and SCs go back with one STOW-RS request.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from pneumo.dicom.instance import CHEST_MODALITIES, DicomAnalyser, DicomError
from pneumo.errors import PneumoError
from pneumo.inference import Prediction

log = logging.getLogger("pneumo.dicom.web")
_SOP, _SERIES, _MODALITY = "00080018", "0020000E", "00080060"


class DicomWebError(PneumoError):
    """The DICOMweb server could not be reached or refused a request."""


@dataclass
class InstanceOutcome:
    """One instance of the study: its prediction, or why it was skipped or not analysed."""

    sop_instance_uid: str
    prediction: Prediction | None = None
    skipped: str | None = None
    error: str | None = None


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def analyse_study(
    url: str, study_uid: str, analyser: DicomAnalyser, *, store: bool = True, session=None
) -> list[InstanceOutcome]:
    """Fetch, analyse and (with ``store``) STOW-RS back the results for every chest radiograph of a study."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url.rstrip("/"), session=session)
    try:
        found = client.search_for_instances(study_instance_uid=study_uid, fields=[_MODALITY], get_remaining=True)
    except requests.RequestException as exc:
        raise DicomWebError(f"{url}: cannot list study {study_uid} ({str(exc).splitlines()[0][:200]})") from exc
    if not found:
        raise DicomWebError(f"{url}: study {study_uid} has no instances (or does not exist)")
    outcomes, results = [], []
    for item in found:
        sop, modality = _value(item, _SOP), _value(item, _MODALITY).upper()
        if modality not in CHEST_MODALITIES:
            outcomes.append(InstanceOutcome(sop, skipped=f"Modality {modality or 'absent'}, not CR or DX"))
            continue
        try:
            ds = client.retrieve_instance(
                study_uid, _value(item, _SERIES), sop, media_types=(("application/dicom", "*"),)
            )
            res = analyser.analyse(_bytes(ds), f"instance {sop}")
        except DicomError as exc:
            outcomes.append(InstanceOutcome(sop, error=str(exc).removeprefix(f"instance {sop}: ")))
            continue
        except requests.RequestException as exc:
            outcomes.append(InstanceOutcome(sop, error=f"cannot fetch it ({str(exc).splitlines()[0][:200]})"))
            continue
        outcomes.append(InstanceOutcome(sop, prediction=res.prediction))
        results.append(res)
    if store and results:
        try:
            client.store_instances([d for r in results for d in (r.sr, r.sc)], study_instance_uid=study_uid)
        except requests.RequestException as exc:
            raise DicomWebError(f"{url}: STOW-RS of {2 * len(results)} result instances failed "
                                f"({str(exc).splitlines()[0][:200]})") from exc  # fmt: skip
        log.info("stored %d SR + %d SC in study %s", len(results), len(results), study_uid)
    return outcomes


def run(url: str, study_uid: str, *, model=None, threshold: float | None = None, heatmaps: bool = True,
        store: bool = True) -> list[InstanceOutcome]:  # fmt: skip
    """The ``pneumo dicomweb`` command: load the model, analyse the study."""
    from pneumo.inference import Predictor

    analyser = DicomAnalyser(Predictor.load(model, threshold=threshold), heatmaps=heatmaps)
    return analyse_study(url, study_uid, analyser, store=store)
