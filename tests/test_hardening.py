"""Issue 11: hostile images, bad model files, odd file names, slow clients, cross-origin requests, one error type.

Every test here failed on main before the fix it covers (the planted-bug run is recorded in the issue's closing
note). Synthetic data only; the server tests start a real uvicorn on a loopback port.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import dicom_bytes, encode_png, png_header_only, truncated_jpeg
from pneumo import errors
from pneumo.cli import main
from pneumo.errors import DataError, ImageLoadError, ModelFileError, PneumoError, visible
from pneumo.imaging import DECODE_BUDGET, MAX_PIXELS, load_image

# --- helpers ---


def _xray(seed: int = 0, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy = np.linspace(0.2, 0.8, size)[:, None] * np.ones((1, size))
    return Image.fromarray((np.clip(yy + 0.1 * rng.standard_normal((size, size)), 0, 1) * 255).astype(np.uint8))


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- 1. decoding within a budget ---


def test_rgba_7999_square_is_refused_before_decoding():
    data = png_header_only(7999, 7999, 8, 6)  # RGBA: 256 MB once decoded, over the budget
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match=r"hostile.png: decoding this 7999x7999 RGBA image would need 244 MB"):
        load_image(data, 160, name="hostile.png")
    assert time.perf_counter() - start < 0.5  # refused from the header: nothing was inflated


def test_budget_fits_64_megapixel_grayscale():
    # the documented limits agree: 64 MP of 8- or 16-bit gray fits the budget, colour at 4 bytes a pixel does not
    assert MAX_PIXELS * 2 <= DECODE_BUDGET < MAX_PIXELS * 4


@pytest.mark.parametrize("dims", [(30000, 30000), (9000, 9000)])  # past Pillow's own 179 MP limit, and past ours
def test_pixel_limit_message_quotes_our_limit(dims):
    with pytest.raises(ImageLoadError) as info:
        load_image(png_header_only(*dims), name="bomb.png")
    msg = str(info.value)
    assert f"over the limit of {MAX_PIXELS:,}" in msg and "178956970" not in msg and "178,956,970" not in msg


@pytest.mark.parametrize("top, peak, scale", [(65535, 65535, 65535), (4095, 4095, 4095), (1000, 1024, 2047)])
def test_16bit_images_resize_as_the_8bit_image_of_their_levels(top, peak, scale):
    """A high-bit-depth image reaches the network's size exactly as the 8-bit image of its values on the bit range
    its data uses (16, 12 or 11 bits here) would: the brightest value is found over every strip (one pixel, in the
    last strip, makes the last case 11-bit, not 10-bit), and the resize is the 8-bit one training's copies had."""
    rng = np.random.default_rng(0)
    a = (rng.random((1003, 797)) * top).astype(np.uint16)  # ragged against every reduction factor
    a[-1, -1] = peak
    levels = np.rint(a / scale * 255).astype(np.uint8)
    for target in [(64, 50), (160, 160), (400, 300)]:
        np.testing.assert_array_equal(load_image(encode_png(a), target), load_image(encode_png(levels), target))


def test_the_same_picture_gives_the_same_pixels_in_every_format():
    """8-bit PNG, 16-bit PNG and 16-bit DICOM of one picture (levels x 257) give the network identical pixels (the
    float resize they had before gave P up to 0.05 apart on the originals)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:700, 0:600] / 700
    levels = np.clip(255 * (0.2 + 0.6 * yy + 0.1 * np.sin(40 * xx)) + rng.normal(0, 8, yy.shape), 0, 255)
    levels = levels.astype(np.uint8)
    wide = levels.astype(np.uint16) * 257
    png8 = load_image(encode_png(levels), 128)
    np.testing.assert_array_equal(load_image(encode_png(wide), 128), png8)
    window = {"WindowCenter": 32768, "WindowWidth": 65536}  # the full 16-bit range, linear
    np.testing.assert_array_equal(load_image(dicom_bytes(wide, BitsStored=16, HighBit=15, **window), 128), png8)


_PEAK_SCRIPT = """
import io, resource, sys, zlib, struct
import numpy as np
from pneumo.imaging import load_image
side = int(sys.argv[1])
def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
row = b"\\0" + np.linspace(0, 65535, side).astype(">u2").tobytes()
z = zlib.compressobj(1)
idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
png = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
png += chunk(b"IDAT", idat) + chunk(b"IEND", b"")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = load_image(png, 160)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert out.shape == (160, 160) and 0.4 < float(out.mean()) < 0.6
print((after - before) / 1024)
"""


def test_16bit_decode_costs_little_more_than_its_pixels():
    side = 5000  # 16-bit: 50 MB of pixels; main made uint16, float32 and resized float copies (~250 MB more)
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(side)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grown_mb = float(proc.stdout.strip())
    pixels_mb = side * side * 2 / 2**20
    assert grown_mb < 1.5 * pixels_mb, f"peak grew {grown_mb:.0f} MB for {pixels_mb:.0f} MB of pixels"


# --- 2. slow clients ---


class _Server:
    """A real uvicorn on a free loopback port, in a thread, with short request limits."""

    def __init__(self, app, request_timeout: float, idle_timeout: float):
        import uvicorn

        from pneumo.serve.upload import slow_client_protocol

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="info",
            http=slow_client_protocol(request_timeout, idle_timeout),
            timeout_keep_alive=1,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Send ``trickle`` one byte every 0.2 s; the time until the server closes the connection, or None."""
    start = time.monotonic()
    sock.settimeout(0.2)
    for i in range(int(seconds / 0.2)):
        if i < len(trickle):
            try:
                sock.sendall(trickle[i : i + 1])
            except OSError:
                return time.monotonic() - start
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
    return None


@pytest.fixture(scope="module")
def slow_server(tiny_model):
    from pneumo.serve.app import create_app

    with _Server(create_app(tiny_model), request_timeout=2.0, idle_timeout=1.0) as server:
        yield server


def test_trickling_upload_is_dropped_and_logged_as_info(slow_server, caplog):
    caplog.set_level(logging.INFO)
    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=x.png\r\n\r\n" + b"\0" * 400
    head = (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", slow_server.port)) as sock:
        sock.sendall(head)
        took = _closed_within(sock, 8.0, trickle=body)  # 5 bytes/s: never idle, never done
    assert took is not None and took < 4.0, "a 1-byte-per-0.2-s upload must be dropped after the 2 s limit"
    time.sleep(0.3)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pneumo.serve"]
    assert any(level == logging.INFO and "disconnected" in m for level, m in messages), messages
    assert not [m for level, m in messages if level >= logging.ERROR], messages


def test_half_sent_headers_and_silent_connections_are_dropped(slow_server):
    with socket.create_connection(("127.0.0.1", slow_server.port)) as sock:
        took = _closed_within(sock, 6.0, trickle=b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40)
    assert took is not None and took < 4.0
    with socket.create_connection(("127.0.0.1", slow_server.port)) as sock:
        took = _closed_within(sock, 6.0)  # says nothing at all
    assert took is not None and took < 3.0


def test_a_normal_request_on_the_timed_protocol_still_works(slow_server):
    import httpx

    url = f"http://127.0.0.1:{slow_server.port}"
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    files = {"file": ("x.png", encode_png(_xray()), "image/png")}
    assert httpx.post(url + "/api/v1/predict", files=files, timeout=60).status_code == 200


_RGBA_SCRIPT = """
import resource, struct, sys, zlib
from pneumo.imaging import ImageLoadError, load_image, probe_image
side = int(sys.argv[1])
def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
z = zlib.compressobj(1)
row = bytes(1 + 4 * side)
idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
png = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
png += chunk(b"IDAT", idat) + chunk(b"IEND", b"")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert probe_image(png).mode == "RGBA"
try:
    load_image(png, 160)
except ImageLoadError as exc:
    assert "budget" in str(exc), exc
else:
    raise SystemExit("not refused")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_real_rgba_png_over_budget_is_refused_without_decoding_it():
    # a well-formed 6000 x 6000 RGBA PNG of zeros (140 kB; 137 MB decoded): nothing may inflate it, not even the
    # EXIF lookup (Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixels)
    proc = subprocess.run([sys.executable, "-c", _RGBA_SCRIPT, "6000"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert float(proc.stdout.strip()) < 20, f"peak grew {proc.stdout.strip()} MB for a refused image"


def test_serve_answers_422_and_bounds_concurrent_decodes(tiny_model):
    import httpx

    from pneumo.serve.app import create_app, decode_slots

    app = create_app(tiny_model)
    analyser = app.state.analyser
    real, lock, state = analyser.analyse, threading.Lock(), {"now": 0, "max": 0}

    def counted(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(0.05)  # long enough for the requests to overlap if nothing held them back
            return real(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    analyser.analyse = counted
    with _Server(app, request_timeout=60, idle_timeout=30) as server:
        url = f"http://127.0.0.1:{server.port}/api/v1/predict"
        hostile = png_header_only(7999, 7999, 8, 6)
        resp = httpx.post(url, files={"file": ("h.png", hostile, "image/png")}, timeout=30)
        assert resp.status_code == 422 and "budget" in resp.json()["detail"]

        codes: list[int] = []

        def one() -> None:
            files = {"file": ("x.png", encode_png(_xray()), "image/png")}
            codes.append(httpx.post(url, files=files, timeout=60).status_code)

        threads = [threading.Thread(target=one) for _ in range(3 * decode_slots() + 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert codes == [200] * len(threads)
    assert 1 <= state["max"] <= decode_slots()


# --- 3. host names, origins, no paths in the card ---


@pytest.fixture(scope="module")
def guarded_client(tiny_model, tmp_path_factory):
    from fastapi.testclient import TestClient

    from pneumo.modelfile import load_model_file, save_model_file
    from pneumo.serve.app import create_app
    from pneumo.serve.upload import served_hosts

    mf = load_model_file(tiny_model)
    meta = mf.meta.model_copy(
        update={
            "data": {"data_dir": "/home/alice/secret/chest_xray/train", "train_images": 10},
            "validation": mf.meta.validation.updated(measured_on="internal validation: /home/alice/secret/split.csv"),
            "training": {"config": {"data_dir": "/home/alice/secret/chest_xray", "out": "/srv/runs/x", "epochs": 1}},
        }
    )
    old_style = save_model_file(tmp_path_factory.mktemp("m") / "old.pneumo", mf.model_copy(update={"meta": meta}))
    app = create_app(old_style, allowed_hosts=served_hosts("127.0.0.1"), allowed_origins=["https://viewer.example"])
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_only_served_host_names_are_answered(guarded_client):
    assert guarded_client.get("/api/v1/model").status_code == 200
    assert guarded_client.get("/api/v1/model", headers={"Host": "localhost:8000"}).status_code == 200
    assert guarded_client.get("/api/v1/model", headers={"Host": "evil.example"}).status_code == 400


def test_cross_origin_posts_are_refused_unless_allowed(guarded_client):
    files = {"file": ("x.png", encode_png(_xray()), "image/png")}
    resp = guarded_client.post("/api/v1/predict", files=files, headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403 and "--allow-origin" in resp.json()["detail"]
    same = guarded_client.post("/api/v1/predict", files=files, headers={"Origin": "http://127.0.0.1:8000"})
    assert same.status_code == 200
    allowed = guarded_client.post("/api/v1/predict", files=files, headers={"Origin": "https://viewer.example"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://viewer.example"
    assert guarded_client.post("/api/v1/predict", files=files).status_code == 200  # no Origin: not a browser page


def test_model_card_carries_no_path_of_the_training_machine(guarded_client):
    card = guarded_client.get("/api/v1/model").json()
    text = json.dumps(card)
    assert "/home/alice" not in text and "/srv/runs" not in text and "data_dir" not in card["data"]
    assert card["data"]["dataset"] == "train" and card["data"]["train_images"] == 10
    assert card["training"]["config"] == {"data_dir": "chest_xray", "out": "x", "epochs": 1}
    assert card["validation"]["measured_on"] == "internal validation: split.csv"


def test_served_hosts():
    from pneumo.serve.upload import served_hosts

    assert set(served_hosts("127.0.0.1")) == {"127.0.0.1", "localhost", "::1"}
    assert "xray.hospital.example" in served_hosts("10.1.2.3", ["xray.hospital.example"])
    assert "localhost" not in served_hosts("10.1.2.3")
    everywhere = served_hosts("0.0.0.0")
    assert socket.gethostname() in everywhere and "0.0.0.0" not in everywhere


# --- 6. model files that are not what they claim ---


def _with_member(src: Path, dst: Path, name: str, data: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, data if item.filename == name else zin.read(item.filename))
    return dst


def test_garbage_onnx_is_a_one_line_model_file_error(tiny_model, tmp_path, capsys):
    from pneumo.inference import Predictor
    from pneumo.serve.app import create_app

    bad = _with_member(tiny_model, tmp_path / "garbage.pneumo", "model.onnx", b"\x08\x07 not a protobuf" * 50)
    with pytest.raises(ModelFileError, match=r"garbage.pneumo: model.onnx is not a readable ONNX graph"):
        Predictor.load(bad)
    with pytest.raises(ModelFileError):
        create_app(bad)
    img = tmp_path / "x.png"
    _xray().save(img)
    assert main(["predict", str(img), "--model", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not a readable ONNX graph" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_member_size_is_checked_in_the_zip_directory_before_reading(tiny_model, tmp_path):
    from pneumo.modelfile import load_model_file

    path = tmp_path / "bomb.pneumo"
    path.write_bytes(tiny_model.read_bytes())
    raw = bytearray(path.read_bytes())
    # forge the central directory: model.onnx now declares 3.75 GiB uncompressed, as a zip bomb would
    at = raw.index(b"PK\x01\x02")  # the first central directory header; the fields are at fixed offsets
    while raw[at + 46 : at + 46 + struct.unpack_from("<H", raw, at + 28)[0]] != b"model.onnx":
        at = raw.index(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", raw, at + 24, 0xF0000000)  # the uncompressed size
    path.write_bytes(bytes(raw))
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"model.onnx declares 3,840 MB uncompressed, over the limit"):
        load_model_file(path)
    assert time.perf_counter() - start < 1.0
    assert load_model_file(path, parts=()).meta.arch == "cnn-small"  # the metadata alone still reads


# --- 8. and 9. file names and links ---


@pytest.fixture
def odd_folder(tmp_path):
    d = tmp_path / "a-rather-long-folder-name-that-would-wrap" / "scans"
    d.mkdir(parents=True)
    _xray(0).save(d / "good.png")
    latin1 = os.fsdecode(b"caf\xe9.png")  # not UTF-8: held as a surrogate escape by os.fsdecode
    _xray(1).save(d / latin1)
    _xray(2).save(d / "\x1b[31mred\x1b[0m.png")  # a terminal escape sequence in the name
    (d / "dangling.png").symlink_to(d / "gone.png")
    (d / "loop.png").symlink_to(d / "loop.png")
    return d


def test_odd_names_are_written_losslessly_and_links_get_rows(odd_folder, tiny_model, tmp_path):
    out = tmp_path / "out.csv"
    assert main(["predict", str(odd_folder), "-m", str(tiny_model), "-o", str(out)]) == 3  # the links fail
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {"good.png", "caf\\xe9.png", "\\x1b[31mred\\x1b[0m.png", "dangling.png", "loop.png"}
    for name in ("good.png", "caf\\xe9.png", "\\x1b[31mred\\x1b[0m.png"):
        assert rows[name]["error"] == "" and rows[name]["prediction"] in ("NORMAL", "PNEUMONIA")
    assert "broken symbolic link" in rows["dangling.png"]["error"]
    assert "symbolic link loop" in rows["loop.png"]["error"]
    js = tmp_path / "out.json"
    assert main(["predict", str(odd_folder), "-m", str(tiny_model), "-o", str(js)]) == 3
    assert sorted(Path(i["path"]).name for i in json.loads(js.read_text(encoding="utf-8"))) == sorted(rows)


def test_table_escapes_names_and_shows_them_from_the_input_folder(odd_folder, tiny_model, capsys):
    assert main(["predict", str(odd_folder), "-m", str(tiny_model)]) == 3
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\\x1b[31mred" in shown and "caf\\xe9.png" in shown
    assert "scans/good.png" in shown and str(odd_folder.parent) not in shown


def test_visible_is_lossless():
    names = [b"caf\xe9.png", b"a\\x41.png", b"\x1b[2J.png", "ünïcode.png".encode(), b"tab\there.png"]
    shown = [visible(os.fsdecode(n)) for n in names]
    assert len(set(shown)) == len(names) and all(s.isprintable() for s in shown)
    assert shown[0] == "caf\\xe9.png" and shown[1] == "a\\\\x41.png" and shown[3] == "ünïcode.png"


# --- 10. inspect --verify ---


def _dataset_with_a_truncated_jpeg(root: Path) -> Path:
    for c in ("NORMAL", "PNEUMONIA"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            _xray(i).save(root / c / f"IM-000{i}-0001.png")
    truncated_jpeg(root / "PNEUMONIA" / "person9_bacteria_1.jpeg")
    return root


def test_inspect_verify_finds_damage_past_the_header(tmp_path, capsys):
    from pneumo.inspect_report import inspect_dataset

    root = _dataset_with_a_truncated_jpeg(tmp_path / "ds")
    assert inspect_dataset(root).unreadable == []  # the header pass alone cannot see it
    seen = []
    report = inspect_dataset(root, verify=True, progress=lambda n, total: seen.append((n, total)))
    assert [(u.path, "truncated" in u.reason) for u in report.unreadable] == [
        ("PNEUMONIA/person9_bacteria_1.jpeg", True)
    ]
    assert report.verified and sum(n for n, _ in seen) == 7 and {t for _, t in seen} == {7}
    assert inspect_dataset(root, verify=None).verified  # on by default for a small folder
    assert main(["data", "inspect", str(root)]) == 0
    text = capsys.readouterr().out
    assert "unreadable: 1 (every image decoded)" in text and "truncated" in text
    assert main(["data", "inspect", str(root), "--no-verify"]) == 0
    assert "unreadable: 0" in capsys.readouterr().out


# --- 11. training on a folder with unreadable images ---


def _train_folder(root: Path, bad: int) -> Path:
    for c in ("NORMAL", "PNEUMONIA"):
        (root / c).mkdir(parents=True)
        for i in range(40):
            _xray(i, 40).save(root / c / f"person{i}_{'bacteria' if c == 'PNEUMONIA' else 'x'}_{i}.png")
    for i in range(bad):
        (root / "PNEUMONIA" / f"person{100 + i}_virus_{i}.png").write_bytes(b"not an image at all")
    return root


def test_training_data_warns_records_and_fails_on_unreadable_images(tmp_path, caplog):
    pytest.importorskip("lightning")
    from pneumo.config import TrainConfig
    from pneumo.training.splits import MAX_SKIPPED_FRACTION, load_splits

    root = _train_folder(tmp_path / "few", bad=1)
    cfg = TrainConfig(data_dir=root, out=tmp_path / "run", arch="cnn-small", image_size=32, cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="pneumo.training.train"):
        _, _, summary = load_splits(cfg)
    assert summary["skipped_files"] == {"count": 1, "files": ["PNEUMONIA/person100_virus_0.png"]}
    assert summary["dataset"] == "few" and "data_dir" not in summary
    assert str(tmp_path) not in json.dumps(summary)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping 1 unreadable image of 81" in warning and "not an image" in warning

    n_bad = int(80 * MAX_SKIPPED_FRACTION / (1 - MAX_SKIPPED_FRACTION)) + 2
    many = _train_folder(tmp_path / "many", bad=n_bad)
    with pytest.raises(DataError, match=rf"{n_bad} of {80 + n_bad} images .* cannot be read, more than the 2%"):
        load_splits(cfg.model_copy(update={"data_dir": many}))


def test_without_paths_keeps_names_only():
    from pneumo.modelfile import without_paths

    cfg = {"data_dir": "/data/chest_xray", "out": "/runs/a", "cache_dir": None, "split_csv": "/x/s.csv", "lr": 1e-3,
           "augment": {"lung_atlas": "/data/lung_masks/atlas_224.png", "lung_atlas_level": 0.1}}  # fmt: skip
    assert without_paths(cfg) == {
        "data_dir": "chest_xray",
        "out": "a",
        "cache_dir": None,
        "split_csv": "s.csv",
        "lr": 1e-3,
        "augment": {"lung_atlas": "atlas_224.png", "lung_atlas_level": 0.1},
    }
    assert cfg["augment"]["lung_atlas"] == "/data/lung_masks/atlas_224.png"  # the config itself is left as it was


# --- 13. one error hierarchy ---


def test_every_library_error_is_a_pneumo_error():
    from pneumo import imaging, modelfile

    assert imaging.ImageLoadError is ImageLoadError and modelfile.ModelFileError is ModelFileError
    for cls in (ImageLoadError, ModelFileError, DataError, errors.ConfigError, errors.MissingExtraError):
        assert issubclass(cls, PneumoError)
    export = pytest.importorskip("pneumo.training.export")
    assert issubclass(export.ExportError, PneumoError)


def test_cli_reports_export_errors_in_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    export = pytest.importorskip("pneumo.training.export")

    def failing(model, output):
        raise export.ExportError("ONNX logits differ from PyTorch by 3.1e-02 (tolerance 0.001)")

    monkeypatch.setattr(export, "export_model", failing)
    assert main(["export", "--model", str(tiny_model), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "error: ONNX logits differ" in err and "Traceback" not in err


def test_cli_lets_genuine_bugs_surface(monkeypatch):
    import pneumo.modelfile

    def buggy(model=None, **kw):
        raise RuntimeError("a bug in our own code")

    monkeypatch.setattr(pneumo.modelfile, "load_model_file", buggy)  # what `pneumo info` reads the file with
    with pytest.raises(RuntimeError, match="a bug in our own code"):
        main(["info"])


def test_missing_extra_is_named(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "pneumo.serve.app", raising=False)  # imported afresh by the command
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the 'serve' extra were not installed
    assert main(["serve", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert "needs the 'serve' extra (fastapi is not installed): pip install 'pneumo[serve]'" in err
    assert "Traceback" not in err
    assert "reinstall pneumo" in str(errors.missing_extra(ModuleNotFoundError("x", name="onnxruntime")))
    assert errors.missing_extra(ModuleNotFoundError("x", name="pneumo.typo")) is None  # our own bug: re-raised


# --- 12. exact resume ---


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    import torch

    from pneumo.config import TrainConfig
    from pneumo.training.train import PneumoModule, checkpoint_net_state, fit

    data = _train_folder(tmp_path / "ds", bad=0)
    base = {
        "data_dir": data, "arch": "cnn-small", "pretrained": False, "image_size": 32, "epochs": 3, "batch_size": 8,
        "threads": 1, "cache_dir": tmp_path / "cache", "val_fraction": 0.25, "patience": 100,
    }  # fmt: skip
    whole = fit(TrainConfig(**base, out=tmp_path / "whole"))

    class Killed(Exception):
        pass

    def die_in_epoch_2(self):  # as if the process were killed once epoch 1's checkpoint was written
        if self.current_epoch == 2:
            raise Killed

    cfg = TrainConfig(**base, out=tmp_path / "parts")
    with monkeypatch.context() as m:
        m.setattr(PneumoModule, "on_train_epoch_start", die_in_epoch_2, raising=False)
        with pytest.raises(Killed):
            fit(cfg)
    assert torch.load(cfg.out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    resumed = fit(cfg, resume=True)

    # the same trajectory: every epoch's validation figures, and the weights of the model file (best epoch)
    assert _val_rows(tmp_path / "whole") == _val_rows(cfg.out)
    a = checkpoint_net_state(str(tmp_path / "whole/checkpoints/best.ckpt"))
    b = checkpoint_net_state(str(cfg.out / "checkpoints/best.ckpt"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst == 0.0, f"largest weight difference {worst}"
    ma, mb = load_model_file_meta(whole), load_model_file_meta(resumed)
    assert ma.threshold == mb.threshold and ma.temperature == mb.temperature
    timing = json.loads((cfg.out / "timing.json").read_text())
    assert timing["train_seconds_before_resume"] > 0
    assert timing["train_seconds"] >= timing["train_seconds_before_resume"]


def _val_rows(run: Path) -> list[tuple[str, str, str]]:
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        return [(r["epoch"], r["val_loss"], r["val_auc_worst"]) for r in csv.DictReader(f) if r.get("val_loss")]


def load_model_file_meta(path):
    from pneumo.modelfile import read_meta

    return read_meta(path)
