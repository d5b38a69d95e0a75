"""Load test of ``pneumo serve``: 16 concurrent clients x 50 requests each POSTing one real X-ray.

Starts the server as a subprocess on a free loopback port, prints errors (should be 0), p50 / p99 latency and
requests per second, then stops it. Bounded: at most CLIENTS x REQUESTS requests and --time-limit seconds.

    python benchmarks/serve_load.py --model runs/x/model.pneumo [--image some.jpeg] [--explain]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data")) / "chest_xray_fullres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path | None, port: int, log: IO[bytes]) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from pneumo.cli import main; sys.exit(main(sys.argv[1:]))", "serve"]
    cmd += ["--port", str(port)] + (["--model", str(model)] if model else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, log: IO[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited early:\n{log.read().decode(errors='replace')}")
        try:
            if httpx.get(url + "healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(url: str, image: bytes, name: str, clients: int, requests: int, explain: bool, time_limit: float):
    """(latencies in s, error descriptions, wall time in s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60.0) as http:
            for _ in range(requests):
                if time.monotonic() > deadline:
                    with lock:
                        errors.append("time limit reached")
                    return
                t0 = time.perf_counter()
                try:
                    resp = http.post("api/v1/predict", files={"file": (name, image)}, data={"explain": str(explain)})
                    ok = resp.status_code == 200 and resp.json().get("probability") is not None
                    problem = None if ok else f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                dt = time.perf_counter() - t0
                with lock:
                    if problem is None:
                        latencies.append(dt)
                    else:
                        errors.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file [default: the bundled model]")
    ap.add_argument("--image", type=Path, default=None, help=f"X-ray to POST [default: one from {DEFAULT_IMAGES}]")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--explain", action="store_true", help="ask for heat maps too")
    ap.add_argument("--time-limit", type=float, default=600.0, help="stop sending after this many seconds")
    args = ap.parse_args(argv)

    image_path = args.image or next(iter(sorted(DEFAULT_IMAGES.rglob("*.jpeg"))), None)
    if image_path is None or not image_path.is_file():
        raise SystemExit(f"no X-ray to send: pass --image (looked in {DEFAULT_IMAGES})")
    image = image_path.read_bytes()

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # The server's log would interleave with the figures; it goes to an unnamed temporary file (a pipe nobody
    # reads could fill up and stall the server) and is shown only if the server dies.
    with tempfile.TemporaryFile() as log:
        proc = start_server(args.model, port, log)
        try:
            wait_healthy(url, proc, log)
            warm = {"file": (image_path.name, image)}
            httpx.post(url + "api/v1/predict", files=warm, data={"explain": str(args.explain)}, timeout=60.0)
            lat, errors, wall = run_load(
                url, image, image_path.name, args.clients, args.requests, args.explain, args.time_limit
            )
        finally:
            stop_server(proc)

    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    print(f"model       {args.model or 'bundled'}")
    print(f"image       {image_path.name} ({len(image) / 1024:.0f} kB){'  + heat map' if args.explain else ''}")
    print(f"clients     {args.clients} x {args.requests} requests on {os.cpu_count()} CPUs")
    print(f"ok          {len(lat)}")
    print(f"errors      {len(errors)}{'  ' + ', '.join(sorted(set(errors))) if errors else ''}")
    print(f"latency     p50 {np.percentile(ms, 50):.0f} ms   p99 {np.percentile(ms, 99):.0f} ms")
    print(f"throughput  {len(lat) / wall:.1f} requests/s over {wall:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
