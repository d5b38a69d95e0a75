"""pneumo.training.export: the ONNX graph reproduces PyTorch, the check checks, and exported files predict alike."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pneumo.inference import Predictor, open_model
from pneumo.modelfile import ModelFileError, load_model_file
from pneumo.training import export
from pneumo.training.export import ExportError, export_model, export_onnx, torch_twin
from pneumo.training.models import create_model


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return create_model("cnn-small", 2).eval()


def test_export_onnx_agrees_with_pytorch(small_net):
    data = export_onnx(small_net, 32)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "features"]
    # a batch size and input the export never saw: the batch axis is dynamic
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    logits, feats = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref_logits, ref_feats = small_net.forward_with_features(x)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(feats, ref_feats.numpy(), atol=1e-4)
    assert not small_net.training  # exporting leaves the model in eval mode


def test_export_check_fails_when_tolerance_cannot_be_met(small_net, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_onnx(small_net, 32)


def _shift_head_bias(data: bytes, delta: float) -> bytes:
    """The same graph with ``delta`` added to the classifier's bias: its logits move by exactly ``delta``."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    (init,) = [t for t in proto.graph.initializer if t.name.endswith("head.bias")]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(delta), init.name))
    return proto.SerializeToString()


@pytest.mark.parametrize(("delta", "refused"), [(1e-2, True), (-1e-2, True), (1e-4, False), (0.0, False)])
def test_parity_check_pins_its_bound(small_net, delta, refused):
    """The bound itself: a graph whose logits differ by 1e-2 is refused, one within 1e-4 is accepted."""
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert small_net(x).abs().max() < 1  # so the bound is absolute here: TOLERANCE, not TOLERANCE * |logit|
    graph = _shift_head_bias(export_onnx(small_net, 32), delta)
    if refused:
        with pytest.raises(ExportError, match=r"ONNX logits differ from PyTorch by 1\.00e-02"):
            export.verify_onnx(graph, small_net, x)
    else:
        export.verify_onnx(graph, small_net, x)


def test_export_check_fails_on_nan():
    net = create_model("cnn-small", 2).eval()
    with torch.no_grad():
        net.head.weight.fill_(float("nan"))
    with pytest.raises(ExportError):
        export_onnx(net, 32)


def test_torch_twin_reproduces_the_onnx_graph(tiny_model):
    mf = load_model_file(tiny_model)
    net = torch_twin(mf)
    assert not net.training
    x = np.random.default_rng(0).standard_normal((3, 1, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(mf.onnx, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(["logits"], {"image": x})[0], ref, atol=1e-4)


def _image(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, size)[:, None] * np.ones((1, size))
    return np.clip(0.3 + 0.4 * yy + 0.15 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)


def _same_predictions(a: Predictor, b: Predictor) -> None:
    imgs = [_image(s) for s in range(6)]
    names = [f"img{i}" for i in range(6)]
    for pa, pb in zip(a.predict_arrays(imgs, names), b.predict_arrays(imgs, names), strict=True):
        assert pa.probability == pytest.approx(pb.probability, abs=1e-5)
        assert pa.prediction == pb.prediction and pa.threshold == pb.threshold
        assert pa.in_domain == pb.in_domain and pa.in_domain is not None
        assert pa.domain_score == pytest.approx(pb.domain_score, abs=1e-6)


def test_export_to_onnx_carries_the_metadata(tiny_model, tmp_path):
    out = export_model(tiny_model, tmp_path / "deep" / "m.onnx")
    assert out.is_file() and out.suffix == ".onnx"
    mf = open_model(out)
    orig = load_model_file(tiny_model)
    assert mf.meta == orig.meta
    assert set(mf.arrays) == set(orig.arrays)
    for k, v in orig.arrays.items():
        np.testing.assert_allclose(mf.arrays[k], v, rtol=1e-6)
    _same_predictions(Predictor.load(out), Predictor.load(tiny_model))


def test_export_to_pneumo(tiny_model, tmp_path):
    out = export_model(tiny_model, tmp_path / "copy.pneumo")
    mf = load_model_file(out)
    assert mf.weights is not None and mf.onnx is not None and mf.meta == load_model_file(tiny_model).meta
    _same_predictions(Predictor.load(out), Predictor.load(tiny_model))


def test_export_cli(tiny_model, tmp_path, capsys):
    from pneumo.cli import main

    assert main(["export", "--model", str(tiny_model), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").is_file()


def test_onnx_without_pneumo_metadata_is_refused(small_net, tmp_path):
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(export_onnx(small_net, 32))
    with pytest.raises(ModelFileError, match="without Pneumo metadata"):
        Predictor.load(bare)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf")
    with pytest.raises(ModelFileError, match="not a readable ONNX graph"):
        Predictor.load(junk)
