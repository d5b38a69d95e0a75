"""Remake the README's screenshot of the page: the real server and a real headless Chromium on 127.0.0.1.

Uploads the first PNEUMONIA and the first NORMAL full-size X-ray of ../shared/data/chest_xray_fullres/val
(``PNEUMO_SHARED_DATA`` overrides ../shared/data) and a noise image that the domain guard flags, with heat maps,
waits for every result card and writes a full-page PNG. Needs Debian's Chromium at /usr/bin/chromium
(``apt-get install chromium``) and Playwright for Python (the ``dev`` extra).

    python benchmarks/screenshot.py [--out docs/screenshot.png] [--model M]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FULLRES = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data")) / "chest_xray_fullres" / "val"
CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 120_000  # three images with heat maps on a busy 2-core machine
WIDTH, HEIGHT = 1280, 900


def noise_image(path: Path, h: int = 320, w: int = 280) -> Path:
    """A gradient with noise: not a chest X-ray, so its card shows the out-of-domain warning."""
    yy = np.linspace(0.15, 0.85, h)[:, None] * np.ones((1, w))
    img = np.clip(yy + 0.1 * np.random.default_rng(1).standard_normal((h, w)), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8), mode="L").save(path)
    return path


def real_xrays(folder: Path) -> list[Path]:
    """The first PNEUMONIA and the first NORMAL X-ray of ``folder``; exits with a message when they are absent."""
    files = [next(iter(sorted((folder / c).glob("*.jpeg"))), None) for c in ("PNEUMONIA", "NORMAL")]
    if None in files:
        raise SystemExit(
            f"error: no full-size X-rays in {folder}/PNEUMONIA and {folder}/NORMAL; "
            "the screenshot needs them (set PNEUMO_SHARED_DATA to the folder holding chest_xray_fullres)"
        )
    return files


def screenshot(server_url: str, files: list[Path]) -> bytes:
    """The page after uploading ``files`` and waiting for each card to finish, as a full-page PNG."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit('error: Playwright is not installed: pip install -e ".[dev]"') from None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            headless=True,
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=1)
            page.goto(server_url)
            page.locator("#model-name").filter(has_not_text="loading").wait_for(timeout=TIMEOUT_MS)
            page.get_by_test_id("file-input").set_input_files([str(f) for f in files])
            finished = page.locator('[data-state="done"], [data-state="error"]')
            for f in files:
                card = page.locator(f'[data-testid="result-card"][data-filename="{f.name}"]')
                card.and_(finished).wait_for(timeout=TIMEOUT_MS)
                if card.get_attribute("data-state") == "error":  # a picture of a failure is no documentation
                    raise SystemExit(f"error: {f.name}: {card.get_by_test_id('error').inner_text()}")
            return page.screenshot(full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png", help="PNG to write")
    parser.add_argument("--model", help="model file or run directory (default: the bundled model)")
    args = parser.parse_args(argv)

    from pneumo.atomic import write_bytes
    from pneumo.modelfile import ModelFileError
    from pneumo.serve.app import create_app
    from pneumo.serve.background import LoopbackServer

    if not CHROMIUM.exists():
        raise SystemExit(f"error: no Chromium at {CHROMIUM}: apt-get install chromium")
    files = real_xrays(FULLRES)
    try:
        app = create_app(args.model)
    except ModelFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer(app) as server:
        png = screenshot(server.url, [*files, noise_image(Path(tmp) / "not-a-chest-xray.png")])
    write_bytes(args.out, png)
    width, height = Image.open(args.out).size
    print(f"wrote {args.out} ({width} x {height} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
