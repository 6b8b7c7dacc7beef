"""The README's four screenshots (assets/screenshots/) from a running app, in headless Chromium, as taken
in session 24 (the app started from a fresh clone with `python app.py`, an empty package cache):

    python bench/results/session24-2026-12-05/screenshots.py http://127.0.0.1:7861 OUTDIR

The Schedules screenshot was then stored with a 256-colour palette (PIL's quantize(256)).
"""
import shutil
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

url, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    time.sleep(1)


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#forward-t", timeout=60000)
    time.sleep(3)
    page.screenshot(path=str(out / "1-forward.png"), full_page=True)

    tab(page, "2 · Reverse process")
    page.click("#reverse-play")
    page.wait_for_function("document.querySelector('#reverse-status').innerText.includes('step 50 / 50')",
                           timeout=120000)
    time.sleep(2)
    page.screenshot(path=str(out / "2-reverse.png"), full_page=True)

    page.set_viewport_size({"width": 1400, "height": 1148})
    tab(page, "3 · DDPM vs DDIM")
    page.locator('input[aria-label="Digit (class-conditional models)"]:visible').click()
    page.get_by_role("option", name="3", exact=True).click()
    page.click("#compare-play")
    page.wait_for_function("document.body.innerText.includes('step 1000 / 1000') "
                           "&& document.body.innerText.includes('mean |DDPM')", timeout=300000)
    time.sleep(2)
    page.screenshot(path=str(out / "3-compare.png"))  # the viewport: the panels, not the page below

    tab(page, "4 · Schedules")
    page.click("#schedules-play")
    time.sleep(5)
    page.wait_for_function("!document.querySelector('#schedules-play').disabled", timeout=300000)
    time.sleep(20)  # the gallery's images load after the button is enabled again
    page.screenshot(path=str(out / "4-schedules.png"), full_page=True)
    browser.close()
