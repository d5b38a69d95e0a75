"""Remake the README's screenshots of the page: the real server and a real headless Chromium on 127.0.0.1.

Uploads the first PNEUMONIA (or ``--pneumonia NAME``) and the first NORMAL full-size X-ray of
../shared/data/chest_xray_fullres/val
(``PNEUMO_SHARED_DATA`` overrides ../shared/data) and a noise image that the domain guard flags, with heat maps,
waits for every result card, opens the first card's details and the "Model performance" panel, and writes a
full-page PNG at a 1366 x 768 desktop window (``--out``) and at a 390 x 844 phone (``--phone-out``, the two
X-rays only). Needs Debian's Chromium at /usr/bin/chromium (``apt-get install chromium``) and Playwright for Python
(the ``dev`` extra). The X-rays are Kermany, Zhang, Goldbaum et al., Cell 172(5), 2018 (Mendeley Data doi
10.17632/rscbjbr9sj, CC BY 4.0): credit them beside the pictures.

    python benchmarks/screenshot.py [--out docs/screenshot.png] [--phone-out docs/screenshot_phone.png] [--model M]
        [--pneumonia person1947_bacteria_4876.jpeg]   # the README's pictures
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
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


def noise_image(path: Path, h: int = 320, w: int = 280) -> Path:
    """A gradient with noise: not a chest X-ray, so its card shows the out-of-domain warning."""
    yy = np.linspace(0.15, 0.85, h)[:, None] * np.ones((1, w))
    img = np.clip(yy + 0.1 * np.random.default_rng(1).standard_normal((h, w)), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8), mode="L").save(path)
    return path


def real_xrays(folder: Path, pneumonia: str | None = None) -> list[Path]:
    """The first PNEUMONIA (or the one named ``pneumonia``) and the first NORMAL X-ray of ``folder``; exits with a
    message when they are absent."""
    first = [next(iter(sorted((folder / c).glob("*.jpeg"))), None) for c in ("PNEUMONIA", "NORMAL")]
    named = folder / "PNEUMONIA" / pneumonia if pneumonia else None
    files = [named if named is None or named.is_file() else None, first[1]] if pneumonia else first
    if None in files:
        raise SystemExit(
            f"error: no full-size X-rays in {folder}/PNEUMONIA and {folder}/NORMAL; "
            "the screenshot needs them (set PNEUMO_SHARED_DATA to the folder holding chest_xray_fullres)"
        )
    return files


def screenshot(server_url: str, files: list[Path], viewport: dict[str, int]) -> bytes:
    """The page at ``viewport`` after uploading ``files`` and waiting for each card to finish, with the first
    card's details and the "Model performance" panel open, as a full-page PNG."""
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
            page = browser.new_page(viewport=viewport, device_scale_factor=1)
            page.goto(server_url)
            page.locator("#model-name").filter(has_not_text="loading").wait_for(timeout=TIMEOUT_MS)
            page.get_by_test_id("file-input").set_input_files([str(f) for f in files])
            finished = page.locator('[data-state="done"], [data-state="error"]')
            for f in files:
                card = page.locator(f'[data-testid="result-card"][data-filename="{f.name}"]')
                card.and_(finished).wait_for(timeout=TIMEOUT_MS)
                if card.get_attribute("data-state") == "error":  # a picture of a failure is no documentation
                    raise SystemExit(f"error: {f.name}: {card.get_by_test_id('error').inner_text()}")
            page.locator('[data-testid="result-card"] [data-testid="details"] summary').first.click()
            page.locator("#performance-panel summary").click()
            page.evaluate("window.scrollTo(0, 0)")
            return page.screenshot(full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png", help="desktop PNG to write")
    parser.add_argument(
        "--phone-out", type=Path, default=REPO / "docs" / "screenshot_phone.png", help="phone PNG to write"
    )
    parser.add_argument("--model", help="model file or run directory (default: the bundled model)")
    parser.add_argument("--pneumonia", help="file name of the PNEUMONIA X-ray to show (default: the first)")
    args = parser.parse_args(argv)

    from pneumo.atomic import write_bytes
    from pneumo.modelfile import ModelFileError
    from pneumo.serve.app import create_app
    from pneumo.serve.background import LoopbackServer

    if not CHROMIUM.exists():
        raise SystemExit(f"error: no Chromium at {CHROMIUM}: apt-get install chromium")
    files = real_xrays(FULLRES, args.pneumonia)
    try:
        app = create_app(args.model)
    except ModelFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer(app) as server:
        shots = {
            args.out: screenshot(server.url, [*files, noise_image(Path(tmp) / "not-a-chest-xray.png")], DESKTOP),
            args.phone_out: screenshot(server.url, files, PHONE),
        }
    for out, png in shots.items():
        write_bytes(out, png)
        width, height = Image.open(out).size
        print(f"wrote {out} ({width} x {height} px)")
    print("X-rays: Kermany, Zhang, Goldbaum et al., Cell 172(5), 2018; doi 10.17632/rscbjbr9sj, CC BY 4.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
