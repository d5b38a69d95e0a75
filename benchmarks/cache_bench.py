"""Time the decoded cache on the 5,216 Kermany training images: a cold build, then a warm reopen.

    python benchmarks/cache_bench.py [--size 224] [--workers 2] [--data ../shared/data/chest_xray/train]

Prints figures only; nothing is asserted. The cache goes to a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from pneumo.data import scan_dataset
from pneumo.training.cache import build_cache

DEFAULT_DATA = Path(
    os.environ.get("PNEUMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
).joinpath("chest_xray", "train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"data not found at {args.data}; set PNEUMO_SHARED_DATA or pass --data. Nothing to measure.")
        return 0

    paths = [r.path for r in scan_dataset(args.data).records]
    n = len(paths)
    with tempfile.TemporaryDirectory(prefix="pneumo-cache-bench-") as tmp:
        t0 = time.perf_counter()
        cold = build_cache(paths, args.size, tmp, workers=args.workers)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = build_cache(paths, args.size, tmp, workers=args.workers)
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = int(warm.images.sum(dtype="uint64"))  # touch every page once, as the first epoch would
        t_read = time.perf_counter() - t0
        mb = warm.images.nbytes / 1e6

    print(f"{n} images at {args.size}x{args.size}, workers={args.workers}, cpus={os.cpu_count()}")
    print(
        f"cold build : {t_cold:7.2f} s  {n / t_cold:8.0f} images/s  ({int(cold.ok.sum())} ok, {len(cold.errors)} bad)"
    )
    print(f"warm reopen: {t_warm:7.3f} s  {n / t_warm:8.0f} images/s  (reused={warm.reused}; hashes {n} file stats)")
    print(f"full read  : {t_read:7.3f} s  {mb:.0f} MB from the memory map (checksum {total})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
