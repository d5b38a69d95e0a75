"""Shared fixtures. Tests that need the real data read ../shared/data and skip cleanly when it is absent."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

# Property tests draw the same examples on every machine and run: a failure in CI is one you can reproduce.
settings.register_profile("pneumo", derandomize=True, database=None)
settings.load_profile("pneumo")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present at {path} (set PNEUMO_SHARED_DATA to run this test)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def kermany_train() -> Path:
    """The Kermany training split (5,216 images), or skip."""
    return _need(SHARED_DATA / "chest_xray" / "train")


@pytest.fixture(scope="session")
def fullres_dir() -> Path:
    """The 16 original-size images, or skip."""
    return _need(SHARED_DATA / "chest_xray_fullres" / "val")


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    """Real DICOM files, or skip."""
    return _need(SHARED_DATA / "dicom")


def xray(seed: int, size: int = 96) -> Image.Image:
    """A chest-like grayscale image: a vertical gradient, a bright blob at a seeded place, and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.25 + 0.4 * yy + 0.25 * np.exp(-((xx - rng.uniform(0.2, 0.8)) ** 2 + (yy - 0.5) ** 2) / 0.03)
    return Image.fromarray((np.clip(img + 0.05 * rng.standard_normal((size, size)), 0, 1) * 255).astype(np.uint8))


def encode_png(img: Image.Image | np.ndarray) -> bytes:
    """``img`` (a PIL image or a uint8 array) as PNG bytes."""
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG whose header claims width x height (8-bit grey by default) over a few bytes of pixel data: a
    decompression bomb when large; decoding it would fail."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def dicom_bytes(pixels: np.ndarray | None, *, preamble: bool = True, **attrs) -> bytes:
    """A CR image as DICOM: ``pixels`` as 16-bit words, 12 bits stored (``None``: no pixel data at all), with the
    preamble and file meta header or, ``preamble=False``, a bare implicit-VR dataset; ``attrs`` set more elements
    or override these (``PhotometricInterpretation``, ``Modality``, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    ds.SOPInstanceUID = generate_uid()
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def truncated_jpeg(path: Path) -> Path:
    """A JPEG of :func:`xray` cut in half: a known format whose data ends early."""
    buf = io.BytesIO()
    xray(1, 200).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def make_tiny_model(
    path: Path, *, task: str = "binary", image_size: int = 64, seed: int = 0, validation: dict | None = None
) -> Path:
    """A real (untrained, seeded) cnn-small model file with a fitted domain guard, built by the export path;
    ``validation`` replaces its (placeholder) validation figures."""
    import torch

    from pneumo.domain import fit_domain_guard
    from pneumo.modelfile import TASK_CLASSES, ModelMeta, Preprocessing, save_model_file
    from pneumo.preprocess import to_input
    from pneumo.training.export import build_model_file
    from pneumo.training.models import count_parameters, create_model

    torch.manual_seed(seed)
    classes = TASK_CLASSES[task]
    net = create_model("cnn-small", len(classes)).eval()
    pre = Preprocessing(image_size=image_size)
    rng = np.random.default_rng(seed)
    # Smooth random "X-ray-like" images: a vertical gradient plus blobs, so features are not degenerate.
    yy = np.linspace(0, 1, image_size)[:, None] * np.ones((1, image_size))
    imgs = [np.clip(0.3 + 0.4 * yy + 0.2 * rng.standard_normal((image_size, image_size)), 0, 1) for _ in range(48)]
    with torch.no_grad():
        _, feats = net.forward_with_features(torch.from_numpy(to_input(imgs, pre)))
    guard, arrays = fit_domain_guard(feats[:32].numpy(), feats[32:].numpy(), components=8, quantile=0.95)
    meta = ModelMeta(
        name=f"tiny-{task}", arch="cnn-small", task=task, class_names=list(classes), preprocessing=pre,
        temperature=1.3, threshold=0.5, params=count_parameters(net), feature_dim=int(feats.shape[1]),
        domain_guard=guard, validation=validation or {"accuracy": 0.5, "roc_auc": 0.5},
    )  # fmt: skip
    return save_model_file(path, build_model_file(net, meta, arrays))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Path of a small binary model file (real network, real ONNX graph, untrained)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.pneumo")


@pytest.fixture(scope="session")
def tiny_subtype_model(tmp_path_factory) -> Path:
    """Path of a small subtype (normal / bacterial / viral) model file."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-subtype.pneumo", task="subtype")
