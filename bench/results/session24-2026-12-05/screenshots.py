"""The README's four screenshots from a running app (python app.py), in headless Chromium.

    python shots.py URL OUTDIR
"""
import shutil, sys, time
from pathlib import Path
from playwright.sync_api import sync_playwright

url, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with sync_playwright() as p:
    b = p.chromium.launch(executable_path=shutil.which("chromium"),
                          args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
    pg = b.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(url); pg.wait_for_selector("#forward-t", timeout=60000); time.sleep(3)
    pg.screenshot(path=str(out / "1-forward.png"), full_page=True)
    t0 = time.time()
    pg.get_by_role("tab", name="2 · Reverse process").click(); time.sleep(1)
    pg.click("#reverse-play")
    pg.wait_for_function("document.querySelector('#reverse-status').innerText.includes('step 50 / 50')", timeout=120000)
    print("reverse done", round(time.time() - t0, 1), "s", flush=True); time.sleep(2)
    pg.screenshot(path=str(out / "2-reverse.png"), full_page=True)
    pg.set_viewport_size({"width": 1400, "height": 1148})
    pg.get_by_role("tab", name="3 · DDPM vs DDIM").click(); time.sleep(1)
    dd = pg.locator('input[aria-label="Digit (class-conditional models)"]:visible')
    dd.click(); pg.get_by_role("option", name="3", exact=True).click(); time.sleep(0.5)
    t0 = time.time()
    pg.click("#compare-play")
    pg.wait_for_function("document.body.innerText.includes('step 1000 / 1000') && document.body.innerText.includes('step 50 / 50')",
                         timeout=300000)
    pg.wait_for_function("document.body.innerText.includes('mean |DDPM')", timeout=60000)
    print("compare done", round(time.time() - t0, 1), "s", flush=True); time.sleep(2)
    pg.screenshot(path=str(out / "3-compare.png"))  # the viewport: the panels, not the page below
    pg.get_by_role("tab", name="4 · Schedules").click(); time.sleep(1)
    t0 = time.time()
    pg.click("#schedules-play")
    time.sleep(5)
    pg.wait_for_function("!document.querySelector('#schedules-play').disabled", timeout=300000)
    time.sleep(20)
    print("schedules done", round(time.time() - t0, 1), "s", flush=True)
    pg.screenshot(path=str(out / "4-schedules.png"), full_page=True)
    b.close()
