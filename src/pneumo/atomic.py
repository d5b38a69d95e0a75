"""Atomic file writes (git's lock files, pip's ``adjacent_tmp_file``): a killed run never leaves a half-written
output under the real name.

Data goes to a hidden temporary file in the target's folder, is flushed and fsynced, then renamed over the target
(a rename within one file system is atomic). Temporary files that a killed earlier write left behind are removed
the next time the same target is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_SUFFIX = ".partial"


def _prefix(path: Path) -> str:
    return f".{path.name}."


def _clean_leftovers(path: Path) -> None:
    for stale in path.parent.glob(f"{_prefix(path)}*{_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes files
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` whose content appears under ``path`` only when the block ends without an error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=_SUFFIX, dir=path.parent)
    try:
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a written output gets open()'s usual mode
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)
