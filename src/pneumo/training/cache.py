"""Decode a list of images once into a memory-mapped uint8 array that training epochs read for free.

A cache lives in ``<cache_dir>/<key>/`` as ``images.npy`` (N x size x size uint8, opened with ``mmap_mode="r"``)
and ``index.json`` (paths, ok mask, error reasons). The key hashes every file's resolved path, size in bytes and
mtime together with the target size, so editing, replacing or reordering a file, or asking for another size,
gives a new cache. A build happens in a temporary folder renamed into place at the end: a killed build leaves a
``.tmp-*`` folder that is never mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo.imaging import ImageLoadError, load_image

CACHE_VERSION = 1
_IMAGES = "images.npy"
_INDEX = "index.json"
_CHUNK = 64  # images per task: big enough to amortise a task's overhead, small enough to balance two workers


def default_cache_dir() -> Path:
    """``$PNEUMO_CACHE_DIR`` if set, else ``~/.cache/pneumo``."""
    env = os.environ.get("PNEUMO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pneumo"


@dataclass
class DecodedCache:
    """Decoded images of one cache. ``images[i]`` is valid only where ``ok[i]``; the rest are zeros."""

    directory: Path
    key: str
    size: int
    paths: list[str]
    images: np.ndarray
    ok: np.ndarray
    errors: dict[str, str]
    reused: bool
    seconds: float

    def __len__(self) -> int:
        return len(self.paths)

    def reason(self, i: int) -> str:
        """Why image ``i`` could not be decoded (the loader's reason, without the path), or "" when it was."""
        if self.ok[i]:
            return ""
        why = self.errors.get(self.paths[i], "could not be decoded")
        return why.removeprefix(f"{self.paths[i]}: ")

    def float_image(self, i: int) -> np.ndarray:
        """Image ``i`` as float32 in [0, 1], like :func:`pneumo.imaging.load_image` returns it."""
        return self.images[i].astype(np.float32) / 255.0


def cache_key(paths: Sequence[str | os.PathLike[str]], size: int) -> tuple[list[str], str]:
    """Resolved paths and the hex key over (path, size, mtime_ns, bytes) of each file plus the target size."""
    h = hashlib.sha256(f"pneumo-cache-v{CACHE_VERSION}\0{size}\0".encode())
    resolved = []
    for p in paths:
        rp = str(Path(p).resolve())
        resolved.append(rp)
        try:
            st = os.stat(rp)
            stamp = f"{st.st_mtime_ns}\0{st.st_size}"
        except OSError:
            stamp = "missing"  # still hashed: the cache must change when the file appears
        h.update(f"{rp}\0{stamp}\n".encode())
    return resolved, h.hexdigest()[:32]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _decode_range(npy: str, paths: list[str], start: int, size: int) -> list[tuple[int, str]]:
    """Decode ``paths`` into rows ``start...`` of the .npy file; return (row, reason) for the failures."""
    # Each worker opens the array itself and writes its rows in place: no pixels travel back through a pipe.
    out = np.load(npy, mmap_mode="r+")
    failures = []
    for k, path in enumerate(paths):
        try:
            out[start + k] = _to_uint8(load_image(path, size))
        except ImageLoadError as exc:
            failures.append((start + k, str(exc)))
        except OSError as exc:  # vanished between hashing and decoding
            failures.append((start + k, f"{path}: cannot open ({exc.strerror or exc})"))
    out.flush()
    del out
    return failures


def _open(directory: Path, key: str, *, reused: bool, seconds: float) -> DecodedCache | None:
    try:
        index = json.loads((directory / _INDEX).read_text(encoding="utf-8"))
        images = np.load(directory / _IMAGES, mmap_mode="r")
    except (OSError, ValueError):
        return None
    n, size = len(index["paths"]), index["size"]
    if index.get("key") != key or index.get("version") != CACHE_VERSION or images.shape != (n, size, size):
        return None
    ok = np.asarray(index["ok"], dtype=bool)
    errors = {index["paths"][int(i)]: why for i, why in index["errors"].items()}
    return DecodedCache(directory, key, size, index["paths"], images, ok, errors, reused, seconds)


def build_cache(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int = 2,
) -> DecodedCache:
    """Decode ``paths`` at ``size`` x ``size`` into a uint8 memory map, or reopen the cache if it is still valid.

    Images that cannot be decoded are kept as zero rows with ``ok[i] = False`` and their reason in ``errors``.
    ``workers`` processes decode in parallel (``workers <= 1`` decodes in this process). ``cache_dir`` defaults to
    :func:`default_cache_dir`.
    """
    start = time.perf_counter()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    resolved, key = cache_key(paths, size)
    final = root / key
    if final.exists() and (cache := _open(final, key, reused=True, seconds=time.perf_counter() - start)):
        return cache

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        npy = str(tmp / _IMAGES)
        np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(len(resolved), size, size)).flush()
        chunks = [(i, resolved[i : i + _CHUNK]) for i in range(0, len(resolved), _CHUNK)]
        if workers <= 1 or len(chunks) <= 1:
            results = [_decode_range(npy, chunk, i, size) for i, chunk in chunks]
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_decode_range, npy, chunk, i, size) for i, chunk in chunks]
                results = [f.result() for f in futures]
        failures = dict(f for r in results for f in r)
        ok = [i not in failures for i in range(len(resolved))]
        index = {
            "version": CACHE_VERSION,
            "key": key,
            "size": size,
            "paths": resolved,
            "ok": ok,
            "errors": {str(i): why for i, why in sorted(failures.items())},
        }
        # The index is written last: a folder without it is never opened as a cache.
        (tmp / _INDEX).write_text(json.dumps(index), encoding="utf-8")
        if final.exists():  # a stale or corrupt cache under the same key; a valid one was returned above
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same cache first; theirs is as good as ours.
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cache = _open(final, key, reused=False, seconds=time.perf_counter() - start)
    if cache is None:
        raise RuntimeError(f"{final}: cache written but cannot be reopened")
    return cache
