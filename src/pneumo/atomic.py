"""Atomic file writes (git's lock files, pip's ``adjacent_tmp_file``): a killed run never leaves a half-written
output under the real name.

Data goes to a hidden temporary file in the target's folder, is flushed and fsynced, then renamed over the target
(a rename within one file system is atomic). Each temporary name is unique and carries the writer's process id,
so two writers of one target never touch each other's file: the last rename wins, both complete. Temporary files
that a killed earlier write left behind (their process is gone, or they are a day old) are removed the next time
the same target is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_SUFFIX = ".partial"
_STALE_SECONDS = 24 * 3600  # a temporary file this old is a leftover even if its process id was reused


def _prefix(path: Path) -> str:
    return f".{path.name}."


def _writer_alive(pid_text: str) -> bool:
    """Whether the process that named a temporary file still runs (a pid-less name is an older version's)."""
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # another thread of this process is writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to another user
        return True
    return True


def _clean_leftovers(path: Path) -> None:
    prefix = _prefix(path)
    for stale in path.parent.glob(f"{prefix}*{_SUFFIX}"):
        pid_text = stale.name[len(prefix) :].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if not _writer_alive(pid_text) or time.time() - stale.stat().st_mtime > _STALE_SECONDS:
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
    # mkstemp's random part makes the name unique; the pid lets a later write tell a live writer from a dead one.
    fd, tmp = tempfile.mkstemp(prefix=f"{_prefix(path)}{os.getpid()}-", suffix=_SUFFIX, dir=path.parent)
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
