"""Threads and the compiled model: the package's thread count, a batch split over OS threads, and
whether a Python thread beside the sampler (a server's event loop, a polling client) slows it.

    python bench/threads.py [--checkpoint mnist-linear] [--repeats 15]

Builds packages in the app's precision (bfloat16 where the CPU computes it natively, else float32)
for 1 and 2 threads in a fresh folder (about 30 s each), then prints:
- one call per path at batch 1, 2, 4, 8 and 16, the paths taking turns: the package built for
  2 threads, the one built for 1 thread (run on 1 thread), the batch split in two halves run by
  two OS threads on the 1-thread package, and eager in that precision on 2 threads;
- DDIM-50 for 16 images and DDPM-1000 for 4 images, 2-thread package against the split;
- DDPM-300 for 4 images and DDIM-50 for 16 images, eager and compiled, alone and beside a thread
  that wakes every 2 ms or 0.5 ms (an AOTInductor package holds the GIL for a whole call).
Figures are medians measured in this one run; read ratios, not absolute times (shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.compiled import CompiledModel, compile_package, package_path  # noqa: E402
from diffusion_core.inference import InferenceModel, resolve_precision  # noqa: E402
from diffusion_core.runtime import set_threads  # noqa: E402
from diffusion_core.samplers import SamplerConfig, initial_noise, make_generator, sample  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="mnist-linear")
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    from torch._inductor.package import load_package

    set_threads(2)
    ckpt = load_checkpoint(ROOT / "checkpoints" / a.checkpoint)
    cfg = ckpt.model_config
    prec = resolve_precision("auto", torch.device("cpu"))  # what the app samples in here
    eager = InferenceModel(ckpt.model, prec)
    cache = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    runners = {}
    for n in (2, 1):
        path = package_path(ckpt, prec, cache, n)
        compile_package(eager, path, n)
        runners[n] = CompiledModel(load_package(str(path), num_runners=2), eager, path)
    two, one = runners[2], runners[1]
    pool = ThreadPoolExecutor(2, initializer=lambda: set_threads(1))

    def split(x, t, y=None):
        h = x.shape[0] // 2
        halves = [pool.submit(one, x[:h], t[:h]), pool.submit(one, x[h:], t[h:])]
        return torch.cat([f.result() for f in halves])

    def one_thread(x, t, y=None):
        torch.set_num_threads(1)
        try:
            return one(x, t)
        finally:
            torch.set_num_threads(2)

    paths = {"package for 2 threads": two, "package for 1 thread, on 1 thread": one_thread,
             "batch split over 2 OS threads, 1-thread package": split, f"eager {prec}, 2 threads": eager}
    print(f"# {a.checkpoint}, {prec}, one call (ms), median of {a.repeats}, the paths taking turns\n")
    print("| batch | " + " | ".join(paths) + " |")
    print("|---" * (len(paths) + 1) + "|")
    with torch.inference_mode():
        for b in (1, 2, 4, 8, 16):
            x = torch.randn(b, cfg.in_channels, cfg.image_size, cfg.image_size)
            t = torch.full((b,), 500)
            ts: dict[str, list[float]] = {k: [] for k in paths}
            for f in paths.values():
                for _ in range(3):
                    f(x, t)
            for _ in range(a.repeats):
                for k, f in paths.items():
                    t0 = time.perf_counter()
                    for _ in range(5):
                        f(x, t)
                    ts[k].append((time.perf_counter() - t0) / 5)
            print(f"| {b} | " + " | ".join(f"{statistics.median(v) * 1e3:.2f}" for v in ts.values()) + " |")

    class Split(torch.nn.Module):  # the split as an eps-model for the sampler
        cfg = eager.cfg

        def forward(self, x, t, y=None):
            return split(x, t)

    def e2e(model, sampler: str, steps: int, n: int) -> float:
        g = make_generator(0)
        x = initial_noise((n, cfg.in_channels, cfg.image_size, cfg.image_size), g)
        t0 = time.perf_counter()
        with torch.inference_mode():
            sample(model, ckpt.schedule, x, SamplerConfig(sampler, steps), None, g)
        return time.perf_counter() - t0

    print("\n| end to end, median of 3 | package for 2 threads (s) | batch split (s) |\n|---|---|---|")
    for sampler, steps, n in (("ddim", 50, 16), ("ddpm", 1000, 4)):
        r = [(e2e(two, sampler, steps, n), e2e(Split(), sampler, steps, n)) for _ in range(3)]
        print(f"| {sampler.upper()}-{steps}, {n} images | {statistics.median(v[0] for v in r):.3f} "
              f"| {statistics.median(v[1] for v in r):.3f} |")

    stop = threading.Event()

    def poller(period: float) -> None:
        while not stop.is_set():
            sum(range(50))  # a little Python work, so that each wake-up needs the GIL
            time.sleep(period)

    print("\n| beside a waking thread, median of 3 | eager alone | compiled alone | eager, 2 ms | compiled, 2 ms "
          "| eager, 0.5 ms | compiled, 0.5 ms |\n|---|---|---|---|---|---|---|")
    for sampler, steps, n in (("ddpm", 300, 4), ("ddim", 50, 16)):
        r: dict[tuple[float | None, str], list[float]] = {}
        for _ in range(3):
            for period in (None, 0.002, 0.0005):
                th = None
                if period:
                    stop.clear()
                    th = threading.Thread(target=poller, args=(period,))
                    th.start()
                for name, m in (("eager", eager), ("compiled", two)):
                    r.setdefault((period, name), []).append(e2e(m, sampler, steps, n))
                if th:
                    stop.set()
                    th.join()
        print(f"| {sampler.upper()}-{steps}, {n} images | " + " | ".join(f"{statistics.median(v):.3f} s" for v in r.values())
              + " |")
    pool.shutdown()


if __name__ == "__main__":
    main()
