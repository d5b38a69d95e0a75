"""What the DICOM node answers a C-STORE request with: the DIMSE statuses (PS3.4 B.2.3 and PS3.7 C) and the checks
of one received instance that choose a refusal. Nothing here touches the network, the queue or a thread."""

from __future__ import annotations

from pydicom import Dataset

from pneumo.dicom.instance import (
    BAD_UID,
    COLOUR,
    NO_PIXELS,
    NOT_CHEST,
    NOT_SUPPORTED,
    DicomError,
    check_chest_radiograph,
    check_uids,
    read_header,
)

# What each refusal tells the sender.
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122  # not a CR / DX (CT, MR, SR, ...)
OUT_OF_RESOURCES = 0xA700  # the analysis queue is full: try again later
DATASET_MISMATCH = 0xA900  # an image SOP class without pixel data
CANNOT_UNDERSTAND = 0xC000  # damaged data set
NOT_A_CHEST = 0xC001  # a radiograph of another body part ("cannot understand" range, C000-CFFF)
INTERNAL_ERROR = 0xC002  # our own bug; the association stays up
INVALID_UID = 0xC003  # a UID that is not DICOM UI syntax, or a data set whose SOP Instance UID is not the request's
TOO_LARGE = 0xC004  # over the per-instance size limit: retrying will not help
_STATUS = {NOT_SUPPORTED: SOP_CLASS_NOT_SUPPORTED, NO_PIXELS: DATASET_MISMATCH, NOT_CHEST: NOT_A_CHEST,
           COLOUR: DATASET_MISMATCH, BAD_UID: INVALID_UID}  # fmt: skip


class Refusal(Exception):
    """An instance the node refuses: the DIMSE ``status`` it answers with and the ``reason`` it logs."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_instance(data: bytes, sop_uid: str, requested_class: str = "") -> Dataset:
    """The header of a received instance (no pixel data), once it is a chest radiograph whose UIDs are valid and
    agree with the request's (``sop_uid``: its Affected SOP Instance UID, already validated; ``requested_class``:
    its Affected SOP Class UID, when given). Raises :class:`Refusal` otherwise; its reason names UIDs, SOP classes,
    modalities and body parts only."""
    name = f"instance {sop_uid}"
    try:
        header = read_header(data, name)
        check_chest_radiograph(header, name)
        check_uids(header, name)
    except DicomError as exc:
        raise Refusal(_STATUS.get(exc.reason, CANNOT_UNDERSTAND), str(exc).removeprefix(f"{name}: ")) from exc
    if str(header.SOPInstanceUID) != sop_uid:
        raise Refusal(INVALID_UID, f"the data set's SOP Instance UID {header.SOPInstanceUID} is not the one of the "
                      "request")  # fmt: skip
    if requested_class and str(header.SOPClassUID) != requested_class:
        raise Refusal(DATASET_MISMATCH, f"the data set's SOP Class UID {header.SOPClassUID} is not the one of the "
                      "request")  # fmt: skip
    return header
