"""ONNX export, verified against PyTorch, and conversion between model files and PyTorch twins."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from pneumo.atomic import write_bytes
from pneumo.modelfile import ModelFile, ModelMeta, load_model_file, save_model_file
from pneumo.models import PneumoNet, WithFeatures, create_model

OPSET = 17
TOLERANCE = 1e-3


class ExportError(Exception):
    """The exported graph does not reproduce the PyTorch model."""


def export_onnx(net: PneumoNet, image_size: int, *, batch: int = 2, seed: int = 0) -> bytes:
    """Export ``net`` (outputs ``logits`` and ``features``) and check ONNX Runtime agrees to ``TOLERANCE``."""
    wrapped = WithFeatures(net).eval().to(memory_format=torch.contiguous_format)
    x = torch.randn(batch, 1, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (x,),
            buf,
            input_names=["image"],
            output_names=wrapped.output_names,
            dynamic_axes={name: {0: "batch"} for name in ["image", *wrapped.output_names]},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles every registered arch
        )
    data = buf.getvalue()
    verify_onnx(data, wrapped, x)
    return data


def verify_onnx(data: bytes, net: torch.nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`ExportError` unless ONNX Runtime reproduces every output of ``net`` on ``x`` to
    ``TOLERANCE`` (relative to the output's magnitude when that exceeds 1)."""
    import onnxruntime as ort

    net = WithFeatures(net) if isinstance(net, PneumoNet) else net
    with torch.no_grad():
        ref = [t.numpy() for t in net.eval()(x)]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})
    for name, r, g in zip(net.output_names, ref, got, strict=True):
        err = float(np.max(np.abs(r - g)))
        if not np.isfinite(err) or err > TOLERANCE * max(1.0, float(np.max(np.abs(r)))):
            raise ExportError(f"ONNX {name} differ from PyTorch by {err:.2e} (tolerance {TOLERANCE:g})")


def weights_bytes(net: PneumoNet) -> bytes:
    """The twin's weights as safetensors (no pickle)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in net.state_dict().items()})


def torch_twin(model: ModelFile) -> PneumoNet:
    """Rebuild the PyTorch network of a model file from its architecture and safetensors weights."""
    from safetensors.torch import load

    if model.weights is None:
        raise ValueError(f"{model.path}: this model file has no PyTorch weights (needed for explain and export)")
    meta = model.meta
    net = create_model(meta.arch, len(meta.class_names), pretrained=False, **meta.arch_kwargs)
    net.load_state_dict(load(model.weights))
    return net.eval()


def export_model(model: str | Path | None, output: str | Path) -> Path:
    """``pneumo export``: re-export a model file's twin to ``output`` (.onnx, with the metadata embedded, or
    .pneumo, a complete model file), verifying ONNX Runtime against PyTorch."""
    import onnx

    mf = load_model_file(model)
    net = torch_twin(mf)
    data = export_onnx(net, mf.meta.preprocessing.image_size)
    output = Path(output)
    if output.suffix == ".pneumo":
        save_model_file(output, mf.model_copy(update={"onnx": data}))
        return output
    proto = onnx.load_from_string(data)
    # The metadata travels inside the .onnx too, so the graph alone is enough for `pneumo predict`.
    onnx.helper.set_model_props(proto, {"pneumo_meta": mf.meta.model_dump_json()})
    arrays = {k: v.tolist() for k, v in mf.arrays.items()}
    if arrays:
        proto.metadata_props.add(key="pneumo_arrays", value=json.dumps(arrays))
    write_bytes(output, proto.SerializeToString())
    return output


def build_model_file(net: PneumoNet, meta: ModelMeta, arrays: dict[str, np.ndarray]) -> ModelFile:
    """A complete model file: verified ONNX graph, safetensors twin, metadata and side arrays."""
    net = net.eval()
    data = export_onnx(net, meta.preprocessing.image_size)
    return ModelFile(meta=meta, onnx=data, weights=weights_bytes(net), arrays=arrays)
