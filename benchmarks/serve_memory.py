"""Memory of ``pneumo serve`` under hostile images: 8 concurrent uploads of a 7999 x 7999 RGBA PNG of zeros
(about 250 kB on the wire, 256 MB decoded) and a 7999 x 7999 16-bit grayscale PNG.

Starts a real server process on a free loopback port, samples its resident memory (RSS, from /proc) every 10 ms
while the uploads run, and prints its idle RSS before, the peak during each wave and the idle RSS after (with
the status codes the server answered). Targets: peak <= 600 MB, idle afterwards <= 300 MB.

    python benchmarks/serve_memory.py [--model M] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, start_server, stop_server, wait_healthy

SIDE = 7999


def _png(width: int, height: int, bit_depth: int, color_type: int, row: bytes) -> bytes:
    """A PNG whose every row is ``row``, written chunk by chunk so the 256 MB image never exists in memory."""
    import struct

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    z = zlib.compressobj(9)
    body = io.BytesIO()
    line = b"\0" + row  # filter type 0
    for _ in range(height):
        body.write(z.compress(line))
    body.write(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body.getvalue()) + chunk(b"IEND", b"")


def rgba_zeros() -> bytes:
    return _png(SIDE, SIDE, 8, 6, bytes(4 * SIDE))


def gray16() -> bytes:
    # a horizontal ramp over the whole 16-bit range, so the decode has real values to average
    ramp = (np.linspace(0, 65535, SIDE).astype(">u2")).tobytes()
    return _png(SIDE, SIDE, 16, 0, ramp)


def rss_mb(pid: int) -> float:
    """Resident memory of the process (VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """Samples a process's RSS in a background thread; ``peak`` is the largest value seen since ``reset``."""

    def __init__(self, pid: int, every: float = 0.01):
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(self.every)

    def reset(self) -> None:
        self.peak = 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wave(url: str, payload: bytes, name: str, n: int) -> tuple[list[int], float]:
    """``n`` concurrent uploads of ``payload``: (status codes, seconds)."""

    def one(_: int) -> int:
        with httpx.Client(base_url=url, timeout=120.0) as http:
            return http.post("api/v1/predict", files={"file": (name, payload, "image/png")}).status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(one, range(n)))
    return codes, time.perf_counter() - start


def settle(pid: int, seconds: float = 3.0) -> float:
    """Idle RSS after letting the server sit for ``seconds``."""
    time.sleep(seconds)
    return rss_mb(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file [default: bundled]")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    images = {"RGBA 7999x7999 zeros": rgba_zeros(), "16-bit 7999x7999 ramp": gray16()}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile() as log:
        proc = start_server(args.model, port, log)
        try:
            wait_healthy(url, proc, log)
            idle_before = settle(proc.pid, 1.0)
            print(f"idle RSS after start-up: {idle_before:.0f} MB")
            sampler = Sampler(proc.pid)
            overall = 0.0
            for label, payload in images.items():
                sampler.reset()
                codes, secs = wave(url, payload, "hostile.png", args.concurrency)
                overall = max(overall, sampler.peak)
                counts = {c: codes.count(c) for c in sorted(set(codes))}
                print(
                    f"{args.concurrency} x {label} ({len(payload) / 1024:.0f} kB): peak RSS {sampler.peak:.0f} MB, "
                    f"{secs:.1f} s, status {counts}"
                )
            sampler.stop()
            idle_after = settle(proc.pid)
            print(f"peak RSS over all waves: {overall:.0f} MB (target <= 600 MB)")
            print(f"idle RSS afterwards: {idle_after:.0f} MB (target <= 300 MB)")
        finally:
            stop_server(proc)


if __name__ == "__main__":
    main()
