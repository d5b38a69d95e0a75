"""The decoded uint8 cache: same pixels as load_image, reused when valid, rebuilt when a file changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumo.training.cache as cache_mod
from pneumo.imaging import load_image
from pneumo.training.cache import build_cache, default_cache_dir

SIZE = 16


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, fmt in enumerate(["PNG", "JPEG", "PNG", "JPEG"]):
        p = tmp_path / "img" / f"person{i}_virus_{i}.{fmt.lower()}"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(p, format=fmt)
        paths.append(p)
    empty = tmp_path / "img" / "empty.jpeg"
    empty.write_bytes(b"")
    text = tmp_path / "img" / "text.png"
    text.write_text("not an image")
    return [paths[0], empty, paths[1], paths[2], text, paths[3]]


def _forbid_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "load_image", boom)


def test_cache_matches_load_image_and_marks_bad_files(files: list[Path], tmp_path: Path) -> None:
    cache = build_cache(files, SIZE, tmp_path / "cache", workers=1)
    assert not cache.reused
    assert cache.images.shape == (6, SIZE, SIZE) and cache.images.dtype == np.uint8
    assert cache.ok.tolist() == [True, False, True, True, False, True]
    assert sorted(Path(p).name for p in cache.errors) == ["empty.jpeg", "text.png"]
    assert all(Path(p).name in why for p, why in cache.errors.items())  # the reason names the file
    for i in np.flatnonzero(cache.ok):
        expected = load_image(files[i], SIZE)
        np.testing.assert_allclose(cache.float_image(i), expected, atol=0.5 / 255 + 1e-6)
    assert not cache.images[1].any()
    assert cache.paths == [str(p.resolve()) for p in files]


def test_cache_reused_without_decoding(files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_cache(files, SIZE, tmp_path / "cache", workers=1)
    npy = first.directory / "images.npy"
    stamp = npy.stat().st_mtime_ns
    _forbid_decode(monkeypatch)
    second = build_cache(files, SIZE, tmp_path / "cache", workers=1)
    assert second.reused and second.directory == first.directory
    assert npy.stat().st_mtime_ns == stamp
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    np.testing.assert_array_equal(second.images, first.images)
    assert second.errors == first.errors


def test_cache_invalidated_by_mtime_and_size(files: list[Path], tmp_path: Path) -> None:
    first = build_cache(files, SIZE, tmp_path / "cache", workers=1)
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = build_cache(files, SIZE, tmp_path / "cache", workers=1)
    assert not touched.reused and touched.key != first.key
    resized = build_cache(files, SIZE * 2, tmp_path / "cache", workers=1)
    assert not resized.reused and resized.images.shape == (6, SIZE * 2, SIZE * 2)


def test_cache_parallel_equals_serial(files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "_CHUNK", 2)  # several chunks over the two worker processes
    serial = build_cache(files, SIZE, tmp_path / "a", workers=1)
    parallel = build_cache(files, SIZE, tmp_path / "b", workers=2)
    np.testing.assert_array_equal(parallel.images, serial.images)
    assert parallel.ok.tolist() == serial.ok.tolist() and parallel.errors == serial.errors


def test_interrupted_build_leaves_no_cache(files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = cache_mod.load_image
    calls = []

    def dies_on_third(path, size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache_mod, "load_image", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_cache(files, SIZE, tmp_path / "cache", workers=1)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(cache_mod, "load_image", real)
    assert not build_cache(files, SIZE, tmp_path / "cache", workers=1).reused


def test_corrupt_cache_is_rebuilt(files: list[Path], tmp_path: Path) -> None:
    first = build_cache(files, SIZE, tmp_path / "cache", workers=1)
    (first.directory / "index.json").write_text("{truncated")
    again = build_cache(files, SIZE, tmp_path / "cache", workers=1)
    assert not again.reused and again.ok.tolist() == first.ok.tolist()


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PNEUMO_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "pneumo"
