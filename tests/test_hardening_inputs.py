"""Issue 25: a small generated corpus of hostile inputs, and what each must get: a one-line refusal, never a
decoder's gigabytes, a Ghostscript run or a MemoryError traceback.

The builders (no ``test_`` prefix) are shared with tests/test_dicom_node.py and benchmarks/hostile_memory.py. Each
is seeded and makes its file in milliseconds: the large images here are large only in what their headers claim.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def _gray(size: int = 64, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.linspace(0.2, 0.8, size)[:, None] * np.ones((1, size))
    img = np.clip(yy + 0.1 * rng.standard_normal((size, size)), 0, 1)
    top = 255 if dtype == np.uint8 else 4095
    return (img * top).astype(dtype)


def j2k_codestream(size: int = 64, claim: tuple[int, int] | None = None, seed: int = 0) -> bytes:
    """A lossless 8-bit JPEG 2000 codestream of ``size`` x ``size``; ``claim`` = (width, height) rewrites its SIZ
    marker (the image and its single tile) to claim that size instead."""
    buf = io.BytesIO()
    Image.fromarray(_gray(size, seed)).save(buf, "JPEG2000", no_jp2=True, irreversible=False)
    data = bytearray(buf.getvalue())
    if claim is not None:
        siz = data.index(b"\xff\x4f\xff\x51") + 4  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz
        struct.pack_into(">IIIIII", data, siz + 4, claim[0], claim[1], 0, 0, claim[0], claim[1])
    return bytes(data)


def jpeg_baseline(size: int = 64, claim: tuple[int, int] | None = None, seed: int = 0) -> bytes:
    """A grayscale baseline JPEG; ``claim`` = (width, height) rewrites its SOF0 frame header."""
    buf = io.BytesIO()
    Image.fromarray(_gray(size, seed)).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    if claim is not None:
        sof = data.index(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, claim[1], claim[0])
    return bytes(data)


def compressed_dicom(codestream: bytes, syntax: str, rows: int, columns: int, **attrs) -> bytes:
    """A chest CR (Part 10) whose one frame is ``codestream`` under transfer syntax ``syntax``; the header says
    ``rows`` x ``columns``, 8-bit MONOCHROME2, whatever the codestream says."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientID = "CR", "CHEST", "HOSTILE-1"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def j2k_bomb_dicom(claim: int = 20000, header: int = 512) -> bytes:
    """~10 KB: a header of ``header`` x ``header`` over a JPEG 2000 codestream claiming ``claim`` x ``claim``."""
    return compressed_dicom(j2k_codestream(64, (claim, claim)), "1.2.840.10008.1.2.4.90", header, header)


def eps(loop: bool = False) -> bytes:
    """An Encapsulated PostScript image (Pillow writes it without Ghostscript); ``loop`` makes it a program that
    never ends once Ghostscript runs it."""
    buf = io.BytesIO()
    Image.fromarray(_gray(32)).save(buf, "EPS")
    data = buf.getvalue()
    if loop:
        data = data.replace(b"%%EndComments", b"%%EndComments\n{ } loop", 1)
    return data


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A ``.npy`` version 1.0 header declaring ``shape`` (no data after it)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def replace_arrays(model: Path, out: Path, members: dict[str, bytes], *, compress: bool = True) -> Path:
    """A copy of the model file ``model`` whose ``arrays.npz`` holds ``members`` (``name.npy`` -> bytes)."""
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename != "arrays.npz":
                dst.writestr(item, src.read(item.filename))
        dst.writestr("arrays.npz", npz.getvalue())
    return out


def npz_bomb_model(model: Path, out: Path, gib: float = 1.0) -> Path:
    """A model file whose ``arrays.npz`` (about 1 MB per GiB) holds one float32 array of ``gib`` GiB of zeros."""
    n = int(gib * 2**30) // 4
    head = npy_header((n,))
    zero = bytes(1 << 20)
    npz = io.BytesIO()
    with (
        zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("domain_mean.npy", "w", force_zip64=True) as f,
    ):
        f.write(head)
        left = n * 4
        while left:
            f.write(zero[: min(left, len(zero))])
            left -= min(left, len(zero))
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename != "arrays.npz":
                dst.writestr(item, src.read(item.filename))
        dst.writestr("arrays.npz", npz.getvalue())
    return out


# ---------------------------------------------------------------------------------------------------- the tests

import pytest  # noqa: E402

from pneumo.errors import ImageLoadError  # noqa: E402
from pneumo.imaging import load_image, load_image_and_display, probe_image  # noqa: E402

J2K, JPEG_BASELINE = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"


def _refused_calls(monkeypatch, owner, name: str, what: str) -> list:
    """``owner.name`` replaced by a spy that records each call and fails it: the list of calls made."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"{what} ran")

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.fixture
def no_decoding(monkeypatch):
    """Every DICOM pixel decoder call, recorded and refused: a check that runs after one has already paid."""
    import pydicom.pixels

    return _refused_calls(monkeypatch, pydicom.pixels, "pixel_array", "a DICOM pixel decoder")


# --- item 2: the codestream's own size, before any decoder ---

CODESTREAMS = {
    "j2k 20000x20000 under a 512x512 header": (lambda: j2k_bomb_dicom(), r"JPEG 2000 codestream claims 20000x20000"),
    "j2k 64x64 under a 32x32 header": (
        lambda: compressed_dicom(j2k_codestream(64), J2K, 32, 32),
        r"JPEG 2000 codestream is 64x64 with 1 component\(s\) but the header says 32x32",
    ),
    "jpeg 20000x20000 under a 512x512 header": (
        lambda: compressed_dicom(jpeg_baseline(64, (20000, 20000)), JPEG_BASELINE, 512, 512),
        r"JPEG codestream claims 20000x20000",
    ),
    "jpeg 64x64 under a 64x128 header": (
        lambda: compressed_dicom(jpeg_baseline(64), JPEG_BASELINE, 64, 128),
        r"JPEG codestream is 64x64 .* header says 128x64",
    ),
    "j2k 7000x7000, header and codestream over the budget": (
        lambda: compressed_dicom(j2k_codestream(64, (7000, 7000)), J2K, 7000, 7000),
        r"over the per-image budget",
    ),
    "no codestream header at all": (
        lambda: compressed_dicom(b"\x00" * 64, J2K, 64, 64),
        r"cannot read the size of the compressed pixel data",
    ),
}


@pytest.mark.parametrize("case", list(CODESTREAMS))
def test_compressed_dicom_is_sized_from_its_codestream_before_decoding(case, no_decoding):
    build, message = CODESTREAMS[case]
    data = build()
    assert len(data) < 20_000
    for load in (lambda: load_image(data, 224, name="h.dcm"), lambda: load_image_and_display(data, 224, name="h.dcm")):
        with pytest.raises(ImageLoadError, match=message) as info:
            load()
        assert info.value.kind == "damaged" and "\n" not in str(info.value)
    assert no_decoding == []


def test_honest_compressed_dicoms_still_decode():
    for data in (compressed_dicom(j2k_codestream(64), J2K, 64, 64),
                 compressed_dicom(jpeg_baseline(64), JPEG_BASELINE, 64, 64)):  # fmt: skip
        img = load_image(data, 32)
        assert img.shape == (32, 32) and 0.2 < float(img.mean()) < 0.8
        assert probe_image(data).width == 64


def test_the_node_and_dicom_out_refuse_the_codestream_bomb_from_the_header(no_decoding):
    pytest.importorskip("highdicom")
    from pneumo.dicom.instance import UNREADABLE, DicomAnalyser, DicomError

    with pytest.raises(DicomError, match=r"damaged DICOM data set \(its JPEG 2000 codestream claims") as info:
        DicomAnalyser.check(j2k_bomb_dicom(), "instance 1.2.3")
    assert info.value.reason == UNREADABLE and no_decoding == []


# --- item 4: Pillow opens only the formats the loader means to; PostScript never reaches Ghostscript ---


@pytest.fixture
def no_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    calls = _refused_calls(monkeypatch, EpsImagePlugin, "Ghostscript", "Ghostscript")
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    return calls


@pytest.mark.parametrize("loop", [False, True], ids=["eps", "looping-postscript"])
def test_postscript_named_jpeg_is_refused_without_ghostscript(loop, tmp_path, no_ghostscript, capsys):
    from pneumo.cli import main

    path = tmp_path / "x.jpeg"
    path.write_bytes(eps(loop))
    with pytest.raises(ImageLoadError, match=r"x.jpeg: PostScript content is not an image format") as info:
        load_image(path, 64)
    assert info.value.kind == "unsupported"
    with pytest.raises(ImageLoadError, match="PostScript"):
        probe_image(path)
    out = tmp_path / "p.csv"
    code = main(["predict", str(path), "-o", str(out)])
    assert code != 0 and "PostScript content" in out.read_text() and "PNEUMONIA" not in out.read_text()
    assert no_ghostscript == []


@pytest.mark.parametrize("fmt", ["GIF", "PDF", "ICO", "PPM"])
def test_other_pillow_formats_are_refused_by_the_loader(fmt, tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.fromarray(_gray(32)).convert("RGB" if fmt == "PDF" else "L").save(path, fmt)
    with pytest.raises(ImageLoadError) as info:
        load_image(path, 32)
    assert info.value.kind == "unsupported"


# --- item 9 and the Low model-file items: arrays.npz checked from its headers; damaged side data is one line ---


def _arrays_of(model: Path) -> dict[str, np.ndarray]:
    from pneumo.modelfile import load_model_file

    return dict(load_model_file(model, parts=()).arrays)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _with_arrays(model: Path, out: Path, change) -> Path:
    arrays = _arrays_of(model)
    change(arrays)
    return replace_arrays(model, out, {f"{k}.npy": v if isinstance(v, bytes) else _npy(v) for k, v in arrays.items()})


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MODEL_DAMAGE = {
    "npz bomb: 0.25 GiB of zeros in 250 kB": (
        lambda m, out: npz_bomb_model(m, out, gib=0.25),
        r"domain_mean declares 67,108,864 elements \(67108864,\), over the limit",
    ),
    "a header declaring 10^12 elements": (
        lambda m, out: _with_arrays(m, out, lambda a: a.update(domain_mean=npy_header((10**6, 10**6)))),
        r"domain_mean declares 1,000,000,000,000 elements",
    ),
    "an object array": (
        lambda m, out: _with_arrays(m, out, lambda a: a.update(domain_mean=npy_header((3,), "|O"))),
        r"domain_mean has dtype object, not a numeric array",
    ),
    "fewer bytes than the header declares": (
        lambda m, out: _with_arrays(m, out, lambda a: a.update(domain_mean=npy_header((1000,)) + bytes(40))),
        r"domain_mean holds 40 bytes of data where its header declares 4,000",
    ),
    "a missing arrays.npz key": (
        lambda m, out: _with_arrays(m, out, lambda a: a.pop("domain_scale")),
        r"the domain guard needs arrays.npz entry 'domain_scale', which is missing",
    ),
    "a wrong array shape": (
        lambda m, out: _with_arrays(m, out, lambda a: a.update(domain_components=a["domain_components"][:3])),
        r"domain_components has shape 3x\d+, not 8x\d+",
    ),
    "domain_scale = inf": (
        lambda m, out: _with_arrays(m, out, lambda a: a.update(domain_scale=np.array([np.inf, 1.0], np.float32))),
        r"domain_scale holds values that are not finite numbers",
    ),
    "a zero variance": (
        lambda m, out: _with_arrays(m, out, lambda a: a.update(domain_variances=0 * a["domain_variances"])),
        r"domain_variances must be positive",
    ),
    "a duplicate meta.json entry": (
        lambda m, out: _duplicate_member(m, out, "meta.json"),
        r"holds meta.json twice",
    ),
}


def _duplicate_member(model: Path, out: Path, name: str) -> Path:
    import warnings

    out.write_bytes(model.read_bytes())
    with warnings.catch_warnings(), zipfile.ZipFile(out, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        meta = json.loads(zf.read(name))
        meta["threshold"] = 0.01  # the second copy would silently win
        zf.writestr(name, json.dumps(meta))
    return out


@pytest.mark.parametrize("case", list(MODEL_DAMAGE))
def test_damaged_side_data_is_a_one_line_model_file_error(case, tiny_model, tmp_path):
    from pneumo.cli import main
    from pneumo.modelfile import ModelFileError, load_model_file

    build, message = MODEL_DAMAGE[case]
    bad = build(tiny_model, tmp_path / "bad.pneumo")
    assert bad.stat().st_size < 2**20
    before = _peak_rss_mb()
    with pytest.raises(ModelFileError, match=message) as info:
        load_model_file(bad)
    assert "\n" not in str(info.value)
    assert _peak_rss_mb() - before < 100  # refused from the headers: nothing near the declared size was allocated
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["info", "--model", str(bad)])
    assert code == 1 and err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue(), err.getvalue()


def test_an_honest_model_file_still_loads(tiny_model, tmp_path):
    from pneumo.modelfile import load_model_file

    same = _with_arrays(tiny_model, tmp_path / "same.pneumo", lambda a: None)
    a, b = load_model_file(tiny_model).arrays, load_model_file(same).arrays
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_an_image_size_the_graph_does_not_take_is_refused(tiny_model):
    from pneumo.modelfile import ModelFileError, load_model_file, onnx_session

    mf = load_model_file(tiny_model)
    onnx_session(mf.onnx, meta=mf.meta)  # the graph and its metadata agree
    wrong = mf.meta.model_copy(update={"preprocessing": mf.meta.preprocessing.model_copy(update={"image_size": 96})})
    with pytest.raises(ModelFileError, match=r"the graph takes 64x64 images but meta.json says 96x96"):
        onnx_session(mf.onnx, source="m.pneumo", meta=wrong)
