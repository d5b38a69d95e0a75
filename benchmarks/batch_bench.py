"""``pneumo batch`` against ``pneumo predict``, fp32 and INT8, on the 5,216 training JPEGs; the cost of --resume.

Usage: python benchmarks/batch_bench.py [--model M] [--int8-model M8 | --split-csv split.csv] [--data ../shared/data]

Every end-to-end figure is one whole process (start-up, decoding, the network, writing), which is what a user
waits for; the Ray rows include starting the local Ray runtime. Without --int8-model, an INT8 model is made
with ``pneumo export --int8`` (needs --split-csv, from ``pneumo data split DATA/chest_xray/train --val-fraction
0.1 --seed 0``) and its parity figures are printed. Prints figures; asserts nothing. Loads both cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def _pneumo() -> list[str]:
    exe = shutil.which("pneumo")
    return [exe] if exe else [sys.executable, "-m", "pneumo.cli"]


def _timed(args: list[str]) -> tuple[float, int, str]:
    t = time.perf_counter()
    proc = subprocess.run(_pneumo() + args, capture_output=True, text=True)
    return time.perf_counter() - t, proc.returncode, proc.stdout + proc.stderr


def model_only(model_path: Path, repeats: int = 10) -> float:
    """Images/s of the network alone (every test-time view of an image counted as part of that image)."""
    from pneumo.inference import Predictor
    from pneumo.preprocess import views

    pred = Predictor.load(model_path)
    x = np.random.default_rng(0).standard_normal((BATCH, 1, pred.size, pred.size)).astype(np.float32)
    pred._run(x)
    best = min(_once(pred, x) for _ in range(repeats))
    return BATCH / best / len(views(pred.meta.preprocessing))


def _once(pred, x) -> float:
    t = time.perf_counter()
    pred._run(x)
    return time.perf_counter() - t


def make_int8(model: Path | None, data: Path, split_csv: Path, out: Path) -> Path:
    seconds, rc, text = _timed(
        ["export", "--int8", "--calibration-data", str(data), "--split-csv", str(split_csv), "-o", str(out)]
        + (["--model", str(model)] if model else [])
    )
    print(f"pneumo export --int8: {seconds:.0f} s, exit {rc}: {text.strip().splitlines()[-1] if text else ''}")
    if rc != 0:
        raise SystemExit("the INT8 model was refused or failed; see above")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="fp32 model [default: the bundled model]")
    ap.add_argument("--int8-model", type=Path, default=None)
    ap.add_argument("--split-csv", type=Path, default=None, help="to make the INT8 model when none is given")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    args = ap.parse_args(argv)

    from pneumo.modelfile import resolve_model_path

    folder = args.data / "chest_xray" / "train"
    if not folder.is_dir():
        print(f"{folder} not found: nothing to measure (pass --data)")
        return 1
    files = [p for p in folder.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"}]
    n = len(files)
    for p in files:  # every run reads from the page cache: the first one would otherwise pay the disk for all
        p.read_bytes()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; other processes slow every row alike)")
    tmp = Path(tempfile.mkdtemp(prefix="pneumo-batch-bench-"))
    fp32 = resolve_model_path(args.model)
    models = {"fp32": fp32}
    if args.int8_model:
        models["int8"] = args.int8_model
    elif args.split_csv:
        models["int8"] = make_int8(args.model, folder, args.split_csv, tmp / "int8.pneumo")
    else:
        print("no --int8-model and no --split-csv: INT8 rows skipped")

    rows: list[tuple[str, str, float, float | None]] = []  # (what, precision, seconds, images/s)
    speeds: dict[tuple[str, str], float] = {}
    for prec, path in models.items():
        speeds[("model", prec)] = model_only(path)
        rows.append(("model only, ONNX Runtime, batch 16", prec, float("nan"), speeds[("model", prec)]))
        runs = [("predict", ["predict", str(folder), "-m", str(path), "-o", str(tmp / f"p-{prec}.csv")])]
        runs.append(("batch --engine local", ["batch", str(folder), "-m", str(path), "-o", str(tmp / f"l-{prec}")]))
        if not args.no_ray:
            runs.append(
                (
                    "batch --engine ray",
                    ["batch", str(folder), "-m", str(path), "-o", str(tmp / f"r-{prec}"), "--engine", "ray"],
                )
            )
        for what, cmd in runs:
            seconds, rc, text = _timed(cmd)
            if rc not in (0, 3):
                print(f"{what} ({prec}) failed with exit {rc}: {text.strip()[-400:]}")
                continue
            speeds[(what, prec)] = n / seconds
            rows.append((what, prec, seconds, n / seconds))
            inner = re.search(r"in ([\d.]+) s, ([\d.]+) images/s", text)
            if inner and what.startswith("batch"):
                print(f"{what} ({prec}): {seconds:.1f} s whole process, {inner.group(1)} s inside the run")
    if ("batch --engine local", "fp32") in speeds:
        seconds, rc, text = _timed(["batch", str(folder), "-m", str(fp32), "-o", str(tmp / "l-fp32"), "--resume"])
        rows.append(("batch --resume on the finished run", "fp32", seconds, None))

    print(f"\n{n} JPEGs of {folder}; model {fp32.name}; load average after: {os.getloadavg()[0]:.2f}\n")
    print("| run | precision | seconds | images/s | × predict (same precision) |")
    print("|---|---|---:|---:|---:|")
    for what, prec, seconds, ips in rows:
        ref = speeds.get(("predict", prec))
        ratio = f"{ips / ref:.2f}" if ips and ref and not what.startswith("model") else ""
        sec = "" if seconds != seconds else f"{seconds:.1f}"
        print(f"| {what} | {prec} | {sec} | {'' if ips is None else f'{ips:.1f}'} | {ratio} |")
    if "int8" in models:
        for what in ("model", "predict", "batch --engine local", "batch --engine ray"):
            if (what, "int8") in speeds and (what, "fp32") in speeds:
                print(f"INT8 / fp32, {what}: {speeds[(what, 'int8')] / speeds[(what, 'fp32')]:.2f}")
    ray, local = speeds.get(("batch --engine ray", "fp32")), speeds.get(("batch --engine local", "fp32"))
    if ray and local:
        print(f"ray / local (fp32): {ray / local:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
