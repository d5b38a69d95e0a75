"""The REST API and page of ``pneumo serve``, in-process through FastAPI's TestClient, on real (tiny) model files."""

from __future__ import annotations

import base64
import io
import logging
import re
import sys
import tempfile
import threading
from urllib.parse import urljoin

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import dicom_bytes
from pneumo.inference import Predictor
from pneumo.modelfile import ModelFileError
from pneumo.serve.app import STATIC, create_app

PREDICT = "/api/v1/predict"


def png_bytes(h: int = 200, w: int = 300, seed: int = 0, noise: float = 0.1) -> bytes:
    """A smooth grey gradient with noise: an image the loader reads, at a known size."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0.2, 0.8, h)[:, None] * np.ones((1, w))
    img = np.clip(yy + noise * rng.standard_normal((h, w)), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(h: int = 400, w: int = 300) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(h, w))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decode_b64_png(text: str) -> Image.Image:
    data = base64.b64decode(text, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def post(client: TestClient, payload: bytes, name: str = "xray.png", **kwargs):
    return client.post(PREDICT, files={"file": (name, payload, "application/octet-stream")}, **kwargs)


@pytest.fixture(scope="module")
def client(tiny_model) -> TestClient:
    return TestClient(create_app(tiny_model))


@pytest.fixture(scope="module")
def small_limit_client(tiny_model) -> TestClient:
    return TestClient(create_app(tiny_model, max_upload_mb=0.05))


def assert_error(resp, status: int, *words: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail
    for w in words:
        assert w.lower() in detail.lower(), detail
    return detail


# --- the simple endpoints ---


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_model_card_is_the_model_files_metadata(client, tiny_model):
    card = client.get("/api/v1/model").json()
    meta = Predictor.load(tiny_model).meta
    assert card["name"] == meta.name == "tiny-binary"
    assert card["threshold"] == pytest.approx(meta.threshold)
    assert card["temperature"] == pytest.approx(meta.temperature)
    assert card["validation"] == meta.validation.model_dump(mode="json")
    assert card["domain_guard"]["cutoff"] == pytest.approx(meta.domain_guard.cutoff)
    assert card["max_upload_mb"] == 50.0


def test_model_card_says_what_the_probabilities_are_calibrated_on(client):
    """The tiny model's validation record has no counts: the sample is named and its share of pneumonia left null."""
    assert client.get("/api/v1/model").json()["calibration"] == {
        "on": "validation", "n": None, "n_pneumonia": None, "prevalence": None
    }  # fmt: skip


@pytest.mark.parametrize(
    ("validation", "expected"),
    [({"n": 521, "n_pos": 387, "measured_on": "internal validation: /home/a/split.csv"},
      ("internal validation: split.csv", 521, 387, pytest.approx(387 / 521))),
     ({"n": 10, "n_pos": 11}, ("validation", None, None, None)),  # impossible counts: nothing is guessed
     ({"n": 10, "n_pos": 0}, ("validation", None, None, None)),
     ({"n": 10.0, "n_pos": 5.0}, ("validation", None, None, None)),
     ({"n": True, "n_pos": True}, ("validation", None, None, None)),
     ({"n_pos": 5}, ("validation", None, None, None))],
)  # fmt: skip
def test_calibration_sample_comes_from_the_validation_record(validation, expected):
    from pneumo.modelfile import ModelMeta
    from pneumo.serve.app import calibration_sample

    c = calibration_sample(ModelMeta(arch="cnn-small", validation=validation))
    assert (c.on, c.n, c.n_pneumonia, c.prevalence) == expected


def test_calibration_sample_is_the_site_sample_when_a_site_calibration_is_in_force():
    from types import SimpleNamespace

    from pneumo.serve.app import calibration_sample

    site = SimpleNamespace(name="north", sample=SimpleNamespace(n=200, n_pneumonia=50))
    c = calibration_sample(SimpleNamespace(site=site, validation={"n": 521, "n_pos": 387}))
    assert (c.on, c.n, c.n_pneumonia, c.prevalence) == ("this site's sample (north)", 200, 50, 0.25)


def test_bad_model_path_fails_before_serving(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        create_app(tmp_path / "missing.pneumo")


def test_openapi_documents_the_upload_and_the_response(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/v1/predict"]["post"]
    assert "file" in op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"413", "415", "422"} <= set(op["responses"])
    fields = spec["components"]["schemas"]["PredictResponse"]["properties"]
    assert {"probability", "prediction", "threshold", "in_domain", "heatmap", "image", "disclaimer"} <= set(fields)


# --- the page ---


def test_page_is_served_with_its_assets_and_no_other_hosts(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert {"static/app.js", "static/style.css"} <= set(assets)
    texts = {"/": page.text}
    for a in assets:
        resp = client.get("/" + a)
        assert resp.status_code == 200, a
        texts[a] = resp.text
    for where, text in texts.items():  # offline: nothing may be fetched from another host
        assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, flags=re.I), where
    testids = ("file-input", "drop-zone", "results", "disclaimer", "model-info", "result-card", "ood-warning", "lead",
               "unusual-note", "model-performance", "details", "subtype-note")  # fmt: skip
    for testid in testids:
        assert f'data-testid="{testid}"' in page.text
    assert "does not replace a clinician" in page.text


# What each kind of static file must be served as (a wrong type breaks the page under nosniff and the CSP).
STATIC_TYPES = {".html": "text/html", ".js": "javascript", ".css": "text/css"}


def test_every_static_file_is_reachable(client):
    """Each file in the static folder, through the app's /static mount: status 200, its type, its exact bytes."""
    files = sorted(p for p in STATIC.rglob("*") if p.is_file())
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in files}
    for path in files:
        url = "/static/" + path.relative_to(STATIC).as_posix()
        assert path.suffix in STATIC_TYPES, f"{url}: add the content type it must be served with to STATIC_TYPES"
        resp = client.get(url, follow_redirects=False)
        assert resp.status_code == 200, url
        assert STATIC_TYPES[path.suffix] in resp.headers["content-type"], (url, resp.headers["content-type"])
        assert resp.content == path.read_bytes(), url


def test_every_local_url_in_the_page_resolves(client):
    page = client.get("/").text
    refs = set(re.findall(r'\b(?:src|href)="([^"]*)"', page))
    local = {r for r in refs if not re.match(r"(?:[a-z][a-z0-9+.-]*:|//|#)", r, flags=re.I)}  # no data:, no hosts
    assert {"static/app.js", "static/style.css"} <= local
    for ref in sorted(local):
        # The page is served at "/"; its URLs are relative (a path prefix must keep working), so resolve them there.
        url = urljoin("http://testserver/", ref)
        assert client.get(url, follow_redirects=False).status_code == 200, ref


def test_the_page_script_never_parses_html():
    """File names from users come back in error details: the page must write them as text, never as markup."""
    scripts = sorted(STATIC.rglob("*.js"))
    assert STATIC / "app.js" in scripts
    sinks = re.compile(r"\b(?:innerHTML|outerHTML|insertAdjacentHTML)\b|\bdocument\s*\.\s*write(?:ln)?\b")
    for path in scripts:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not sinks.search(line), f"{path.name}:{number} parses HTML; use textContent: {line.strip()}"


# --- predictions ---


def test_predict_png_matches_the_cli_path(client, tiny_model):
    data = png_bytes(200, 300)
    resp = post(client, data, "child.png")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = Predictor.load(tiny_model).predict_one(data, "child.png")
    assert body["filename"] == "child.png"
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["prediction"] == expected.prediction
    assert body["prediction"] == ("PNEUMONIA" if body["probability"] >= body["threshold"] else "NORMAL")
    assert body["in_domain"] == expected.in_domain
    assert body["domain_score"] == pytest.approx(expected.domain_score)
    assert body["p_normal"] is body["p_bacterial"] is body["p_viral"] is None
    assert body["heatmap"] is None and body["explain_error"] is None
    assert body["model_name"] == "tiny-binary" and body["model_version"]
    assert "clinician" in body["disclaimer"]
    assert decode_b64_png(body["image"]).size == (300, 200)  # the X-ray at its own size (under 512 px)
    assert resp.headers["cache-control"] == "no-store"


def test_large_images_come_back_at_display_size(client):
    im = decode_b64_png(post(client, jpeg_bytes(1024, 800), "big.jpeg").json()["image"])
    assert im.size == (400, 512) and im.mode == "L"


@pytest.mark.parametrize("how", ["form", "query"])
def test_explain_returns_a_heatmap_png_the_size_of_the_image(client, how):
    pytest.importorskip("pytorch_grad_cam")
    kwargs = {"data": {"explain": "true"}} if how == "form" else {"params": {"explain": "true"}}
    body = post(client, png_bytes(160, 240), **kwargs).json()
    assert body["explain_error"] is None
    heat = decode_b64_png(body["heatmap"])
    assert heat.mode == "RGBA" and heat.size == decode_b64_png(body["image"]).size == (240, 160)
    # The map as the library draws it for the same image: the server adds no scaling of its own (heat maps are on
    # the library's scale, on which a confident normal may show nothing at all).
    from pneumo.explain.cam import heatmap_rgba

    analyser = client.app.state.analyser
    drawn = analyser.images.analyse_decoded(*analyser.decode(png_bytes(160, 240), "x.png"), "x.png", heatmap=True)
    assert np.array_equal(np.asarray(heat), heatmap_rgba(drawn.heatmap))


def test_an_upload_is_decoded_once_for_prediction_display_and_heat_map(client, monkeypatch):
    """One opening of the bytes gives the network input and the display image; the heat map reuses them. Every
    loader of pneumo.imaging opens its source through ``_guarded``: count those openings."""
    from pneumo.imaging import loader

    openings = []
    guarded = loader._guarded

    def counted(source, name, read):
        openings.append(name)
        return guarded(source, name, read)

    monkeypatch.setattr(loader, "_guarded", counted)
    body = post(client, jpeg_bytes(), params={"explain": "true"}).json()
    assert body["heatmap"] is not None and body["explain_error"] is None
    assert len(openings) == 1


def test_explain_without_torch_still_gives_a_heat_map(tiny_model, monkeypatch):
    """The tiny model's graph has the class activation map: heat maps need neither torch nor pneumo.training.grad_cam
    (the fallback for graphs without it is tested in test_cam.py)."""
    for name in ("torch", "pytorch_grad_cam", "pneumo.training.grad_cam"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of it now raises ImportError
    body = post(TestClient(create_app(tiny_model)), png_bytes(), data={"explain": "true"}).json()
    assert body["heatmap"] is not None and body["explain_error"] is None
    assert body["probability"] is not None


def test_subtype_model_returns_subtype_probabilities(tiny_subtype_model):
    body = post(TestClient(create_app(tiny_subtype_model)), png_bytes()).json()
    p = [body["p_normal"], body["p_bacterial"], body["p_viral"]]
    assert all(v is not None and 0 <= v <= 1 for v in p)
    assert sum(p) == pytest.approx(1.0)
    assert body["p_normal"] == pytest.approx(1 - body["probability"])


def test_real_jpeg(client, fullres_dir):
    path = sorted(fullres_dir.rglob("*.jpeg"))[0]
    body = post(client, path.read_bytes(), path.name).json()
    assert 0 <= body["probability"] <= 1
    assert max(decode_b64_png(body["image"]).size) == 512


@pytest.mark.parametrize("name", ["Issue44_Monochrome1-Jpeg.dcm", "vlut_04.dcm"])
def test_real_dicom_comes_back_as_a_png(client, dicom_dir, name):
    resp = post(client, (dicom_dir / name).read_bytes(), name)
    assert resp.status_code == 200, resp.text
    assert decode_b64_png(resp.json()["image"]).mode == "L"


# --- bad input: the right code and a readable detail, never a 500 ---


def test_upload_over_the_limit_is_413(small_limit_client):
    assert_error(post(small_limit_client, png_bytes(300, 300, noise=0.5)), 413, "limit")


def test_413_does_not_trust_a_missing_content_length(small_limit_client):
    """A chunked body has no Content-Length: the server must count the bytes it reads."""
    boundary = "pneumoboundary"
    payload = png_bytes(300, 300, noise=0.5)
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'.encode()
    body = head + payload + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    resp = small_limit_client.post(
        PREDICT, content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "limit")


def test_under_the_limit_is_accepted_by_the_small_limit_server(small_limit_client):
    assert post(small_limit_client, png_bytes(64, 64, noise=0.0)).status_code == 200


@pytest.mark.parametrize(
    ("data", "word"),
    [
        (b"patient notes: cough, fever\n" * 20, "text"),
        (b"GIF89a" + bytes(range(256)) * 4, "GIF"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(200), "PDF"),
        (bytes(range(256)) * 4, "not a recognised"),
        (b"", "empty"),
    ],
    ids=["text", "gif", "pdf", "binary", "empty"],
)
def test_not_an_image_is_415(client, data, word):
    assert_error(post(client, data, "scan.jpeg"), 415, word)


def test_a_real_gif_is_refused_although_pillow_could_read_it(client):
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes())).save(buf, "GIF")
    assert_error(post(client, buf.getvalue(), "xray.gif"), 415, "GIF")


def test_a_body_that_is_not_multipart_is_415(client):
    resp = client.post(PREDICT, content=png_bytes(), headers={"content-type": "image/png"})
    assert_error(resp, 415, "multipart")


def test_truncated_jpeg_is_422(client):
    data = jpeg_bytes(400, 300)
    assert_error(post(client, data[: len(data) // 2], "cut.jpeg"), 422, "truncated")


def test_dicom_without_pixel_data_is_422(client, tmp_path):
    data = dicom_bytes(
        None, SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1", PatientName="Doe^Jane", Modality="DX", Rows=64, Columns=64
    )
    assert data[128:132] == b"DICM"
    resp = post(client, data, "nopixels.dcm")
    assert_error(resp, 422, "no pixel data")
    assert "Doe" not in resp.text  # no patient tag ever leaves the server


def test_real_dicom_without_pixel_data_is_422(client, dicom_dir):
    assert_error(post(client, (dicom_dir / "Issue56-NoPixelData.dcm").read_bytes(), "x.dcm"), 422, "pixel data")


def test_decompression_bomb_is_422(client):
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG")  # 81 MP of zeros compresses to ~80 kB
    assert_error(post(client, buf.getvalue(), "bomb.png"), 422, "limit")


def test_missing_file_field_is_422(client):
    assert_error(client.post(PREDICT, data={"explain": "true"}), 422, "file")
    wrong_field = client.post(PREDICT, files={"image": ("x.png", png_bytes())}, data={"explain": "true"})
    assert_error(wrong_field, 422, "file")
    assert_error(client.post(PREDICT), 422, "file")


def test_invalid_query_value_is_422_with_a_readable_detail(client):
    assert_error(post(client, png_bytes(), params={"explain": "perhaps"}), 422, "explain")


def test_unexpected_errors_are_a_generic_500_that_leaks_nothing(tiny_model, monkeypatch, caplog):
    app = create_app(tiny_model)

    def explode(*args, **kwargs):
        raise RuntimeError("cannot open /data/patients/Doe_Jane.dcm")

    monkeypatch.setattr(app.state.analyser, "analyse", explode)
    with caplog.at_level(logging.ERROR, logger="pneumo.serve"):
        resp = post(TestClient(app), png_bytes(), "Doe_Jane.png")
    detail = assert_error(resp, 500, "internal")
    assert "Doe" not in detail and "/data" not in resp.text
    assert "RuntimeError" in caplog.text and "Doe" not in caplog.text
    assert resp.headers["x-content-type-options"] == "nosniff"


# --- privacy and concurrency ---


def test_uploads_never_touch_the_disk(client, monkeypatch):
    """A 2 MB upload (over Starlette's 1 MB default spool) must stay in memory: any temp file is an error."""

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was about to be written to disk")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", no_disk)
    for name in ("mkstemp", "TemporaryFile", "NamedTemporaryFile"):
        monkeypatch.setattr(tempfile, name, no_disk)
    data = png_bytes(1500, 1500, noise=0.6)
    assert len(data) > 1.5 * 2**20
    resp = post(client, data, "large.png")
    assert resp.status_code == 200, resp.text


def test_healthz_answers_while_a_prediction_runs(tiny_model):
    import anyio
    import httpx

    app = create_app(tiny_model)
    started, release = threading.Event(), threading.Event()
    analyse = app.state.analyser.analyse

    def slow_analyse(*args, **kwargs):
        started.set()
        release.wait(10)
        return analyse(*args, **kwargs)

    app.state.analyser.analyse = slow_analyse

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http,
            anyio.create_task_group() as tg,
        ):
            results = {}

            async def predict():
                results["predict"] = await http.post(PREDICT, files={"file": ("x.png", png_bytes())})

            tg.start_soon(predict)
            await anyio.to_thread.run_sync(started.wait, 10)
            health = await http.get("/healthz")  # would hang if the prediction blocked the event loop
            results["health_while_busy"] = health.status_code == 200 and "predict" not in results
            release.set()
        return results

    results = anyio.run(main)
    assert results["health_while_busy"]
    assert results["predict"].status_code == 200


# --- host names (issue 25: `serve --host ::1` answered every request 400, `[::1]:port` split on ':') ---


@pytest.mark.parametrize(
    ("header", "name"),
    [("[::1]:8000", "::1"), ("[::1]", "::1"), ("LocalHost:80", "localhost"), ("127.0.0.1:8000", "127.0.0.1"),
     ("xray.example", "xray.example"), ("::1", None), ("[::1", None), ("[xray.example]:80", None), ("a:x", None),
     ("a:99999", None), ("", None), (None, None), ("a b", None), ("user@xray.example", None)],
)  # fmt: skip
def test_host_name_of_a_host_header(header, name):
    from pneumo.serve.upload import host_name

    assert host_name(header) == name


def test_a_server_bound_to_ipv6_loopback_answers_its_own_host_names(tiny_model):
    from pneumo.serve.upload import served_hosts

    client = TestClient(create_app(tiny_model, allowed_hosts=served_hosts("::1")), base_url="http://[::1]:8000")
    assert client.get("/healthz").status_code == 200
    for host in ("[::1]", "localhost:8000", "127.0.0.1"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("[::2]:8000", "evil.example", "[::1", "::1:8000"):  # refused: a rebinding page, malformed ones
        assert_error(client.get("/healthz", headers={"Host": host}), 400, "--allow-host")
    # The page's own POST carries Origin http://[::1]:8000: the same origin, answered.
    assert post(client, png_bytes(), headers={"Origin": "http://[::1]:8000"}).status_code == 200


def test_allowed_host_patterns_as_starlette_reads_them(tiny_model):
    client = TestClient(create_app(tiny_model, allowed_hosts=["*.hospital.example"]), base_url="http://x")
    assert client.get("/healthz", headers={"Host": "xray.hospital.example:443"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "hospital.example.evil"}).status_code == 400
    anyone = TestClient(create_app(tiny_model, allowed_hosts=["*"]), base_url="http://x")
    assert anyone.get("/healthz", headers={"Host": "[::1]:1"}).status_code == 200


def test_a_real_server_on_ipv6_loopback_answers_the_page(tiny_model):
    import httpx

    from pneumo.serve.background import LoopbackServer
    from pneumo.serve.upload import served_hosts

    try:
        server = LoopbackServer(create_app(tiny_model, allowed_hosts=served_hosts("::1")), host="::1")
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with server:
        assert server.url.startswith("http://[::1]:")
        assert httpx.get(server.url).status_code == 200
        assert httpx.get(server.url + "api/v1/model").json()["name"] == "tiny-binary"


def test_a_port_in_use_is_refused_before_serving_is_announced(caplog):
    import logging
    import socket

    from pneumo.errors import InputError
    from pneumo.serve.app import run_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.INFO), pytest.raises(InputError, match=rf"cannot serve on 127\.0\.0\.1:{port}"):
            run_server("127.0.0.1", port)
    assert "serving on" not in caplog.text
    assert InputError.exit_code == 2


@pytest.mark.parametrize(("peak", "noted"), [(0.1, True), (0.0, True), (0.6, False)])
def test_a_heat_map_that_draws_nothing_says_why(tiny_model, monkeypatch, peak, noted):
    """A confident image's occlusion map can stay under the overlay's floor everywhere: the answer says why, in the
    words ``pneumo explain`` and the Secondary Capture use, and the page shows them in place of the legend."""
    from pneumo.explain.analyser import ImageAnalyser
    from pneumo.explain.cam import EMPTY_MAP

    real = ImageAnalyser.analyse_decoded

    def flat_map(self, net_input, display, name, heatmap=True, mirror=False):
        result = real(self, net_input, display, name, heatmap=False, mirror=mirror)
        result.heatmap = np.full(display.shape, peak, np.float32) if heatmap else None
        return result

    monkeypatch.setattr(ImageAnalyser, "analyse_decoded", flat_map)
    body = post(TestClient(create_app(tiny_model)), png_bytes(160, 240), data={"explain": "true"}).json()
    assert body["heatmap"] is not None
    assert body["heatmap_note"] == (EMPTY_MAP if noted else None)
    assert "heatmap_note" in (STATIC / "app.js").read_text()  # the page reads it
