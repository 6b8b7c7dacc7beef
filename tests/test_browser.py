"""The app in a real browser: headless Chromium (Debian package `chromium`) driven by Playwright.

Drags the t slider and sees x_t change, presses Play and sees frames change, presses Stop, and saves
a screenshot of each view to test-artifacts/. Skipped only when chromium is missing outside CI.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from test_app import free_port, make_checkpoints

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("chromium is not installed (apt-get install chromium); CI must have it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api") if not os.environ.get("CI") else __import__(
    "playwright.sync_api", fromlist=["sync_playwright"])

from explorer import build_app, launch_kwargs  # noqa: E402
from explorer.common import AUTOGUIDANCE_LABEL  # noqa: E402
from explorer.state import load_registry  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def img_src(page, selector: str) -> str | None:
    loc = page.locator(f"{selector} img")
    return loc.first.get_attribute("src") if loc.count() else None


def wait_for_change(page, selector: str, old: str | None, timeout_s: float = 30) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        src = img_src(page, selector)
        if src and src != old:
            return src
        page.wait_for_timeout(50)
    raise AssertionError(f"{selector} did not change within {timeout_s} s")


def shown(page, text: str) -> bool:
    """Whether a visible element (of the open tab) shows exactly `text`, e.g. a control's label."""
    loc = page.get_by_text(text, exact=True)
    return any(loc.nth(i).is_visible() for i in range(loc.count()))


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def drag_slider(page, selector: str, fractions: list[float]) -> None:
    box = page.locator(f"{selector} input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * fractions[0], y)
    page.mouse.down()
    for f in fractions[1:]:
        page.mouse.move(box["x"] + box["width"] * f, y, steps=8)
        page.wait_for_timeout(150)
    page.mouse.up()


def tour(page, url: str, out: Path, sampler: str = "ddpm", compare_ddpm_steps: int | None = None) -> dict[str, object]:
    """Visit every view, exercising its main control; returns what was observed."""
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, object] = {}
    page.goto(url)
    page.wait_for_selector("#forward-xt img", timeout=60_000)
    # 1. Forward: drag t, x_t changes while dragging (before release).
    before = img_src(page, "#forward-xt")
    box = page.locator("#forward-t input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=10)
    wait_for_change(page, "#forward-xt", before, 15)  # raises unless x_t changes before the mouse is released
    page.mouse.move(box["x"] + box["width"] * 0.45, y, steps=5)
    page.mouse.up()
    page.wait_for_timeout(800)
    page.screenshot(path=str(out / "1-forward.png"), full_page=True)
    # 2. Reverse: Play streams frames; Stop ends the run.
    open_tab(page, "2 · Reverse process")
    digit = page.get_by_label("Digit (class-conditional models)").first
    if digit.is_visible():  # a chosen digit shows the guidance scale; "any" swaps it for autoguidance (with a guide)
        seen["guidance_shown_for_digit"] = shown(page, "Guidance scale w (chosen digit)")
        digit.click()
        page.get_by_role("option", name="any", exact=True).click()
        page.wait_for_timeout(800)
        seen["guidance_shown_for_any"] = shown(page, "Guidance scale w (chosen digit)")
        seen["autoguidance_shown_for_any"] = shown(page, AUTOGUIDANCE_LABEL)
    page.get_by_label(sampler).first.check()
    page.wait_for_timeout(500)
    page.locator("#reverse-play").click()
    first = wait_for_change(page, "#reverse-xt", None, 60)
    wait_for_change(page, "#reverse-xt", first, 60)  # raises unless a second, different frame streams in
    page.wait_for_timeout(1500)
    page.locator("#reverse-stop").click()
    page.wait_for_function("document.querySelector('#reverse-status').innerText.includes('stopped')", timeout=120_000)
    seen["status_after_stop"] = page.locator("#reverse-status").inner_text()
    page.wait_for_timeout(800)
    page.screenshot(path=str(out / "2-reverse.png"), full_page=True)
    # 3. DDPM vs DDIM.
    open_tab(page, "3 · DDPM vs DDIM")
    if compare_ddpm_steps:  # fewer DDPM steps keep the test short; the 1000 is the default
        box = page.locator("#compare-ddpm-steps input[type=number]")
        box.fill(str(compare_ddpm_steps))
        box.press("Enter")
        page.wait_for_timeout(300)
    page.locator("#compare-play").click()
    page.wait_for_function(
        "[...document.querySelectorAll('.prose')].some(e => e.innerText.includes('mean |DDPM'))", timeout=180_000)
    page.wait_for_timeout(800)
    page.screenshot(path=str(out / "3-compare.png"), full_page=True)
    # 4. Schedules.
    open_tab(page, "4 · Schedules")
    page.locator("#schedules-play").click()
    page.wait_for_function("document.querySelectorAll('.grid-container img, .gallery img').length >= 3",
                           timeout=180_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "4-schedules.png"), full_page=True)
    return seen


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    demo = build_app(load_registry(make_checkpoints(tmp_path_factory.mktemp("checkpoints"))))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_browser_tour(url: str) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            seen = tour(page, url, ARTIFACTS, compare_ddpm_steps=100)
        finally:
            browser.close()
    assert "stopped" in seen["status_after_stop"] and "step 1000 / 1000" not in seen["status_after_stop"]
    # The first checkpoint ("slow") is class-conditional without a guide: "any" hides the guidance scale.
    assert seen["guidance_shown_for_digit"] and not seen["guidance_shown_for_any"]
    assert not seen["autoguidance_shown_for_any"]
    for name in ("1-forward", "2-reverse", "3-compare", "4-schedules"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
