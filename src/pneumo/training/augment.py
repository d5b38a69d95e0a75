"""Augmentation applied to whole batches of tensors (N x 1 x H x W in [0, 1]).

Per-image Python transforms would spend a 2-core CPU on the data loader; here each step is a handful of batched
tensor operations with per-sample random parameters. Two groups:

- geometry: rotation, shear, content scale and aspect ratio (independent, log-uniform), translation, horizontal
  flip (one ``affine_grid`` / ``grid_sample``). How much of the frame the chest fills, and its aspect, differ by
  class in this dataset's originals and between acquisition periods: a model must not read them;
- acquisition: brightness, contrast, gamma, blur or sharpening, resolution loss and noise -- what differs between
  scanners and exposure settings, and what a model must not use as a shortcut for the diagnosis;
- what lies outside the lungs: the region outside the lung atlas swapped between images of the batch (either
  class), so that the mediastinum, abdomen, shoulders and the child's size stop telling the class; flat grey
  bands over random edges and corners, and marker-like text (laterality
  letters, view labels) pasted on both classes at random places near the edges, so that neither the frame's edges
  nor burnt-in marks tell the class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pneumo.config import AugmentConfig
from pneumo.modelfile import Preprocessing


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, device=like.device, dtype=like.dtype).uniform_(lo, hi)


def _log_uniform(n: int, bounds: tuple[float, float], like: torch.Tensor) -> torch.Tensor:
    lo, hi = bounds
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), like))


def _warp(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Resample with ``theta`` mapping output to input coordinates; the edge pixels extend past the frame, or,
    for the images where ``fill`` (N) is not NaN, the margin takes that grey.
    :func:`pneumo.preprocess.rescale_content` is the numpy twin of the edge-extending sampling."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if fill is None or not torch.isfinite(fill).any():
        return out
    v = torch.nan_to_num(fill).view(-1, 1, 1, 1)
    flat = F.grid_sample(x - v, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + v
    return torch.where(torch.isfinite(fill).view(-1, 1, 1, 1), flat, out)


def _margin_fill(x: torch.Tensor, p: float) -> torch.Tensor:
    """Per image: NaN (extend the edge) or, with probability ``p``, a flat margin grey between black and the
    mean of the image's border: a smaller or shifted chest in a wider field, as another framing gives it."""
    n = x.shape[0]
    border = torch.cat([x[:, 0, 0], x[:, 0, -1], x[:, 0, :, 0], x[:, 0, :, -1]], dim=1).mean(1)
    grey = border * torch.rand(n, device=x.device, dtype=x.dtype)
    return torch.where(torch.rand(n, device=x.device) < p, grey, torch.full_like(grey, float("nan")))


def random_affine(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Rotate, shear, scale, stretch, translate and flip every image of the batch by its own random amount."""
    n = x.shape[0]
    rot = torch.deg2rad(_uniform(n, -cfg.rotation_deg, cfg.rotation_deg, x))
    shear = torch.deg2rad(_uniform(n, -cfg.shear_deg, cfg.shear_deg, x))
    scale, aspect = _log_uniform(n, cfg.scale, x), _log_uniform(n, cfg.aspect, x)
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()  # independent: the area and the aspect both vary
    flip = torch.where(torch.rand(n, device=x.device) < cfg.hflip_p, -1.0, 1.0).to(x.dtype)
    cos, sin = torch.cos(rot), torch.sin(rot)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    # grid_sample maps output -> input coordinates: rotation @ shear @ flip @ diag(1/sx, 1/sy), so dividing by a
    # scale enlarges the content.
    theta[:, 0, 0] = cos / sx * flip
    theta[:, 0, 1] = (-sin + torch.tan(shear) * cos) / sy
    theta[:, 1, 0] = sin / sx * flip
    theta[:, 1, 1] = (cos + torch.tan(shear) * sin) / sy
    theta[:, :, 2] = _uniform(2 * n, -cfg.translate, cfg.translate, x).view(n, 2) * 2
    return _warp(x, theta, _margin_fill(x, cfg.flat_margin_p) if cfg.flat_margin_p > 0 else None)


def rescale_batch(x: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """The content scaled by ``sx`` across and ``sy`` down about the centre (< 1 shrinks and pads with the edge)."""
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / sx, 1 / sy
    return _warp(x, theta)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own sigma (0 = unchanged), as one grouped separable convolution."""
    n, _, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    xg = x.reshape(1, n, h, w)
    xg = F.conv2d(F.pad(xg, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=n)
    xg = F.conv2d(F.pad(xg, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=n)
    return xg.reshape(n, 1, h, w)


def random_acquisition(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Exposure, contrast, gamma, blur/sharpen, resolution loss and noise, each image drawn independently."""
    n = x.shape[0]
    view = (n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, x).view(view)
    bright = _uniform(n, -cfg.brightness, cfg.brightness, x).view(view)
    x = ((x - mean) * contrast + mean + bright).clamp(0, 1)
    gamma = torch.exp(_uniform(n, -cfg.gamma, cfg.gamma, x)).view(view)
    x = x.clamp_min(1e-6) ** gamma

    if cfg.blur_sharpen_p > 0:
        # Half blur, half unsharp-mask: sharpness differs by class in this dataset, so make it uninformative.
        pick = torch.rand(n, device=x.device) < cfg.blur_sharpen_p
        sharpen = torch.rand(n, device=x.device) < 0.5
        sigma = _uniform(n, 0.3, cfg.blur_sigma_max, x) * pick
        blurred = gaussian_blur(x, sigma)
        amount = (_uniform(n, 0.2, cfg.sharpen_max, x) * (pick & sharpen)).view(view)
        x = torch.where((pick & ~sharpen).view(view), blurred, x + amount * (x - blurred)).clamp(0, 1)

    if cfg.resolution_loss_p > 0:
        h, w = x.shape[-2:]
        s = float(torch.empty(1).uniform_(cfg.resolution_min_scale, 1.0))
        small = F.interpolate(x, size=(max(8, int(h * s)), max(8, int(w * s))), mode="bilinear", antialias=True)
        lowres = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        pick = (torch.rand(n, device=x.device) < cfg.resolution_loss_p).view(view)
        x = torch.where(pick, lowres, x)

    if cfg.noise_p > 0:
        std = (_uniform(n, 0, cfg.noise_std_max, x) * (torch.rand(n, device=x.device) < cfg.noise_p)).view(view)
        x = (x + torch.randn_like(x) * std).clamp(0, 1)
    return x


def random_border_erase(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """For a share ``border_erase_p`` of the images, flat grey bands over the edges: each side independently with
    probability one half, up to ``border_erase_max`` of the frame deep; the grey is drawn per image."""
    if cfg.border_erase_p <= 0:
        return x
    n, _, h, w = x.shape
    pick = torch.rand(n, device=x.device) < cfg.border_erase_p
    depth = _uniform(4 * n, 0.0, cfg.border_erase_max, x).view(n, 4) * (torch.rand(n, 4, device=x.device) < 0.5)
    depth = depth * pick[:, None]
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    left, right, top, bottom = (depth[:, i].view(n, 1, 1, 1) for i in range(4))
    band = (xs.view(1, 1, 1, w) < left) | (xs.view(1, 1, 1, w) > 1 - right)
    band = band | (ys.view(1, 1, h, 1) < top) | (ys.view(1, 1, h, 1) > 1 - bottom)
    grey = torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype)
    return torch.where(band, grey, x)


MARKER_TEXTS = ("R", "L", "R", "L", "AP", "PA", "SUPINE", "PORTABLE", "ERECT", "1", "2", "3")


def marker_glyphs(height: int = 32) -> torch.Tensor:
    """Alpha masks (G x 1 x height x 4*height) of marker-like texts in Pillow's bundled font, left-aligned on a
    transparent canvas; some inside a box, as lead markers often are."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(height * 0.8))
    out = []
    for i, text in enumerate(MARKER_TEXTS):
        canvas = Image.new("L", (4 * height, height), 0)
        draw = ImageDraw.Draw(canvas)
        draw.text((3, height // 10), text, fill=255, font=font)
        if i % 3 == 0:  # a frame around the text
            x1 = min(4 * height - 1, int(draw.textlength(text, font=font)) + 6)
            draw.rectangle((0, 0, x1, height - 1), outline=255, width=max(1, height // 16))
        out.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0))
    return torch.stack(out)[:, None]


_GLYPHS: dict[int, torch.Tensor] = {}


def random_markers(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """For a share ``marker_p`` of the images (either class), one marker-like text pasted near an edge: its height
    ``marker_size`` of the frame's, white or dark, partly transparent at times."""
    if cfg.marker_p <= 0:
        return x
    n, _, h, w = x.shape
    glyphs = _GLYPHS.setdefault(32, marker_glyphs(32)).to(x.device, x.dtype)
    g = glyphs[torch.randint(len(glyphs), (n,), device=x.device)]
    half_h = _uniform(n, *cfg.marker_size, x) / 2 * 2  # half the height in [-1, 1] units (the frame is 2 high)
    half_w = half_h * 4 * h / w  # the canvas is four times as wide as high
    # the text's left-top corner near an edge: along one side anywhere, across it within 5-20 % of the frame
    along = _uniform(n, -0.9, 0.6, x)
    across = _uniform(n, 0.6, 0.9, x) * torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
    vertical_side = torch.rand(n, device=x.device) < 0.5
    cx = torch.where(vertical_side, across, along) + half_w
    cy = torch.where(vertical_side, along, across) + half_h
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = 1 / half_w, -cx / half_w
    theta[:, 1, 1], theta[:, 1, 2] = 1 / half_h, -cy / half_h
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    alpha = F.grid_sample(g, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    pick = (torch.rand(n, device=x.device) < cfg.marker_p).to(x.dtype).view(n, 1, 1, 1)
    alpha = alpha * pick * _uniform(n, 0.6, 1.0, x).view(n, 1, 1, 1)
    ink = torch.where(torch.rand(n, device=x.device) < 0.8, 1.0, 0.05).to(x.dtype).view(n, 1, 1, 1)
    return x * (1 - alpha) + ink * alpha


def lung_field(atlas_png, size: int, level: float, feather_px: float = 2.0) -> torch.Tensor:
    """The atlas's lung field at ``size`` x ``size`` (1 x 1 x size x size, in [0, 1]): pixels where at least
    ``level`` of the training images have lung, with a feathered edge so that a swap leaves no hard seam."""
    from PIL import Image

    with Image.open(atlas_png) as im:
        atlas = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    field = torch.from_numpy((np.asarray(atlas, dtype=np.float32) / 255.0 > level).astype(np.float32))[None, None]
    return gaussian_blur(field, torch.tensor([feather_px])).clamp(0, 1)


def random_context_swap(x: torch.Tensor, lungs: torch.Tensor, p: float) -> torch.Tensor:
    """For a share ``p`` of the images, everything outside the lung field (``lungs``, 1 x 1 x H x W) replaced by
    the same region of another image of the batch, drawn at random from either class."""
    if p <= 0 or x.shape[0] < 2:
        return x
    n = x.shape[0]
    # a random derangement: every picked image takes another image's context
    donor = (torch.arange(n, device=x.device) + torch.randint(1, n, (n,), device=x.device)) % n
    pick = (torch.rand(n, device=x.device) < p).to(x.dtype).view(n, 1, 1, 1)
    outside = (1 - lungs.to(x.dtype)) * pick
    return x * (1 - outside) + x[donor] * outside


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, lungs: torch.Tensor | None = None) -> torch.Tensor:
    """Context swap (with a lung field), geometry, acquisition, then the edge and marker transforms on a batch in
    [0, 1]."""
    if not cfg.enabled:
        return x
    if lungs is not None:
        x = random_context_swap(x, lungs, cfg.context_swap_p)
    x = random_acquisition(random_affine(x, cfg), cfg)
    return random_markers(random_border_erase(x, cfg), cfg)


def equalize_batch(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Histogram equalisation of every image in a batch; matches :func:`pneumo.preprocess.equalize`."""
    n = x.shape[0]
    q = (x.reshape(n, -1) * (levels - 1)).round().clamp(0, levels - 1).long()
    offsets = torch.arange(n, device=x.device)[:, None] * levels
    hist = torch.bincount((q + offsets).reshape(-1), minlength=n * levels).reshape(n, levels).to(torch.float64)
    cdf = hist.cumsum(1)
    # lowest occupied level's cdf value (the first non-zero of the cdf)
    lo = torch.where(cdf > 0, cdf, torch.full_like(cdf, float("inf"))).min(1, keepdim=True).values
    span = cdf[:, -1:] - lo
    lut = torch.where(span > 0, ((cdf - lo) / span.clamp_min(1e-12)).clamp(0, 1), torch.full_like(cdf, 0.5))
    return lut.to(x.dtype).gather(1, q).reshape(x.shape)


def normalize_batch(x: torch.Tensor, cfg: Preprocessing) -> torch.Tensor:
    """The training-time twin of :func:`pneumo.preprocess.to_input` for a batch already at the input size."""
    if cfg.normalization == "equalize":
        x = equalize_batch(x)
    return (x - cfg.mean) / cfg.std
