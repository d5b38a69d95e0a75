"""pneumo.explain: Grad-CAM maps are well-formed and ``pneumo explain`` writes one PNG per readable image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumo.cli import main
from pneumo.explain import Explainer


def _xray(seed: int = 0, h: int = 90, w: int = 120) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.25 + 0.4 * yy + 0.3 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.4) ** 2) / 0.01)
    return (np.clip(img + 0.05 * rng.standard_normal((h, w)), 0, 1) * 255).astype(np.uint8)


def _dicom(path, pixels: np.ndarray):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def explainer(tiny_model):
    return Explainer.load(tiny_model)


def test_heatmap_is_input_sized_unit_range_and_informative(explainer):
    size = explainer.model.meta.preprocessing.image_size
    img = np.asarray(Image.fromarray(_xray()).resize((size, size)), dtype=np.float32) / 255
    cam = explainer.heatmap(img)
    assert cam.shape == (size, size)
    assert np.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() <= 1
    assert cam.std() > 1e-4  # not a constant map for an image with structure


def test_explain_keeps_aspect_ratio_and_agrees_with_predict(explainer, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_xray()).save(path)
    exp = explainer.explain(path, str(path))
    assert exp.image.shape == exp.heatmap.shape == (90, 120)
    assert exp.prediction.probability == pytest.approx(explainer.predictor.predict_one(path, "x").probability)


def test_explain_cli_writes_pngs(tiny_model, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_xray(1)).save(src / "a.png")
    Image.fromarray(_xray(2)).save(src / "b.jpg")
    _dicom(src / "c.dcm", _xray(3, 64, 64))
    (src / "d.png").write_bytes(b"broken")
    out = tmp_path / "out"
    assert main(["explain", str(src), "--model", str(tiny_model), "-o", str(out)]) == 3  # d.png is unreadable
    captured = capsys.readouterr()
    assert "d.png" in captured.err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_gradcam.png", "b_gradcam.png", "c_gradcam.png"]
    for p in out.iterdir():
        assert p.stat().st_size > 0
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    assert main(["explain", str(src / "a.png"), "-m", str(tiny_model), "-o", str(tmp_path / "o2")]) == 0


def test_explain_real_dicom(dicom_dir, tiny_model, tmp_path):
    files = [p for p in sorted(dicom_dir.glob("*.dcm")) if "NoPixelData" not in p.name][:1]
    assert main(["explain", *map(str, files), "-m", str(tiny_model), "-o", str(tmp_path)]) == 0
    assert (tmp_path / f"{files[0].stem}_gradcam.png").stat().st_size > 0
