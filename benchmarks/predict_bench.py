"""Prediction throughput: model-only ONNX Runtime, end-to-end ``pneumo predict``, and PyTorch eager.

Usage: python benchmarks/predict_bench.py [--model M] [--data ../shared/data]

Prints figures; asserts nothing. End-to-end runs time the whole ``pneumo predict`` process (start-up, decoding,
preprocessing, the network and writing the CSV), which is what a user waits for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def _default_model() -> Path | None:
    bundled = REPO / "src" / "pneumo" / "assets" / "default.pneumo"
    return bundled if bundled.is_file() else None


def _best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (the least disturbed by other processes)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def model_only_ort(model, repeats: int = 10) -> float:
    from pneumo.inference import Predictor

    pred = Predictor(model)
    x = np.random.default_rng(0).standard_normal((BATCH, 1, pred.size, pred.size)).astype(np.float32)
    return BATCH / _best_of(lambda: pred._run(x), repeats)


def torch_eager(model, repeats: int = 10) -> float:
    import torch

    from pneumo.training.export import torch_twin

    torch.set_num_threads(2)
    net = torch_twin(model).to(memory_format=torch.channels_last)
    size = model.meta.preprocessing.image_size
    x = torch.randn(BATCH, 1, size, size).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            net.forward_with_features(x)

    return BATCH / _best_of(run, repeats)


def end_to_end(model_path: Path, inputs: list[Path], count: int) -> tuple[float, float, int]:
    """(images/s, seconds, exit code) of one ``pneumo predict`` process over ``inputs``."""
    out = Path(tempfile.gettempdir()) / "pneumo_bench_predict.csv"
    pneumo = shutil.which("pneumo")
    cmd = [pneumo] if pneumo else [sys.executable, "-m", "pneumo.cli"]
    cmd += ["predict", *map(str, inputs), "--model", str(model_path), "--output", str(out)]
    t = time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    seconds = time.perf_counter() - t
    return count / seconds, seconds, rc


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in {".jpeg", ".jpg", ".png"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file or run dir [default: bundled model]")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args(argv)

    from pneumo.modelfile import ModelFileError, load_model_file

    model_path = args.model or _default_model()
    if model_path is None:
        print("no --model given and no bundled default model at src/pneumo/assets/default.pneumo")
        return 1
    try:
        model = load_model_file(model_path)
    except ModelFileError as exc:
        print(f"cannot load the model: {exc}")
        return 1
    m = model.meta
    print(f"model: {model.path} ({m.arch}, {m.preprocessing.image_size}px, {m.params:,} params)")
    print(f"machine: {os.cpu_count()} CPUs visible, affinity {len(os.sched_getaffinity(0))}; batch {BATCH}")

    from pneumo.preprocess import views

    n_views = len(views(m.preprocessing))  # the network runs once per view, the guard's included
    ort_ips = model_only_ort(model)
    print(f"model-only ONNX Runtime:   {ort_ips:9.1f} network passes/s")
    if n_views > 1:  # the network runs once per test-time view; the guard's view is one of them
        print(
            f"  with the model's {n_views} test-time views {m.preprocessing.content_scales}: "
            f"{ort_ips / n_views:9.1f} images/s"
        )
        ort_ips /= n_views
    eager_ips = None
    if model.weights is not None:
        eager_ips = torch_eager(model)
        print(f"PyTorch eager (2 threads): {eager_ips:9.1f} images/s")
        print(f"ratio ORT / eager:         {ort_ips / eager_ips:9.2f}")
    else:
        print("PyTorch eager: skipped (the model file has no PyTorch weights)")

    sets = [
        ("Kermany train JPEGs", args.data / "chest_xray" / "train"),
        ("full-size JPEGs", args.data / "chest_xray_fullres"),
    ]
    found = False
    for label, folder in sets:
        if not folder.is_dir():
            print(f"end-to-end {label}: skipped ({folder} not found)")
            continue
        found = True
        n = _count(folder)
        ips, seconds, rc = end_to_end(model.path, [folder], n)
        status = "" if rc == 0 else f"  (exit code {rc})"
        print(f"end-to-end pneumo predict, {label} ({n} files): {ips:7.1f} images/s, {seconds:.1f} s{status}")
        print(f"  ratio end-to-end / model-only: {ips / ort_ips:.3f}")
    if not found:
        print(f"no data under {args.data}: end-to-end figures skipped (pass --data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
