"""ONNX export, verified against PyTorch, and conversion between model files and PyTorch twins."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumo.errors import PneumoError
from pneumo.graph_names import CAM_OUTPUT
from pneumo.modelfile import (
    ModelFile,
    ModelFileError,
    ModelMeta,
    load_model_file,
    onnx_session,
    save_model_file,
    save_onnx_file,
)
from pneumo.training.models import PneumoNet, WithFeatures, cam_target_layer, create_model

OPSET = 17
TOLERANCE = 1e-3


class ExportError(PneumoError):
    """The exported graph does not reproduce the PyTorch model."""


class WithCam(nn.Module):
    """Export wrapper: the outputs of :class:`WithFeatures`, then ``cam`` (N x h x w), the class activation map of
    the pneumonia log-odds on the architecture's Grad-CAM layer: ``cam = sum_c w_c A_c`` with
    ``w = d log-odds / d pooled features``.

    Only for a layer whose output global average pooling turns into the head's input (see :func:`export_wrapper`):
    then Grad-CAM's channel weights are exactly ``w`` divided by the number of cells, so ``ReLU(cam)`` is
    Grad-CAM's map up to a positive factor that min-max scaling removes (and, for a binary head, ``mean(cam)``
    plus the head's bias difference is the log-odds itself).
    The log-odds is ``logsumexp(logits[1:]) - logits[0]`` of the main head (a subtype head never enters it), so
    ``w = softmax(logits[1:]) @ W[1:] - W[0]``: ``W[1] - W[0]`` for a binary head, input-dependent for three
    classes. Calibration divides the log-odds by a positive temperature and shifts it, which leaves the map's
    shape alone, so the graph needs no calibration."""

    def __init__(self, net: PneumoNet, layer: nn.Module):
        super().__init__()
        self.inner = WithFeatures(net)
        self.layer = layer

    @property
    def output_names(self) -> list[str]:
        return [*self.inner.output_names, CAM_OUTPUT]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        acts: list[torch.Tensor] = []
        # A hook for this call only: the network itself is left as it was given.
        hook = self.layer.register_forward_hook(lambda module, args, out: acts.append(out))
        try:
            outs = self.inner(x)
        finally:
            hook.remove()
        weight = self.inner.net.head.weight
        w = torch.softmax(outs[0][:, 1:], dim=1) @ weight[1:] - weight[0]  # d logsumexp / d logit_k = softmax_k
        return (*outs, (w[:, :, None, None] * acts[-1]).sum(dim=1))


def _pooled_layer(net: PneumoNet, arch: str, x: torch.Tensor) -> nn.Module | None:
    """The Grad-CAM layer of ``arch`` if its output, globally average-pooled, is the head's input (checked on
    ``x``, not assumed), else ``None``."""
    layer = cam_target_layer(net, arch)
    acts: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, args, out: acts.append(out))
    try:
        with torch.no_grad():
            pooled = net.eval().forward_features(x)
    finally:
        hook.remove()
    if len(acts) != 1 or acts[0].ndim != 4 or acts[0].shape[:2] != pooled.shape:
        return None
    return layer if torch.allclose(acts[0].mean(dim=(2, 3)), pooled, rtol=1e-4, atol=1e-5) else None


def export_wrapper(net: PneumoNet, arch: str | None = None, x: torch.Tensor | None = None) -> nn.Module:
    """The module whose outputs the ONNX graph has: :class:`WithCam` when ``arch`` is given and the class
    activation map equals Grad-CAM for it (global average pooling then the linear head: the CNNs, ResNet,
    DenseNet, EfficientNet here), else :class:`WithFeatures`."""
    if arch is not None:
        probe = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)) if x is None else x
        layer = _pooled_layer(net, arch, probe)
        if layer is not None:
            return WithCam(net, layer)
    return WithFeatures(net)


def export_onnx(net: PneumoNet, image_size: int, *, batch: int = 2, seed: int = 0, arch: str | None = None) -> bytes:
    """Export ``net`` (outputs ``logits``, ``features``[, ``subtype_logits``] and, when ``arch`` names its
    architecture and the identity holds, ``cam``: see :class:`WithCam`) and check ONNX Runtime agrees to
    ``TOLERANCE`` on every output."""
    x = torch.randn(batch, 1, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    wrapped = export_wrapper(net.eval(), arch, x).eval().to(memory_format=torch.contiguous_format)
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


def verify_onnx(data: bytes, net: torch.nn.Module, x: torch.Tensor, *, arch: str | None = None) -> None:
    """Raise :class:`ExportError` unless ONNX Runtime reproduces every output of ``net`` on ``x`` to
    ``TOLERANCE`` (relative to the output's magnitude when that exceeds 1). A bare :class:`PneumoNet` is wrapped
    by :func:`export_wrapper` (pass ``arch`` to check a ``cam`` output too)."""
    net = export_wrapper(net, arch, x) if isinstance(net, PneumoNet) else net
    with torch.no_grad():
        ref = [t.numpy() for t in net.eval()(x)]
    try:
        sess = onnx_session(data, source="exported graph")
    except ModelFileError as exc:
        raise ExportError(str(exc)) from exc
    got = sess.run(net.output_names, {"image": x.numpy()})  # by name: a graph may have more outputs than net
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
        raise ModelFileError(f"{model.path}: this model file has no PyTorch weights (needed for explain and export)")
    meta = model.meta
    net = create_model(meta.arch, len(meta.class_names), pretrained=False, **meta.arch_kwargs)
    net.load_state_dict(load(model.weights))
    return net.eval()


def export_model(model: str | Path | None, output: str | Path) -> Path:
    """``pneumo export``: re-export a model file's twin to ``output`` (.onnx, with the metadata embedded, or
    .pneumo, a complete model file), verifying ONNX Runtime against PyTorch."""
    mf = load_model_file(model)
    data = export_onnx(torch_twin(mf), mf.meta.preprocessing.image_size, arch=mf.meta.arch)
    save = save_model_file if Path(output).suffix == ".pneumo" else save_onnx_file
    return save(output, mf.model_copy(update={"onnx": data}))


def build_model_file(net: PneumoNet, meta: ModelMeta, arrays: dict[str, np.ndarray]) -> ModelFile:
    """A complete model file: verified ONNX graph, safetensors twin, metadata and side arrays."""
    net = net.eval()
    data = export_onnx(net, meta.preprocessing.image_size, arch=meta.arch)
    return ModelFile(meta=meta, onnx=data, weights=weights_bytes(net), arrays=arrays)
