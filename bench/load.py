"""Many visitors at once: the app under 8 concurrent gradio_client sessions for 60 s (not a test; stops by itself).

    python bench/load.py [--seconds 60] [--sessions 8] [--checkpoints checkpoints]

Launches `python app.py` in a subprocess on a free localhost port (its own Gradio cache folder), then
runs `sessions` threads, each a separate visitor with its own gradio_client session:
  - 1 samples DDPM with all 1000 steps for 1 image, again and again (the longest job the UI offers);
  - 2 sample DDIM-50 for 4 images, again and again;
  - the rest scrub the forward process (/forward_scrub at random t), many small requests.
Prints requests done, errors (must be 0), the forward scrub's p50/p95 latency while a sampling run is
in progress (it must not wait behind one), the sampling jobs' queue waits (time to their first frame),
and the server's RSS and Gradio cache size before and after (growth <= 200 MB). Exit status 1 if a
target is missed.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from gradio_client import Client

ROOT = Path(__file__).resolve().parents[1]
MAX_GROWTH_MB = 200
SCRUB_P95_TARGET_S = 2.0  # far below any sampling run: a scrub never waits behind one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def dir_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) / 1e6


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: dict[str, int] = {}
        self.errors: list[str] = []
        self.scrub_busy: list[float] = []  # scrub latency while a sampling run was in progress
        self.scrub_idle: list[float] = []
        self.first_frame: dict[str, list[float]] = {}  # sampling: submit -> first streamed frame (queue wait + 1 step)
        self.run_s: dict[str, list[float]] = {}
        self.sampling_now = 0

    def add(self, kind: str) -> None:
        with self.lock:
            self.done[kind] = self.done.get(kind, 0) + 1

    def error(self, what: str, e: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{what}: {e.__class__.__name__}: {str(e)[:200]}")


def scrubber(url: str, stop_at: float, st: Stats, seed: int) -> None:
    rng = random.Random(seed)
    c = Client(url, verbose=False)
    c.predict("mnist-3", "mnist", api_name="/forward_example")
    while time.time() < stop_at:
        busy = st.sampling_now > 0
        t0 = time.perf_counter()
        try:
            c.predict(rng.choice(["linear", "cosine"]), 0, rng.randrange(1000), api_name="/forward_scrub")
        except Exception as e:  # noqa: BLE001 - every failure is counted
            st.error("scrub", e)
            continue
        dt = time.perf_counter() - t0
        with st.lock:
            (st.scrub_busy if busy and st.sampling_now > 0 else st.scrub_idle).append(dt)
        st.add("forward_scrub")
        time.sleep(rng.uniform(0.0, 0.1))  # a visitor dragging the slider


def sampler(url: str, stop_at: float, st: Stats, kind: str, args: tuple) -> None:
    c = Client(url, verbose=False)
    while time.time() < stop_at:
        t0 = time.perf_counter()
        job = c.submit(*args, api_name="/reverse_sample")
        first = None
        counted = False
        while not job.done():
            if first is None and job.outputs():
                first = time.perf_counter() - t0
            if not counted and job.status().code.name == "PROCESSING":
                counted = True
                with st.lock:
                    st.sampling_now += 1
            if time.time() >= stop_at:
                job.cancel()  # the bench stops by itself; Stop frees the server at once
                break
            time.sleep(0.01)
        if counted:
            with st.lock:
                st.sampling_now -= 1
        try:
            if job.done() and not job.cancelled():
                job.result(timeout=5)
                with st.lock:
                    st.run_s.setdefault(kind, []).append(time.perf_counter() - t0)
                st.add(kind)
        except Exception as e:  # noqa: BLE001
            st.error(kind, e)
        if first is not None:
            with st.lock:
                st.first_frame.setdefault(kind, []).append(first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--checkpoints", default=None, help="checkpoint folder (default ./checkpoints)")
    a = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cache = Path(tempfile.mkdtemp(prefix="load-gradio-cache-"))
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_TEMP_DIR=str(cache),
               GRADIO_ANALYTICS_ENABLED="False")
    if a.checkpoints:
        env["EXPLORER_CHECKPOINTS"] = a.checkpoints
    log = open(cache / "server.log", "w")  # noqa: SIM115 - closed at the end
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    print(f"the app did not start; see {cache / 'server.log'}")
                    return 1
                time.sleep(0.5)
        c = Client(url, verbose=False)
        names = c.view_api(return_format="dict", print_info=False)["named_endpoints"]["/reverse_sample"][
            "parameters"][0]["type"]["enum"]
        model = names[0]
        # Warm up (first calls import and allocate), then take the baseline.
        c.predict("mnist-3", "mnist", api_name="/forward_example")
        c.predict("linear", 0, 500, api_name="/forward_scrub")
        c.predict(model, "ddim", 5, 0.0, 0, 4, "any", 1.0, api_name="/reverse_sample")
        time.sleep(1)
        rss0, cache0 = rss_mb(server.pid), dir_mb(cache)

        st = Stats()
        stop_at = time.time() + a.seconds
        n_scrub = max(1, a.sessions - 3)
        threads = [threading.Thread(target=sampler, args=(url, stop_at, st, "ddpm1000x1",
                                                          (model, "ddpm", 1000, 0.0, 1, 1, "any", 1.0)))]
        threads += [threading.Thread(target=sampler, args=(url, stop_at, st, "ddim50x4",
                                                           (model, "ddim", 50, 0.0, 2 + i, 4, "any", 1.0)))
                    for i in range(min(2, a.sessions - 1))]
        threads += [threading.Thread(target=scrubber, args=(url, stop_at, st, i)) for i in range(n_scrub)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=a.seconds + 120)
        wall = time.time() - t0
        time.sleep(2)
        rss1, cache1 = rss_mb(server.pid), dir_mb(cache)

        total = sum(st.done.values())
        print(f"app: {url} · model {model} · {len(threads)} concurrent sessions for {wall:.0f} s "
              f"({os.cpu_count()} CPU cores, shared with whatever else runs here)")
        print(f"requests done: {total} ({', '.join(f'{k} {v}' for k, v in sorted(st.done.items()))})")
        print(f"errors: {len(st.errors)}")
        for e in st.errors[:10]:
            print("   ", e)
        busy, idle = st.scrub_busy, st.scrub_idle
        print(f"forward scrub while sampling runs: n = {len(busy)}, p50 {pct(busy, .5) * 1000:.0f} ms, "
              f"p95 {pct(busy, .95) * 1000:.0f} ms, max {max(busy, default=float('nan')) * 1000:.0f} ms")
        print(f"forward scrub with no sampling: n = {len(idle)}, p50 {pct(idle, .5) * 1000:.0f} ms, "
              f"p95 {pct(idle, .95) * 1000:.0f} ms")
        for kind, xs in sorted(st.first_frame.items()):
            runs = st.run_s.get(kind, [])
            print(f"{kind}: queue wait + first step (time to first frame) p50 {statistics.median(xs):.2f} s, "
                  f"max {max(xs):.2f} s over {len(xs)} jobs; completed runs {len(runs)}"
                  + (f", median {statistics.median(runs):.1f} s each" if runs else ""))
        growth = rss1 - rss0
        print(f"server RSS: {rss0:.0f} MB before, {rss1:.0f} MB after (growth {growth:+.0f} MB, limit {MAX_GROWTH_MB}); "
              f"Gradio cache {cache0:.1f} -> {cache1:.1f} MB")
        ok = not st.errors and growth <= MAX_GROWTH_MB and busy and pct(busy, .95) <= SCRUB_P95_TARGET_S
        print(f"targets: 0 errors, growth <= {MAX_GROWTH_MB} MB, scrub p95 while sampling <= {SCRUB_P95_TARGET_S} s: "
              + ("PASS" if ok else "FAIL"))
        return 0 if ok else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
