"""The page in a real headless Chromium against a real uvicorn server on 127.0.0.1, on the tiny test model.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install chromium``) and Playwright for Python; without
Chromium every test here skips and says so. ``benchmarks/screenshot.py`` remakes docs/screenshot.png.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_model

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CARD = '[data-testid="result-card"]'
TIMEOUT_MS = 30_000


def _png(path: Path, h: int = 320, w: int = 280) -> Path:
    yy = np.linspace(0.15, 0.85, h)[:, None] * np.ones((1, w))
    img = np.clip(yy + 0.1 * np.random.default_rng(1).standard_normal((h, w)), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8), mode="L").save(path)
    return path


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            headless=True,
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tiny_model):
    from pneumo.serve.app import create_app
    from pneumo.serve.background import LoopbackServer

    with LoopbackServer(create_app(tiny_model)) as srv:
        yield srv


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    # Loopback only: a request to any other host would mean the page is not offline-safe.
    outside = []
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:")) else outside.append(r.url))
    page.goto(server.url)
    yield page
    context.close()
    assert not outside, f"the page tried to reach other hosts: {outside}"


def _api(server, path: Path, explain: bool = False) -> dict:
    with path.open("rb") as f:
        resp = httpx.post(
            server.url + "api/v1/predict", files={"file": (path.name, f)}, data={"explain": str(explain).lower()}
        )
    return {"status": resp.status_code, **resp.json()}


def _done_card(page, name: str):
    card = page.locator(f'{CARD}[data-filename="{name}"]')
    card.and_(page.locator('[data-state="done"], [data-state="error"]')).wait_for(timeout=TIMEOUT_MS)
    return card


def _xrays(tmp_path: Path, fullres: Path | None) -> list[Path]:
    files = [_png(tmp_path / "generated.png")]
    if fullres is not None:
        files.append(sorted(fullres.rglob("*.jpeg"))[0])
    return files


@pytest.fixture
def fullres_or_none() -> Path | None:
    from conftest import SHARED_DATA

    path = SHARED_DATA / "chest_xray_fullres" / "val"
    return path if path.is_dir() else None


def test_page_shows_the_model_card_and_the_disclaimer(page):
    page.locator("#model-name").filter(has_text="tiny-binary").wait_for(timeout=TIMEOUT_MS)
    assert page.locator("#model-threshold").inner_text() == "50.0%"
    assert page.locator("#model-sensitivity").inner_text() == "not recorded"  # the tiny model has none
    assert "does not replace a clinician" in page.get_by_test_id("disclaimer").inner_text()


def test_result_cards_match_the_api(page, server, tmp_path, fullres_or_none):
    files = _xrays(tmp_path, fullres_or_none)
    page.get_by_test_id("file-input").set_input_files([str(f) for f in files])
    assert page.locator(CARD).count() == len(files)
    for f in files:
        card = _done_card(page, f.name)
        api = _api(server, f, explain=True)
        assert api["status"] == 200
        assert card.get_attribute("data-state") == "done"
        decision = card.get_by_test_id("decision")
        assert decision.inner_text() == api["prediction"]
        assert api["prediction"].lower() in decision.get_attribute("class").split()  # red or green
        assert card.get_by_test_id("probability").inner_text() == f"{api['probability'] * 100:.1f}%"
        assert card.get_by_test_id("xray").evaluate("img => img.naturalWidth") > 0
        assert card.get_by_test_id("ood-warning").is_visible() == (api["in_domain"] is False)
        # The heat map lies over the X-ray and its toggle hides it.
        heatmap = card.get_by_test_id("heatmap")
        assert heatmap.is_visible()
        card.get_by_test_id("heatmap-toggle").uncheck()
        assert not heatmap.is_visible()


def test_a_bad_file_shows_the_api_error_in_its_own_card(page, server, tmp_path):
    bad = tmp_path / "notes.jpeg"
    bad.write_text("not an x-ray, just text\n" * 10)
    good = _png(tmp_path / "fine.png")
    page.get_by_test_id("file-input").set_input_files([str(bad), str(good)])
    card = _done_card(page, bad.name)
    assert card.get_attribute("data-state") == "error"
    api = _api(server, bad)
    assert api["status"] == 415
    assert card.get_by_test_id("error").inner_text() == api["detail"]
    assert _done_card(page, good.name).get_attribute("data-state") == "done"  # one bad file spoils nothing else


def test_the_file_picker_is_keyboard_reachable(page):
    page.locator("body").focus()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "file-input":
            break
    assert page.evaluate("document.activeElement.id") == "file-input"


# What finalize records for a subtype model: the internal figure and the worst over the framing shifts.
_SHIFT_WORST = {"roc_auc": 0.99, "sensitivity": 0.95, "specificity": 0.93, "ece": 0.03, "decisions_flipped": 0.02,
                "bacterial_vs_viral": 0.747, "subtype_flipped": 0.096}  # fmt: skip
# A model file made before both threshold rules and the border-hidden check were recorded: one operating point, the
# geometry checks under their old names.
_SUBTYPE_FIGURES = {"sensitivity": 0.97, "specificity": 0.98, "bacterial_vs_viral_accuracy": 0.773,
                    "operating_point": {"sensitivity": 0.98, "specificity": 0.96},
                    "geometry_shift": {"worst": _SHIFT_WORST, "zoom 0.8": _SHIFT_WORST}}  # fmt: skip
# One made since: both rules' operating points (fit_operating_point's keys) and the AUC with the border hidden.
_RULES = {
    "worst_case": {"threshold": 0.62, "pooled": {"sensitivity": 0.981, "specificity": 0.95},
                   "worst_framing": {"sensitivity": 0.972, "sensitivity_of": "zoom 1.25 (cropped)",
                                     "specificity": 0.931, "specificity_of": "clean"}},
    "pooled": {"threshold": 0.41, "pooled": {"sensitivity": 0.99, "specificity": 0.91},
               "worst_framing": {"sensitivity": 0.985, "sensitivity_of": "clean",
                                 "specificity": 0.85, "specificity_of": "zoom 0.8 (margin)"}},
}  # fmt: skip
_NEW_FIGURES = {
    **_SUBTYPE_FIGURES,
    "roc_auc": 0.993,
    "operating_point": {**_RULES["worst_case"]["pooled"], "rule": "worst_case", "name": "worst_case",
                        "target_sensitivity": 0.98, "target_specificity": 0.9, "rules": _RULES},
    "geometry_shift": {"worst": _SHIFT_WORST, "zoom 0.8 (margin)": _SHIFT_WORST, "zoom 1.25 (cropped)": _SHIFT_WORST,
                       "squeeze across 15%": _SHIFT_WORST, "squeeze down 15%": _SHIFT_WORST,
                       "border masked 15%": {**_SHIFT_WORST, "roc_auc": 0.987}},
}  # fmt: skip


_SAID_WITH_FIGURES = [
    "right for 77.3% of pneumonia images in internal validation (X-rays of the training period)",
    "under framing shifts of those X-rays 74.7% at worst, with up to 9.6% of the calls changed",
]
_SAID_WITHOUT = ["how often bacterial vs viral is right is not recorded in this model file"]


# The header's new figures, each under a label saying what it was measured on: element -> text.
_HEADER_NEW = {
    "#model-operating-label": "Threshold rule (internal validation, worst framing): sens. / spec.",
    "#model-operating": "Worst-case rule, threshold 62.0%: sens. 97.2% (zoom 1.25 (cropped)) / spec. 93.1% "
    "(clean validation)",
    "#model-operating-other": "Not in force: Pooled rule, threshold 41.0%: sens. 98.5% (clean validation) / spec. "
    "85.0% (zoom 0.8 (margin))",
    '[data-testid="border-hidden-auc"] dt': "ROC AUC, image border hidden (outer 15% flat grey; internal validation)",
    "#model-border-auc": "0.987 (clean 0.993)",
    "#model-shift-label": "Worst of 5 checks (framing shifts, border hidden; internal validation): sens. / spec.",
}
_HEADER_OLD = {"#model-shift-label": "Worst of 4 framing shifts (internal validation): sens. / spec."}


@pytest.mark.parametrize(
    ("validation", "said", "header"),
    [(None, _SAID_WITHOUT, {}), (_SUBTYPE_FIGURES, _SAID_WITH_FIGURES, _HEADER_OLD),
     (_NEW_FIGURES, _SAID_WITH_FIGURES, _HEADER_NEW)],
    ids=["no figures", "old model file", "both rules and the border hidden"],
)  # fmt: skip
def test_subtype_probabilities_carry_their_caveat(browser, tmp_path, validation, said, header):
    """A subtype model's card shows the three probabilities as the API gives them, with the model file's
    bacterial-vs-viral figures beside them, each said for what it was measured on; the header shows the threshold
    rule's operating point and the AUC with the image border hidden when the model file has them, and an older
    model file shows neither (nor an undefined or NaN in their place)."""
    from pneumo.serve.app import create_app
    from pneumo.serve.background import LoopbackServer

    model = make_tiny_model(tmp_path / "subtype.pneumo", task="subtype", validation=validation)
    with LoopbackServer(create_app(model)) as srv:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(srv.url)
        page.locator("#model-name").filter(has_text="tiny").wait_for(timeout=TIMEOUT_MS)
        new = validation is _NEW_FIGURES
        assert page.get_by_test_id("operating-point").is_visible() == new
        assert page.get_by_test_id("border-hidden-auc").is_visible() == new
        for where, text in header.items():
            assert page.locator(where).text_content() == text  # the text, not its upper-cased rendering
        # The model card was read to its end: nothing above threw on a model file without the new figures.
        assert page.locator("#footer-version").text_content().endswith("model tiny-subtype v0.0.0")
        info = page.get_by_test_id("model-info").text_content()
        assert not any(bad in info for bad in ("undefined", "NaN", "null")), info
        f = _png(tmp_path / "subtype.png")
        page.get_by_test_id("file-input").set_input_files([str(f)])
        card = _done_card(page, f.name)
        api = _api(srv, f)
        assert card.get_by_test_id("subtypes").is_visible()
        for key in ("p_normal", "p_bacterial", "p_viral"):
            assert card.get_by_test_id(key.replace("_", "-")).inner_text() == f"{api[key] * 100:.1f}%"
        note = card.get_by_test_id("subtype-note").inner_text()
        assert note.startswith("Indicative only") and note.endswith("it was not validated on later X-rays.")
        for words in said:
            assert words in note, note
        assert ("framing shifts" in note) == (validation is not None)
        context.close()
