"""The web page at `/`, in headless Chromium: upload an image, see the overlay and legend, toggle a class.

Uses Debian's Chromium (`apt-get install chromium`) driven by Playwright; skips, saying why,
where either is missing.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from semseg.inference.predictor import Predictor
from semseg.visualize import overlay

sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs Playwright: pip install playwright")
CHROMIUM = os.environ.get("SEMSEG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    # In CI (.ci/run installs Chromium) a missing browser is a broken set-up, not a reason to skip.
    if os.environ.get("CI"):
        pytest.fail("CI is set but Chromium is missing: .ci/run should have installed it (apt-get install chromium)",
                    pytrace=False)  # fmt: skip
    pytest.skip("the page test needs Chromium: apt-get install chromium (or set SEMSEG_CHROMIUM)",
                allow_module_level=True)  # fmt: skip

# As root in a sandbox with no network: no setuid sandbox, no GPU, and none of Chromium's
# background connections (each is refused here, slowly).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto(server.url)
        yield page
        browser.close()


def canvas_pixels(page) -> np.ndarray:
    data = page.evaluate("""() => {
        const c = document.getElementById('view');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }""")
    height, width = page.evaluate("() => [view.height, view.width]")
    return np.asarray(data, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def test_upload_shows_overlay_and_legend_and_toggles_classes(page, server, photo, tmp_path):
    sync_api.expect(page.locator("#model")).to_contain_text("unet")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    page.screenshot(path=str(tmp_path / "page.png"))

    rgb = np.array(Image.open(photo).convert("RGB"))
    mask = Predictor.from_checkpoint(server.checkpoint)(rgb)
    counts = np.bincount(mask.ravel(), minlength=len(server.classes))
    rows = page.locator("#legend li")
    present = [server.classes[i] for i in np.argsort(-counts, kind="stable") if counts[i]]
    assert [rows.nth(i).get_attribute("data-class-name") for i in range(rows.count())] == present
    assert "%" in rows.first.inner_text()

    shown = canvas_pixels(page).astype(int)
    expected = np.array(overlay(rgb, mask, server.palette, alpha=0.5)).astype(int)
    assert np.abs(shown - expected).max() <= 1  # the page tints exactly as the server's overlay

    page.locator("#legend li[data-class-name=cat] input").uncheck()
    shown = canvas_pixels(page).astype(int)
    cat = mask == server.classes.index("cat")
    assert cat.any() and np.abs(shown[cat] - rgb[cat]).max() <= 1  # untinted where the class is hidden
    assert np.abs(shown[~cat] - expected[~cat]).max() <= 1


def test_a_refused_upload_shows_the_servers_message(page, tmp_path):
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"not really a png")
    page.set_input_files("#file", str(junk))
    page.wait_for_selector("body[data-state=error]", timeout=30_000)
    assert "not an image this server can decode" in page.locator("#status").inner_text()
