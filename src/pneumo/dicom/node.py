"""``pneumo dicom-listen``: a C-STORE SCP (pynetdicom) that analyses the chest radiographs it receives and sends
their SR and SC back with C-STORE (``--forward``) and/or writes them to a folder (``--out``).

The C-STORE handler only checks the instance (SOP class, modality, body part, pixel data, a parseable data set)
and answers at once with a DIMSE status, so a sender never waits on the network for a result; the analysis runs
in a bounded pool of worker threads behind a bounded queue, and a full queue answers "out of resources" (A700) so
the sender retries later instead of the node running out of memory (each waiting instance is held encoded, as
received: 16 of them are ~160 MB for 2k x 2.5k 16-bit radiographs). What it refuses gets the DIMSE status that
says why; a failure in one instance never ends the association. Logs carry UIDs and AE titles at most, never
patient names or pixels (pynetdicom's own logger, which can dump data sets, is kept at WARNING).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pneumo.dicom.analysis import (
    NO_PIXELS,
    NOT_CHEST,
    NOT_SUPPORTED,
    DicomAnalyser,
    DicomError,
    DicomResults,
    check_chest_radiograph,
    read_header,
    write_results,
)
from pneumo.errors import ConfigError

log = logging.getLogger("pneumo.dicom.node")

# DIMSE statuses (PS3.4 B.2.3 and PS3.7 C): what each refusal tells the sender.
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122  # not a CR / DX (CT, MR, SR, ...)
OUT_OF_RESOURCES = 0xA700  # the analysis queue is full: try again later
DATASET_MISMATCH = 0xA900  # an image SOP class without pixel data
CANNOT_UNDERSTAND = 0xC000  # damaged data set
NOT_A_CHEST = 0xC001  # a radiograph of another body part ("cannot understand" range, C000-CFFF)
_STATUS = {NOT_SUPPORTED: SOP_CLASS_NOT_SUPPORTED, NO_PIXELS: DATASET_MISMATCH, NOT_CHEST: NOT_A_CHEST}


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


@dataclass
class Counters:
    """What the node has done since it started (read by tests and the benchmark)."""

    received: int = 0
    refused: int = 0
    analysed: int = 0
    failed: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    written: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class Listener:
    """The Storage SCP with its worker pool. ``start()`` returns at once; ``serve_forever()`` blocks."""

    def __init__(
        self,
        analyser: DicomAnalyser,
        *,
        ae_title: str = "PNEUMO",
        host: str = "127.0.0.1",
        port: int = 11112,
        forward: Destination | None = None,
        out_dir: Path | None = None,
        calling_ae_titles: list[str] | None = None,
        workers: int = 2,
        queue_size: int = 16,
        max_associations: int = 8,
    ):
        if forward is None and out_dir is None:
            raise ConfigError("nothing to do with the results: give --forward HOST:PORT:AET and/or --out DIR")
        if not 0 < len(ae_title) <= 16:
            raise ConfigError(f"--ae-title {ae_title!r}: 1 to 16 characters")
        self.analyser = analyser
        self.ae_title, self.host, self.port = ae_title, host, port
        self.forward, self.out_dir = forward, out_dir
        self.calling_ae_titles = list(calling_ae_titles or [])
        self.counters = Counters()
        self._jobs: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._workers = [threading.Thread(target=self._work, name=f"pneumo-dicom-{i}", daemon=True)
                         for i in range(max(1, workers))]  # fmt: skip
        self._busy = 0
        self._idle = threading.Condition()
        self._server = None
        self._max_associations = max_associations

    # --- the server ---

    def _ae(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        # Every storage SOP class and transfer syntax is accepted at association time, so that a PACS routing a whole
        # study gets a per-instance DIMSE status (0122 for a CT) instead of a rejected association.
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = self.calling_ae_titles
        ae.maximum_associations = self._max_associations
        return ae

    def start(self) -> Listener:
        from pynetdicom import evt

        # pynetdicom's INFO / DEBUG output can show data sets; highdicom's INFO says which module it copies from where.
        for name in ("pynetdicom", "highdicom"):
            logging.getLogger(name).setLevel(logging.WARNING)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ABORTED, self._on_aborted)]
        try:
            self._server = self._ae().start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc})") from exc
        for w in self._workers:
            w.start()
        self.port = self._server.server_address[1]  # port 0 asks the OS for a free one
        callers = ", ".join(self.calling_ae_titles) if self.calling_ae_titles else "any"
        log.info("listening as %s on %s:%d (calling AE titles: %s)", self.ae_title, self.host, self.port, callers)
        return self

    def serve_forever(self) -> None:
        self.start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting associations, finish the queued analyses (up to ``timeout``), stop the workers."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.wait_idle(timeout)
        for _ in self._workers:
            self._jobs.put(None)
        for w in self._workers:
            w.join(timeout=5)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """True once nothing is queued or being analysed (within ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._jobs.unfinished_tasks or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.2))
        return True

    # --- event handlers (pynetdicom's association threads) ---

    def _on_aborted(self, event) -> None:
        log.warning("association from %s aborted", _peer(event))

    def _on_store(self, event) -> int:
        self.counters.add("received")
        sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            return self._accept(event, sop_uid)
        except Exception as exc:  # our own bug must still answer the sender and leave the association up
            log.error("instance %s from %s: internal error (%s)", sop_uid, _peer(event), type(exc).__name__)
            self.counters.add("refused")
            return 0xC002

    def _accept(self, event, sop_uid: str) -> int:
        data = event.encoded_dataset(include_meta=True)
        try:
            header = read_header(data, f"instance {sop_uid}")
            check_chest_radiograph(header, f"instance {sop_uid}")
        except DicomError as exc:
            status = _STATUS.get(exc.reason, CANNOT_UNDERSTAND)
            # The message names UIDs, SOP classes, modalities and body parts only.
            log.warning("refused %s from %s with status 0x%04X: %s", sop_uid, _peer(event), status,
                        str(exc).removeprefix(f"instance {sop_uid}: "))  # fmt: skip
            self.counters.add("refused")
            return status
        try:
            self._jobs.put_nowait((data, sop_uid, time.monotonic()))
        except queue.Full:
            log.warning("queue full: instance %s from %s refused with A700 (out of resources)", sop_uid, _peer(event))
            self.counters.add("refused")
            return OUT_OF_RESOURCES
        log.info("accepted %s (study %s) from %s", sop_uid, header.StudyInstanceUID, _peer(event))
        return SUCCESS

    # --- workers ---

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.task_done()
                return
            with self._idle:
                self._busy += 1
            try:
                self._process(*job)
            except Exception as exc:  # never lose the worker thread
                log.error("instance %s: internal error (%s)", job[1], type(exc).__name__)
                self.counters.add("failed")
            finally:
                with self._idle:
                    self._busy -= 1
                    self._jobs.task_done()
                    self._idle.notify_all()

    def _process(self, data: bytes, sop_uid: str, queued: float) -> None:
        try:
            results = self.analyser.analyse(data, f"instance {sop_uid}")
        except DicomError as exc:
            log.warning("instance %s not analysed: %s", sop_uid, str(exc).removeprefix(f"instance {sop_uid}: "))
            self.counters.add("failed")
            return
        self.counters.add("analysed")
        p = results.prediction
        log.info("analysed %s: %s P=%.3f (threshold %.3f)%s -> SR %s, SC %s in %.2f s", sop_uid, p.prediction,
                 p.probability, p.threshold, "" if p.in_domain is not False else " OUT OF DOMAIN",
                 results.sr.SOPInstanceUID, results.sc.SOPInstanceUID, time.monotonic() - queued)  # fmt: skip
        if self.out_dir is not None:
            write_results(results, self.out_dir, sop_uid)
            self.counters.add("written", 2)
        if self.forward is not None:
            self._send(results)

    def _send(self, results: DicomResults, attempts: int = 3) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

        dest = self.forward
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(ComprehensiveSRStorage)
        ae.add_requested_context(SecondaryCaptureImageStorage)
        pending = [results.sr, results.sc]
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
                        if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                            log.error("%s refused %s with status 0x%04X", dest.ae_title, ds.SOPInstanceUID, code)
                            self.counters.add("forward_failed")
                        else:
                            self.counters.add("forwarded")
                        pending.pop(0)
                finally:
                    assoc.release()
            if not pending:
                return
            log.warning("cannot send results of %s to %s at %s:%d (attempt %d of %d)", results.source_sop_instance_uid,
                        dest.ae_title, dest.host, dest.port, attempt, attempts)  # fmt: skip
            time.sleep(0.5 * attempt)
        self.counters.add("forward_failed", len(pending))


def _peer(event) -> str:
    try:
        return f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
    except Exception:
        return "?"


def listen(
    *,
    model=None,
    ae_title: str = "PNEUMO",
    host: str = "127.0.0.1",
    port: int = 11112,
    forward: str | None = None,
    out_dir: Path | None = None,
    calling_ae_titles: list[str] | None = None,
    workers: int = 2,
    queue_size: int = 16,
    threshold: float | None = None,
    heatmaps: bool = True,
) -> None:
    """Load the model and run the node until interrupted (the ``pneumo dicom-listen`` command)."""
    from pneumo.inference import Predictor

    dest = Destination.parse(forward) if forward else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    analyser = DicomAnalyser(Predictor.load(model, threshold=threshold), heatmaps=heatmaps)
    analyser.warm_up()  # load the heat-map model now, not on the first instance a PACS sends
    Listener(analyser, ae_title=ae_title, host=host, port=port, forward=dest, out_dir=out_dir,
             calling_ae_titles=calling_ae_titles, workers=workers, queue_size=queue_size).serve_forever()  # fmt: skip
