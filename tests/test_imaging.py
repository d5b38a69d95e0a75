"""pneumo.imaging: golden values on generated files, the real X-rays and DICOMs, and every way a file can be bad."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFile, JpegImagePlugin, features
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from conftest import dicom_bytes, truncated_jpeg
from pneumo import imaging
from pneumo.imaging import IMAGE_SUFFIXES, MAX_PIXELS, ImageInfo, ImageLoadError, is_dicom, load_image, probe_image


def _save(path: Path, im: Image.Image, fmt: str, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _gradient(h: int = 8, w: int = 12) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 255 // (h * w - 1)).astype(np.uint8)


def _xray_like(h: int, w: int) -> np.ndarray:
    """A smooth image with some texture, so JPEG draft decoding has real content to get wrong."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + 0.1 * np.sin(40 * x * y)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


# --- API surface ---


def test_constants_and_sniffing():
    assert {".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".tif", ".tiff", ".webp", ".bmp"} == IMAGE_SUFFIXES
    assert is_dicom(b"\0" * 128 + b"DICM" + b"rest")
    assert not is_dicom(b"\0" * 128 + b"DICX")
    assert not is_dicom(b"DICM")
    assert 10_000_000 < MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # below Pillow's own bomb warning, so they agree
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("size", [0, -3, (0, 5), (4, 5, 6), "224"])
def test_invalid_size_is_a_value_error(size):
    with pytest.raises(ValueError):
        load_image(_png_bytes(_gradient()), size)


# --- golden values on generated Pillow formats ---


def test_png_8bit_exact_values(tmp_path):
    arr = np.array([[0, 51, 102], [153, 204, 255]], dtype=np.uint8)
    out = load_image(_save(tmp_path / "a.png", Image.fromarray(arr), "PNG"))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, np.array([[0, 0.2, 0.4], [0.6, 0.8, 1.0]], dtype=np.float32))


def test_png_16bit_uses_full_16bit_range(tmp_path):
    arr = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = _save(tmp_path / "a16.png", Image.fromarray(arr), "PNG")
    out = load_image(path)
    assert out[1, 0] == 1.0 and out[0, 0] == 0.0
    assert out[0, 1] == pytest.approx(0.5, abs=1e-4)
    assert out[1, 1] == pytest.approx(1000 / 65535, rel=1e-5)  # not min-max: 1000 stays dark
    assert probe_image(path) == ImageInfo("PNG", 2, 2, "I;16")


def test_png_16bit_holding_12bit_data_reads_on_its_12bit_scale(tmp_path):
    """A 12-bit detector's image in a 16-bit PNG (values up to 4095) reads as 12-bit data, as DICOM's BitsStored
    would say: not a nearly black 16-bit image, and not min-max stretched (a dark value stays dark)."""
    arr = np.array([[0, 4095], [2048, 100]], dtype=np.uint16)
    out = load_image(_save(tmp_path / "a12.png", Image.fromarray(arr), "PNG"))
    np.testing.assert_allclose(out, arr / 4095.0, atol=1e-7)
    ten = np.array([[3, 1000], [500, 3]], np.uint16)
    out = load_image(_save(tmp_path / "a10.png", Image.fromarray(ten), "PNG"))
    np.testing.assert_allclose(out, ten / 1023.0, atol=1e-7)  # 10 bits, and 3 is not stretched to 0
    low = np.array([[0, 200], [100, 50]], np.uint16)
    out = load_image(_save(tmp_path / "a8.png", Image.fromarray(low), "PNG"))
    np.testing.assert_allclose(out, low / 255.0, atol=1e-7)  # never below an 8-bit scale


def test_rgb_uses_luma_weights(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (200, 100, 50)  # 0.299*200 + 0.587*100 + 0.114*50 = 124.2 -> 124
    rgb[1, 1] = (255, 255, 255)
    out = load_image(_save(tmp_path / "rgb.png", Image.fromarray(rgb), "PNG"))
    assert out[0, 0] == pytest.approx(124 / 255)
    assert out[1, 1] == 1.0 and out[0, 1] == 0.0


def test_rgba_is_flattened_onto_black(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)
    rgba[0, 1] = (200, 100, 50, 0)  # fully transparent: background
    rgba[1, 0] = (255, 255, 255, 51)
    out = load_image(_save(tmp_path / "rgba.png", Image.fromarray(rgba), "PNG"))
    assert out[0, 0] == pytest.approx(124 / 255)
    assert out[0, 1] == 0.0
    assert out[1, 0] == pytest.approx(0.2)


def test_la_and_palette(tmp_path):
    la = Image.fromarray(np.array([[[100, 255], [100, 0]], [[255, 255], [255, 255]]], dtype=np.uint8), "LA")
    out = load_image(_save(tmp_path / "la.png", la, "PNG"))
    np.testing.assert_allclose(out, [[100 / 255, 0], [1, 1]], atol=1e-6)

    pal = Image.new("P", (3, 2))
    pal.putpalette([0, 0, 0, 255, 255, 255, 200, 100, 50] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2, 2, 1, 0])
    out = load_image(_save(tmp_path / "p.png", pal, "PNG"))
    np.testing.assert_allclose(out, np.array([[0, 1, 124 / 255], [124 / 255, 1, 0]]), atol=1e-6)


def test_cmyk_and_1bit(tmp_path):
    cmyk = Image.new("CMYK", (4, 3), (0, 0, 0, 255))  # full black ink
    assert load_image(_save(tmp_path / "c.tif", cmyk, "TIFF")).max() == 0.0
    bw = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=bool))
    np.testing.assert_array_equal(load_image(_save(tmp_path / "b.png", bw, "PNG")), [[0, 1], [1, 0]])


@pytest.mark.parametrize(
    ("fmt", "suffix", "kw"), [("BMP", ".bmp", {}), ("TIFF", ".tif", {}), ("WEBP", ".webp", {"lossless": True})]
)
def test_lossless_formats_roundtrip(tmp_path, fmt, suffix, kw):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    arr = _gradient()
    path = _save(tmp_path / f"g{suffix}", Image.fromarray(arr), fmt, **kw)
    np.testing.assert_allclose(load_image(path), arr / 255.0, atol=1e-6)
    assert probe_image(path).format == fmt


def test_16bit_tiff(tmp_path):
    arr = np.array([[0, 65535], [16384, 49152]], dtype=np.uint16)
    out = load_image(_save(tmp_path / "t16.tif", Image.fromarray(arr), "TIFF"))
    np.testing.assert_allclose(out, arr / 65535.0, atol=1e-6)


def test_float_tiff_outside_unit_range_is_min_max_scaled(tmp_path):
    arr = np.array([[-10.0, 0.0], [10.0, 30.0]], dtype=np.float32)
    out = load_image(_save(tmp_path / "f.tif", Image.fromarray(arr), "TIFF"))
    np.testing.assert_allclose(out, [[0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_content_decides_not_extension(tmp_path):
    arr = _gradient()
    no_ext = _save(tmp_path / "scan", Image.fromarray(arr), "PNG")
    liar = _save(tmp_path / "scan.jpeg", Image.fromarray(arr), "PNG")  # lossless values prove PNG was decoded
    for path in (no_ext, liar):
        np.testing.assert_array_equal(load_image(path), (arr / 255.0).astype(np.float32))
        assert probe_image(path).format == "PNG"


def test_bytes_and_pathlike_and_str_sources(tmp_path):
    arr = _gradient()
    path = _save(tmp_path / "g.png", Image.fromarray(arr), "PNG")
    a, b, c = load_image(path), load_image(str(path)), load_image(path.read_bytes())
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert probe_image(path.read_bytes()) == ImageInfo("PNG", 12, 8, "L")


def test_size_int_and_tuple_squash_without_keeping_aspect(tmp_path):
    arr = np.zeros((40, 80), dtype=np.uint8)
    arr[:, 40:] = 255  # left half black, right half white
    path = _save(tmp_path / "half.png", Image.fromarray(arr), "PNG")
    assert load_image(path, 17).shape == (17, 17)
    out = load_image(path, (20, 10))  # (height, width)
    assert out.shape == (20, 10)
    assert out[:, :4].max() < 0.05 and out[:, 6:].min() > 0.95
    assert load_image(path, (80, 40)).shape == (80, 40)  # upscaling works too


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40), dtype=np.uint8)  # stored landscape, top row white
    arr[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path / "rot.jpg", Image.fromarray(arr), "JPEG", exif=exif, quality=95)
    out = load_image(path)
    assert out.shape == (40, 20)
    assert out[:, -3:].mean() > 0.9 and out[:, :10].mean() < 0.1  # the white top row now sits on the right
    assert load_image(path, (8, 4)).shape == (8, 4)
    assert (probe_image(path).width, probe_image(path).height) == (20, 40)


def test_jpeg_draft_mode_is_used_and_matches_full_decode(tmp_path, monkeypatch):
    big = Image.fromarray(_xray_like(1600, 2000)).convert("RGB")  # RGB JPEG: draft also converts to gray
    path = _save(tmp_path / "big.jpg", big, "JPEG", quality=90)
    full = load_image(path)
    assert full.shape == (1600, 2000)
    reference = np.asarray(Image.fromarray(full).resize((224, 224), Image.Resampling.LANCZOS))

    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: calls.append(a) or real_draft(self, *a)
    )
    fast = load_image(path, 224)
    assert calls == [("L", (224, 224))]
    assert fast.shape == (224, 224)
    assert np.abs(fast - reference).mean() < 0.01


# --- hypothesis properties ---


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arr=st.one_of(
        arrays(np.uint8, st.tuples(st.integers(2, 12), st.integers(2, 12))),
        arrays(np.uint16, st.tuples(st.integers(2, 12), st.integers(2, 12))),
    ),
    size=st.one_of(st.none(), st.integers(1, 40), st.tuples(st.integers(1, 40), st.integers(1, 40))),
)
def test_property_png_output_is_well_formed(arr, size):
    out = load_image(_png_bytes(arr), size)
    want = arr.shape if size is None else (size, size) if isinstance(size, int) else size
    assert out.ndim == 2 and out.shape == tuple(want) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    if size is None:  # unresized values are exact: scaled by the bit range the data uses, not min-max
        bits = 8 if arr.dtype == np.uint8 else 16 if arr.max() == 0 else max(8, int(arr.max()).bit_length())
        np.testing.assert_allclose(out, arr / float(2**bits - 1), atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF tags it skips
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_property_corrupted_files_only_raise_image_load_error(data):
    buf = io.BytesIO()
    Image.fromarray(_xray_like(24, 32)).save(buf, data.draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF"])))
    raw = bytearray(buf.getvalue())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    try:
        out = load_image(bytes(raw[:cut]), 16, name="fuzz.img")
    except ImageLoadError as exc:
        assert str(exc).startswith("fuzz.img: ")
    else:
        assert out.shape == (16, 16) and np.isfinite(out).all()


# --- bad files ---


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("dims", [(30000, 30000), (9000, 9000)])  # past Pillow's hard limit, and only past ours
def test_decompression_bomb_is_refused_fast(tmp_path, dims):
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(*dims))
    start = time.perf_counter()
    for func in (load_image, probe_image):
        with pytest.raises(ImageLoadError, match=r"bomb.png: .*decompression bomb"):
            func(path)
    assert time.perf_counter() - start < 1.0


def test_truncated_jpeg_is_an_error_not_a_grey_image(tmp_path):
    path = truncated_jpeg(tmp_path / "cut.jpeg")
    with pytest.raises(ImageLoadError, match=r"cut.jpeg: truncated JPEG data"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path, 64)  # the draft path decodes fully too
    assert probe_image(path) == ImageInfo("JPEG", 200, 200, "L")  # the header alone is fine: probe does not decode


def test_truncated_real_jpeg(tmp_path, fullres_dir):
    data = sorted(fullres_dir.glob("*/*.jpeg"))[0].read_bytes()
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(data[: len(data) // 2], 224, name="half.jpeg")


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpeg").write_text("patient notes, not pixels\n")
    (tmp_path / "noise.png").write_bytes(bytes(range(256)) * 4)
    _save(tmp_path / "dot.png", Image.new("L", (1, 1)), "PNG")
    _save(tmp_path / "line.png", Image.new("L", (300, 1)), "PNG")
    (tmp_path / "folder.png").mkdir()
    return {
        "empty": (tmp_path / "empty.png", "empty"),
        "text": (tmp_path / "notes.jpeg", "text, not an image"),
        "noise": (tmp_path / "noise.png", "not a recognised image format"),
        "1x1": (tmp_path / "dot.png", "image is 1x1 pixels, too small to be an X-ray"),
        "300x1": (tmp_path / "line.png", "300x1 pixels, too small"),
        "directory": (tmp_path / "folder.png", "is a directory"),
        "missing": (tmp_path / "nowhere.png", "file not found"),
        "truncated": (truncated_jpeg(tmp_path / "cut.jpeg"), "truncated"),
    }


@pytest.mark.parametrize("case", ["empty", "text", "noise", "1x1", "300x1", "directory", "missing", "truncated"])
def test_bad_files_raise_image_load_error_naming_the_file(tmp_path, case):
    path, reason = _bad_files(tmp_path)[case]
    with pytest.raises(ImageLoadError) as info:
        load_image(path, 224)
    assert str(info.value).startswith(f"{path}: ")
    assert reason in str(info.value)
    assert "\n" not in str(info.value)
    if case != "truncated":  # probe reads headers only, so damage after the header is load_image's job
        with pytest.raises(ImageLoadError, match=reason):
            probe_image(path)


def test_bytes_errors_use_the_given_name():
    with pytest.raises(ImageLoadError, match=r"^upload\.jpg: file is empty"):
        load_image(b"", name="upload.jpg")
    with pytest.raises(ImageLoadError, match=r"^<bytes>: file holds text"):
        load_image(b"hello")


def test_permission_denied(tmp_path, monkeypatch):
    path = _save(tmp_path / "locked.png", Image.fromarray(_gradient()), "PNG")
    path.chmod(0)
    if os.access(path, os.R_OK):  # running as root: chmod does not stop us, so make open() refuse instead
        monkeypatch.setattr(imaging.limits, "open", _raise(PermissionError(13, "Permission denied")), raising=False)
    for func in (load_image, probe_image):
        with pytest.raises(ImageLoadError, match=r"locked\.png: permission denied"):
            func(path)


def _raise(exc: BaseException):
    def fail(*_a, **_k):
        raise exc

    return fail


def test_unexpected_exceptions_are_wrapped(tmp_path, monkeypatch):
    path = _save(tmp_path / "ok.png", Image.fromarray(_gradient()), "PNG")

    monkeypatch.setattr(Image.Image, "load", _raise(KeyError("decoder bug")))
    with pytest.raises(ImageLoadError, match=r"ok\.png: ") as info:
        load_image(path)
    assert isinstance(info.value.__cause__, KeyError)


# --- DICOM: crafted datasets ---


RAMP = np.array([[0, 1000], [2000, 4095]])


def test_dicom_window_and_monochrome1():
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    out = load_image(dicom_bytes(RAMP, **window))
    np.testing.assert_allclose(out, RAMP / 4095, atol=1e-6)  # 12-bit window output range 0..4095
    narrow = load_image(dicom_bytes(RAMP, WindowCenter=1500, WindowWidth=2000))  # window 500..2500
    np.testing.assert_allclose(
        narrow, [[0, 0.25], [0.75, 1]], atol=1e-3
    )  # values outside the window clip  # values outside the window clip
    inverted = load_image(dicom_bytes(RAMP, PhotometricInterpretation="MONOCHROME1", **window))
    np.testing.assert_allclose(inverted, 1 - RAMP / 4095, atol=1e-6)


def test_dicom_rescale_then_min_max_without_window():
    out = load_image(dicom_bytes(RAMP, RescaleSlope=2, RescaleIntercept=-1024))
    np.testing.assert_allclose(out, RAMP / 4095, atol=1e-6)
    info = probe_image(dicom_bytes(RAMP, PhotometricInterpretation="MONOCHROME1"))
    assert info == ImageInfo("DICOM", 2, 2, "MONOCHROME1 12-bit")


def test_dicom_without_preamble_is_found_by_content(tmp_path):
    data = dicom_bytes(RAMP, preamble=False)
    assert not is_dicom(data)
    path = tmp_path / "IM0001"  # no extension, no preamble: typical of old PACS exports
    path.write_bytes(data)
    np.testing.assert_allclose(load_image(path), RAMP / 4095, atol=1e-6)
    assert probe_image(path).format == "DICOM"


def test_dicom_multiframe_uses_first_frame():
    frames = np.stack([RAMP, 4095 - RAMP])
    out = load_image(dicom_bytes(frames, NumberOfFrames=2))
    np.testing.assert_allclose(out, RAMP / 4095, atol=1e-6)


def test_dicom_resized_to_exact_size():
    big = np.tile(np.linspace(0, 4095, 64), (48, 1)).astype(np.uint16)
    out = load_image(dicom_bytes(big), (10, 20))
    assert out.shape == (10, 20) and out.dtype == np.float32
    assert out[:, 0].mean() < 0.1 and out[:, -1].mean() > 0.9


def test_dicom_errors(tmp_path):
    no_pixels = Dataset()
    no_pixels.SOPClassUID, no_pixels.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    no_pixels.file_meta = FileMetaDataset()
    no_pixels.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "empty.dcm"
    no_pixels.save_as(path, enforce_file_format=True)
    for func in (load_image, probe_image):
        with pytest.raises(ImageLoadError, match=r"empty.dcm: DICOM file has no pixel data"):
            func(path)

    colour = dicom_bytes(np.zeros((2, 2, 3)), SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)
    with pytest.raises(ImageLoadError, match="colour DICOM is not supported"):
        load_image(colour, name="colour.dcm")

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(RAMP)))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match=r"ls.dcm: .*transfer syntax JPEG-LS Lossless"):
        load_image(buf.getvalue(), name="ls.dcm")

    with pytest.raises(ImageLoadError, match=r"cut\.dcm: "):
        load_image(dicom_bytes(RAMP)[:200], name="cut.dcm")


# --- real DICOM files ---


def _lung_and_mediastinum(img: np.ndarray) -> tuple[float, float]:
    """Mean of the two mid-lung fields and of the central strip (spine, mediastinum) of a PA chest image.

    Chosen by looking at the images: rows 30-60 % cross both lungs above the diaphragm in all of them.
    """
    h, w = img.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    lungs = np.concatenate([img[rows, int(0.2 * w) : int(0.35 * w)], img[rows, int(0.65 * w) : int(0.8 * w)]], axis=1)
    return float(lungs.mean()), float(img[rows, int(0.45 * w) : int(0.55 * w)].mean())


@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "Issue44_Monochrome1-Jpeg.dcm"])
def test_real_monochrome1_chests_are_inverted(dicom_dir, name):
    img = load_image(dicom_dir / name, 224)
    assert img.shape == (224, 224) and img.dtype == np.float32
    lungs, middle = _lung_and_mediastinum(img)
    assert lungs + 0.2 < middle  # lungs dark, mediastinum bright (measured 0.61 / 0.87 and 0.23 / 0.79)


def test_real_dicom_probe(dicom_dir):
    assert probe_image(dicom_dir / "RG1_J2KI.dcm") == ImageInfo("DICOM", 1841, 1955, "MONOCHROME1 15-bit")
    assert probe_image(dicom_dir / "Issue44_Monochrome1-Jpeg.dcm") == ImageInfo(
        "DICOM", 2010, 2446, "MONOCHROME1 8-bit"
    )


def test_real_voi_lut(dicom_dir, tmp_path):
    path = dicom_dir / "vlut_04.dcm"
    img = load_image(path)
    assert img.shape == (512, 512)
    assert img.mean() == pytest.approx(0.50522, abs=1e-4)
    np.testing.assert_allclose(np.percentile(img, [5, 25, 50, 75, 95]), [0, 0.49804, 0.49804, 0.52941, 1], atol=1e-4)
    # This file's LUT is a linear ramp (0..255 -> 0..65535), so the result equals a min-max scaling; a copy whose
    # LUT is reversed shows the LUT is really applied.
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence[0].LUTData = list(ds.VOILUTSequence[0].LUTData)[::-1]
    ds.save_as(tmp_path / "reversed.dcm")
    raw = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(load_image(tmp_path / "reversed.dcm"), 1 - raw / 255, atol=1e-4)


def test_real_modality_lut(dicom_dir, tmp_path):
    path = dicom_dir / "mlut_18.dcm"
    img = load_image(path)
    assert img.shape == (512, 512)
    assert img.mean() == pytest.approx(0.50625, abs=1e-4)
    np.testing.assert_allclose(np.percentile(img, [5, 50, 95]), [0, 0.49987, 1], atol=1e-4)
    # Signed 12-bit input (-2048..2047) through a linear modality LUT; squaring the LUT must change the output.
    ds = pydicom.dcmread(path)
    lut = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
    ds.ModalityLUTSequence[0].LUTData = [int(v) for v in (lut / 65535) ** 2 * 65535]
    ds.save_as(tmp_path / "squared.dcm")
    np.testing.assert_allclose(load_image(tmp_path / "squared.dcm"), img.astype(np.float64) ** 2, atol=2e-3)


def test_real_dicom_without_pixels(dicom_dir):
    with pytest.raises(ImageLoadError, match=r"Issue56-NoPixelData.dcm: DICOM file has no pixel data"):
        load_image(dicom_dir / "Issue56-NoPixelData.dcm")


# --- pydicom-data chest CRs (a package, so no skip unless it lacks the file) ---


def _testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom-data has no {name}")
    return path


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_UNCI.dcm"])
def test_pydicom_data_chest_cr(name):
    img = load_image(_testdata(name), 224)
    lungs, middle = _lung_and_mediastinum(img)
    assert lungs == pytest.approx(0.609, abs=0.01) and middle == pytest.approx(0.874, abs=0.01)


def test_pydicom_data_j2k_matches_uncompressed():
    lossless = load_image(_testdata("RG1_J2KR.dcm"), 128)
    np.testing.assert_allclose(lossless, load_image(_testdata("RG1_UNCR.dcm"), 128), atol=1e-6)


# --- the real full-resolution JPEGs ---


def test_real_fullres_jpegs_load_at_224(fullres_dir):
    paths = sorted(fullres_dir.glob("*/*.jpeg"))
    assert len(paths) == 16
    for path in paths:
        img = load_image(path, 224)
        assert img.shape == (224, 224) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0 and img.std() > 0.1
        lungs, middle = _lung_and_mediastinum(img)
        assert lungs < middle, path.name
        info = probe_image(path)
        assert info.format == "JPEG" and max(info.width, info.height) >= 900


def test_display_image_keeps_the_aspect_ratio_and_map_resizes(tmp_path):
    from pneumo.imaging import load_display_image, resize_map

    path = tmp_path / "wide.png"
    Image.fromarray(np.tile((np.arange(300) % 256).astype(np.uint8), (150, 1))).save(path)
    assert load_display_image(path, 100).shape == (50, 100)
    assert load_display_image(path, 1000).shape == (150, 300)  # never enlarged
    m = resize_map(np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32), (4, 8))
    assert m.shape == (4, 8) and m[:, 0].max() < 0.5 < m[:, -1].min()


# --- one opening for the network input and the display image ---


@pytest.mark.parametrize("fmt", ["png", "jpeg", "dicom", "headerless dicom"])
def test_one_opening_gives_what_load_image_and_load_display_image_give(fmt, tmp_path):
    """The server and the DICOM node decode an upload once for both arrays; they must be the arrays that
    predict's and the page's own calls give, from bytes and from a path alike."""
    arr = _xray_like(900, 1300)
    if fmt == "png":
        data = _png_bytes(arr)
    elif fmt == "jpeg":  # large enough for the scaled (draft) decode, which differs per target
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
    else:
        data = dicom_bytes(arr.astype(np.uint16) * 16, preamble=fmt == "dicom")  # 12 bits stored
    path = tmp_path / "x.img"
    path.write_bytes(data)
    for source in (data, path):
        net, display = imaging.load_image_and_display(source, 128, 400, name="x")
        np.testing.assert_array_equal(net, load_image(source, 128, name="x"))
        np.testing.assert_array_equal(display, imaging.load_display_image(source, 400, name="x"))
        assert net.shape == (128, 128) and max(display.shape) == 400


def test_errors_say_whether_the_content_is_unsupported_or_damaged(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_xray_like(300, 200)).save(buf, "JPEG", quality=90)
    cases = {
        b"": "unsupported",
        b"patient,label\n1,NORMAL\n": "unsupported",
        b"\x00\x01\x02garbage" * 40: "unsupported",
        buf.getvalue()[: len(buf.getvalue()) // 2]: "damaged",  # a JPEG, cut in half
        dicom_bytes(np.zeros((4, 4)), preamble=True)[:-20]: "damaged",  # a DICOM whose pixel data is cut short
    }
    for data, kind in cases.items():
        with pytest.raises(ImageLoadError) as info:
            imaging.load_image_and_display(data, 64, name="f")
        assert info.value.kind == kind, (data[:20], str(info.value))


def test_a_png_reaches_the_target_as_a_jpeg_of_the_same_picture_does():
    """A JPEG original is decoded at 1/2, 1/4 or 1/8 scale (draft mode); a PNG of the same picture is first reduced by
    the same power of two, so it lands nearer the JPEG's pixels than a plain Lanczos resize of it would."""
    rng = np.random.default_rng(0)
    arr = np.clip(_xray_like(1600, 2000).astype(np.int16) + rng.integers(-20, 21, (1600, 2000)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=95)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        levels = np.asarray(im.convert("L"))  # the JPEG's own full-size pixels
    png = io.BytesIO()
    Image.fromarray(levels).save(png, "PNG")
    jpeg_net, png_net = load_image(buf.getvalue(), 128), load_image(png.getvalue(), 128)
    plain = np.asarray(Image.fromarray(levels).resize((128, 128), Image.Resampling.LANCZOS, reducing_gap=3.0))
    # measured: 0.44 of the plain resize's mean difference (equal, 1.0, without the reduction)
    assert np.abs(png_net - jpeg_net).mean() < 0.6 * np.abs(plain / 255.0 - jpeg_net).mean()
