"""``pneumo dicom-listen``: a C-STORE SCP (pynetdicom) that analyses the chest radiographs it receives and sends
their SR and SC back with C-STORE (``--forward``) and/or writes them to a folder (``--out``).

The C-STORE handler only checks the instance (SOP class, modality, body part, pixel data, a parseable data set)
and answers at once with a DIMSE status, so a sender never waits on the network for a result; the analysis runs
in a bounded pool of worker threads behind a bounded queue, and a full queue answers "out of resources" (A700) so
the sender retries later instead of the node running out of memory (each waiting instance is held encoded, as
received: 16 of them are ~160 MB for 2k x 2.5k 16-bit radiographs). What it refuses gets the DIMSE status that
says why; a failure in one instance never ends the association. Logs carry UIDs and AE titles at most, never
patient names or pixels (pynetdicom's own logger, which can dump data sets, is kept at WARNING).

What a peer sends is not trusted: the Affected SOP Instance UID of the request and the UIDs of the data set must
be DICOM UIDs (digits and dots, no leading zeros, at most 64 characters) and the two SOP Instance UIDs (and SOP
Class UIDs) must agree, or the instance is refused (C003, A900); the output files are named after the data set's
own, validated, SOP Instance UID, so no UID can write outside ``--out`` or forge a log line. Bound beyond
loopback, the node needs ``--calling-aet``. Instances arrive in a temporary file (pynetdicom's chunked receive),
not in memory: one over ``max_instance_mb`` is refused from its size (C004) before it is read, and the bytes held
by instances being checked, queued or analysed are bounded too (``max_inflight_mb``; beyond, A700).

Stopping: SIGTERM (what ``docker stop`` and systemd send) and Ctrl-C **drain**: the node stops accepting
associations, finishes every instance it has acknowledged with Success (up to ``drain_timeout`` seconds, 120 by
default; give ``docker stop -t`` / systemd's ``TimeoutStopSec`` at least that), logs what it did and exits. An
acknowledged instance that could not be finished in time is logged by UID, never dropped silently. A SIGKILL
still loses the queue: instances are not persisted before Success.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pneumo.dicom.dimse import (
    INTERNAL_ERROR,
    INVALID_UID,
    OUT_OF_RESOURCES,
    SUCCESS,
    TOO_LARGE,
    Refusal,
    check_instance,
)
from pneumo.dicom.forward import Destination, send_results
from pneumo.dicom.instance import DicomAnalyser, DicomError, valid_uid, write_results
from pneumo.errors import ConfigError, visible
from pneumo.hosts import is_loopback

log = logging.getLogger("pneumo.dicom.node")

MB = 2**20


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
        max_instance_mb: float = 200.0,
        max_inflight_mb: float = 1024.0,
        drain_timeout: float = 120.0,
    ):
        if forward is None and out_dir is None:
            raise ConfigError("nothing to do with the results: give --forward HOST:PORT:AET and/or --out DIR")
        if not 0 < len(ae_title) <= 16:
            raise ConfigError(f"--ae-title {ae_title!r}: 1 to 16 characters")
        if not calling_ae_titles and not is_loopback(host):
            raise ConfigError(
                f"--host {host}: a node reachable beyond this machine accepts associations only from named peers; "
                "give --calling-aet AET (the PACS's AE title), or bind to 127.0.0.1"
            )
        if not (0 < max_instance_mb <= max_inflight_mb < float("inf")):
            raise ConfigError("the instance and in-flight byte limits must be positive, the first within the second")
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
        self.max_instance_bytes, self.max_inflight_bytes = int(max_instance_mb * MB), int(max_inflight_mb * MB)
        self.drain_timeout = drain_timeout
        self._inflight = 0  # bytes of the instances being checked, queued or analysed
        self._inflight_lock = threading.Lock()

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
        from pynetdicom import _config, evt

        # Each incoming data set goes to a temporary file as it arrives, not into memory (three copies of it there):
        # its size is known before a byte of it is read back, and a 400 MB instance costs disk, not RAM.
        _config.STORE_RECV_CHUNKED_DATASET = True

        # pynetdicom's INFO / DEBUG output can show data sets; highdicom's INFO says which module it copies from where.
        for name in ("pynetdicom", "highdicom"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # pynetdicom and pydicom quote a peer's non-conformant UIDs in their warnings, newlines included: escaped
        # here, so that a UID cannot forge a log line. (A logger's filter sees only its own records: every module's.)
        for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("pynetdicom", "pydicom")]:
            lg = logging.getLogger(name)
            if not any(isinstance(f, _Escape) for f in lg.filters):
                lg.addFilter(_Escape())
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
        """Serve until SIGTERM or Ctrl-C, then drain (see the module docstring) and return."""
        self.start()
        stopping = threading.Event()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
        why = "SIGTERM"
        try:
            while not stopping.wait(1.0):
                pass
        except KeyboardInterrupt:
            why = "interrupt"
        finally:
            log.info("stopping (%s)", why)
            try:
                self.stop(self.drain_timeout)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)

    def pending(self) -> int:
        """Instances acknowledged and not yet finished (queued or being analysed)."""
        with self._idle:
            return self._jobs.qsize() + self._busy

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting associations, finish the acknowledged instances (up to ``timeout``), stop the workers;
        what could not be finished is logged by UID."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if n := self.pending():
            log.info("finishing %d acknowledged instance(s) before exiting (up to %.0f s)", n, timeout)
        if not self.wait_idle(timeout):
            dropped = []
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    dropped.append(job[1])
                    self._release(job[3])
                self._jobs.task_done()
            log.error("stopped after %.0f s with %d acknowledged instance(s) not analysed: %s", timeout,
                      len(dropped) + self._busy, ", ".join(dropped) or "(being analysed)")  # fmt: skip
        for _ in self._workers:
            self._jobs.put(None)
        for w in self._workers:
            w.join(timeout=5)
        c = self.counters
        log.info("stopped: %d received, %d refused, %d analysed, %d failed, %d files written, %d forwarded",
                 c.received, c.refused, c.analysed, c.failed, c.written, c.forwarded)  # fmt: skip

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
        if not valid_uid(sop_uid):
            # Never a file name, never logged as sent: a UID like "../../x" or one with a newline stops here.
            log.warning("refused an instance from %s with status 0x%04X: its Affected SOP Instance UID %s is not a "
                        "valid DICOM UID", _peer(event), INVALID_UID, visible(sop_uid[:80]))  # fmt: skip
            self.counters.add("refused")
            return INVALID_UID
        try:
            return self._accept(event, sop_uid)
        except Exception as exc:  # our own bug must still answer the sender and leave the association up
            log.error("instance %s from %s: internal error (%s)", sop_uid, _peer(event), type(exc).__name__)
            self.counters.add("refused")
            return INTERNAL_ERROR

    def _refuse(self, event, sop_uid: str, status: int, reason: str) -> int:
        # visible(): the reason may quote header text (a body part, a modality), which must not break the log line
        log.warning("refused %s from %s with status 0x%04X: %s", sop_uid, _peer(event), status, visible(reason))
        self.counters.add("refused")
        return status

    def _reserve(self, size: int) -> bool:
        with self._inflight_lock:
            if self._inflight + size > self.max_inflight_bytes:
                return False
            self._inflight += size
            return True

    def _release(self, size: int) -> None:
        with self._inflight_lock:
            self._inflight -= size

    def _accept(self, event, sop_uid: str) -> int:
        path = getattr(event.request, "_dataset_path", None)
        size = path.stat().st_size if path is not None else len(event.request.DataSet.getbuffer())
        if size > self.max_instance_bytes:
            return self._refuse(event, sop_uid, TOO_LARGE, f"{size / MB:,.0f} MB, over the limit of "
                                f"{self.max_instance_bytes / MB:,.0f} MB for one instance")  # fmt: skip
        if not self._reserve(size):
            return self._refuse(event, sop_uid, OUT_OF_RESOURCES, f"{size / MB:,.1f} MB would take the instances in "
                                f"flight over {self.max_inflight_bytes / MB:,.0f} MB (retry later)")  # fmt: skip
        queued = False
        try:
            data = path.read_bytes() if path is not None else event.encoded_dataset(include_meta=True)
            try:
                requested_class = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
                header = check_instance(data, sop_uid, requested_class)
            except Refusal as refusal:
                return self._refuse(event, sop_uid, refusal.status, refusal.reason)
            try:
                self._jobs.put_nowait((data, sop_uid, time.monotonic(), size))
            except queue.Full:
                return self._refuse(event, sop_uid, OUT_OF_RESOURCES, "queue full (out of resources, retry later)")
            queued = True
        finally:
            if not queued:
                self._release(size)
        log.info("accepted %s (study %s) from %s", sop_uid, header.StudyInstanceUID, _peer(event))
        return SUCCESS

    # --- workers ---

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.task_done()
                return
            size = job[3]
            with self._idle:
                self._busy += 1
            try:
                self._process(*job[:3])
            except Exception as exc:  # never lose the worker thread
                log.error("instance %s: internal error (%s)", job[1], type(exc).__name__)
                self.counters.add("failed")
            finally:
                job = None  # the instance's bytes go before the byte budget says so
                self._release(size)
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
            write_results(results, self.out_dir, results.source_sop_instance_uid)  # validated, equal to sop_uid
            self.counters.add("written", 2)
        if self.forward is not None:
            stored, not_stored = send_results(results, self.forward, self.ae_title)
            self.counters.add("forwarded", stored)
            self.counters.add("forward_failed", not_stored)


class _Escape(logging.Filter):
    """Rewrites a record's message with control characters escaped (:func:`pneumo.errors.visible`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg, record.args = visible(message), ()
        return True


def _peer(event) -> str:
    try:
        return visible(f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}")
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
