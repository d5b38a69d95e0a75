"""Reference images that are NOT pediatric chest X-rays, for measuring the domain guard.

Photographs shipped by scikit-image and scikit-learn (development extras), generated blanks, noise, gradients,
text and document-like pages, and adult chest radiographs (DICOM) shipped by the ``pydicom-data`` package.
Nothing is downloaded: sample images that would need a download are skipped.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

Sample = tuple[str, bytes]

_SKIMAGE = [
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
    "rocket", "shepp_logan_phantom", "text", "cat", "checkerboard", "binary_blobs",
]  # fmt: skip
ADULT_CHEST_DICOMS = ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"]


def _png(a: np.ndarray) -> bytes:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = np.clip(255 * (a - a.min()) / max(1e-9, a.max() - a.min()), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def photographs() -> Iterator[Sample]:
    """scikit-image sample images, scikit-learn's two photographs and the LFW face crops shipped with skimage."""
    import skimage.data as skd

    for name in _SKIMAGE:
        try:
            yield f"skimage:{name}", _png(getattr(skd, name)())
        except Exception:
            continue
    try:
        faces = skd.lfw_subset()
        for i, face in enumerate(faces[::2]):
            yield f"skimage:lfw_{i:03d}", _png(face)
    except Exception:
        pass
    from sklearn.datasets import load_sample_images

    for i, img in enumerate(load_sample_images().images):
        yield f"sklearn:sample_{i}", _png(img)


def _page(seed: int, size: tuple[int, int] = (600, 800)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = Image.new("L", size, 255)
    draw = ImageDraw.Draw(im)
    y = 40
    while y < size[1] - 40:
        words = " ".join("".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 9))) for _ in range(9))
        draw.text((40, y), words, fill=0)
        y += int(rng.integers(14, 30))
    return np.asarray(im)


def synthetic() -> Iterator[Sample]:
    """Blank, noise, gradient, checkerboard and text/document images."""
    rng = np.random.default_rng(0)
    for v in (0, 128, 255):
        yield f"blank_{v}", _png(np.full((256, 256), v, dtype=np.uint8))
    for i in range(4):
        yield f"uniform_noise_{i}", _png(rng.integers(0, 256, (256, 256), dtype=np.uint8))
        yield f"gaussian_noise_{i}", _png(np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8))
    yy, xx = np.mgrid[0:256, 0:256]
    yield "gradient_h", _png(xx.astype(np.uint8))
    yield "gradient_v", _png(yy.astype(np.uint8))
    yield "checker", _png((((yy // 32) + (xx // 32)) % 2 * 255).astype(np.uint8))
    for i in range(6):
        yield f"document_{i}", _png(_page(i))
        yield f"document_inverted_{i}", _png(255 - _page(i + 10))


def adult_chest_radiographs() -> Iterator[Sample]:
    """Adult chest CR images shipped by ``pydicom-data`` (MONOCHROME1, 15-bit, several transfer syntaxes)."""
    from pydicom.data import get_testdata_file

    for name in ADULT_CHEST_DICOMS:
        path = get_testdata_file(name)
        if path:
            with open(path, "rb") as f:
                yield f"pydicom-data:{name}", f.read()
