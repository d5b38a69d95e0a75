"""pneumo.atomic: an interrupted write never leaves a partial file under the real name, and leftovers go."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from pneumo import atomic


def test_content_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # and no temporary file is left
    atomic.write_text(target, "new\n")
    assert target.read_text() == "new\n"


def test_leftovers_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.onnx"
    script = (
        "import time, sys; from pneumo import atomic\n"
        "with atomic.atomic_open(sys.argv[1], 'wb') as f:\n"
        "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not target.exists()  # kill -9 mid-write: nothing under the real name
    (left,) = list(tmp_path.iterdir())
    assert left.name.startswith(".model.onnx.") and left.name.endswith(".partial")
    atomic.write_bytes(target, b"complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"] and target.read_bytes() == b"complete"


def test_a_failed_model_file_write_keeps_the_previous_model(tmp_path, tiny_model):
    from pneumo.modelfile import load_model_file, save_model_file

    mf = load_model_file(tiny_model)
    target = save_model_file(tmp_path / "m.pneumo", mf)
    before = target.read_bytes()
    broken = mf.model_copy(update={"weights": 12345})  # fails after meta.json and the graph are written
    with pytest.raises(TypeError):
        save_model_file(target, broken)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pneumo"]


def test_only_whole_file_modes():
    with pytest.raises(ValueError, match="whole files"), atomic.atomic_open("x", "a"):
        pass


def test_written_files_get_the_usual_mode(tmp_path):
    """mkstemp creates 0600: an output others could read with open() must not become private."""
    mask = os.umask(0o022)
    try:
        import importlib

        import pneumo.atomic

        importlib.reload(pneumo.atomic)
        pneumo.atomic.write_text(tmp_path / "out.csv", "a\n")
    finally:
        os.umask(mask)
        importlib.reload(pneumo.atomic)
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o644


def test_two_writers_of_one_target_both_complete(tmp_path):
    """A second writer (here nested in the first) must not delete the first one's temporary file (issue 25)."""
    target = tmp_path / "predictions.csv"
    with atomic.atomic_open(target) as f:
        f.write("first\n")
        atomic.write_text(target, "second\n")  # another writer of the same output, finishing first
    assert target.read_text() == "first\n"  # the last rename wins; neither writer failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    target = tmp_path / "out.csv"
    script = (
        "import time, sys; from pneumo import atomic\n"
        "with atomic.atomic_open(sys.argv[1]) as f:\n"
        "    f.write('a'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        atomic.write_text(target, "mine\n")
        assert len([p for p in tmp_path.iterdir() if p.name.endswith(".partial")]) == 1  # the other writer's
    finally:
        proc.kill()
        proc.wait(10)
