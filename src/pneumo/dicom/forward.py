"""Where the DICOM node sends its results (``pneumo dicom-listen --forward HOST:PORT:AET``): the destination and the
C-STORE SCU that sends one instance's SR and SC to it, retrying on a new association when the link fails."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pneumo.dicom.instance import DicomResults
from pneumo.errors import ConfigError

# The node's log lines keep the one logger name they have always had (the CLI's log format prints it).
log = logging.getLogger("pneumo.dicom.node")

# A C-STORE answered with one of these stored the object (success, and the three warnings of PS3.4 B.2.3).
STORED = (0x0000, 0xB000, 0xB007, 0xB006)


@dataclass(frozen=True)
class Destination:
    """A DICOM node to send results to: ``HOST:PORT:AET``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        host, sep, rest = text.rpartition(":")
        host, sep2, port = host.rpartition(":")
        if not (sep and sep2 and host and port.isdigit() and 0 < int(port) < 65536 and 0 < len(rest) <= 16):
            raise ConfigError(f"--forward {text!r}: expected HOST:PORT:AET, e.g. 127.0.0.1:4242:ORTHANC")
        return cls(host, int(port), rest)


def send_results(results: DicomResults, dest: Destination, ae_title: str, attempts: int = 3) -> tuple[int, int]:
    """Send the SR and the SC of ``results`` to ``dest`` as ``ae_title``; returns (stored, not stored).

    An object the destination refuses is counted as not stored and not sent again; one without an answer (no
    association, a timeout, an abort) is sent again on a new association, up to ``attempts`` times in all."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(ComprehensiveSRStorage)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    pending = [results.sr, results.sc]
    stored = refused = 0
    for attempt in range(1, attempts + 1):
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if assoc.is_established:
            try:
                while pending:
                    ds = pending[0]
                    status = assoc.send_c_store(ds)
                    code = getattr(status, "Status", None)
                    if code is None:
                        break  # no answer (timeout or abort): retried on a new association
                    if code not in STORED:
                        log.error("%s refused %s with status 0x%04X", dest.ae_title, ds.SOPInstanceUID, code)
                        refused += 1
                    else:
                        stored += 1
                    pending.pop(0)
            finally:
                assoc.release()
        if not pending:
            return stored, refused
        log.warning("cannot send results of %s to %s at %s:%d (attempt %d of %d)", results.source_sop_instance_uid,
                    dest.ae_title, dest.host, dest.port, attempt, attempts)  # fmt: skip
        time.sleep(0.5 * attempt)
    return stored, refused + len(pending)
