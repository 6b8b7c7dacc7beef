"""The app's CPU path on each malloc: glibc's, tcmalloc's and jemalloc's (diffusion_core/allocator.py).

    python bench/allocator.py [--checkpoint mnist-linear] [--threads 0] [--rounds 3]

Each measurement runs in a child process with the library preloaded (LD_PRELOAD; the dynamic loader
takes a malloc only at start-up), the mallocs taking turns for --rounds rounds. A child loads the
app's fixed-batch packages (built first where missing, in the app's cache) and times one call at
batch 1, 4 and 16 (median of 100), the eager net at batch 16 (median of 20), and the core's sampling
loop: DDIM-50 for 16 images (median of 5) and DDPM-1000 for 4 (median of 3). Then the app's cold
start, `python app.py` to its first served page, with DIFFUSION_ALLOCATOR set to each choice (so
for a fast malloc it includes the app re-executing itself). The table gives the median over rounds
and each fast malloc's speed-up over glibc's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffusion_core.allocator import (ENV, FAST_MALLOCS, environ_before_reexec, library_path,  # noqa: E402
                                      loaded_malloc)
from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.compiled import compile_package, load_compiled, package_path  # noqa: E402
from diffusion_core.inference import InferenceModel, resolve_precision  # noqa: E402
from diffusion_core.runtime import set_threads  # noqa: E402
from sampling import cold_start, median_time, our_loop  # noqa: E402  (bench/sampling.py, beside this script)

BATCHES = (1, 4, 16)
FIGURES = {"call1": "package call, batch 1 (ms)", "call4": "package call, batch 4 (ms)",
           "call16": "package call, batch 16 (ms)", "eager16": "eager call, batch 16 (ms)",
           "ddim50x16": "DDIM-50, 16 images (s)", "ddpm1000x4": "DDPM-1000, 4 images (s)",
           "cold": "app cold start to the first page (s)"}


def setup(a):
    set_threads(a.threads or None)
    ckpt = load_checkpoint(ROOT / "checkpoints" / a.checkpoint)
    eager = InferenceModel(ckpt.model, resolve_precision("auto", torch.device("cpu")))
    for batch in (None, *BATCHES):  # the app's packages: any batch, then the fixed batches
        path = package_path(ckpt, eager.precision, batch=batch)
        if not path.exists():
            compile_package(eager, path, batch=batch)
    return ckpt, eager, load_compiled(ckpt, eager, batches=BATCHES)


def measure(a) -> dict[str, float | str]:
    ckpt, eager, compiled = setup(a)
    cfg = ckpt.model_config
    out: dict[str, float | str] = {"malloc": loaded_malloc(), "precision": eager.precision,
                                   "threads": torch.get_num_threads()}
    with torch.inference_mode():
        for b in BATCHES:
            x = torch.randn(b, cfg.in_channels, cfg.image_size, cfg.image_size)
            t = torch.full((b,), 500)
            out[f"call{b}"] = 1e3 * median_time(lambda: compiled(x, t, None), 100, warmup=20)
        # x and t are batch 16's here
        out["eager16"] = 1e3 * median_time(lambda: eager(x, t, None), 20, warmup=3)
    cpu = torch.device("cpu")
    out["ddim50x16"] = median_time(lambda: our_loop(compiled, ckpt, "ddim", 50, 16, cpu), 5, warmup=1)
    out["ddpm1000x4"] = median_time(lambda: our_loop(compiled, ckpt, "ddpm", 1000, 4, cpu), 3, warmup=1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="mnist-linear")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: every available core)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a)))
        return
    mallocs = {"glibc": ""} | {m: lib for m in FAST_MALLOCS if (lib := library_path(m))}
    if len(mallocs) == 1:
        sys.exit("no tcmalloc or jemalloc installed here (Debian: apt install libtcmalloc-minimal4 libjemalloc2)")
    base = environ_before_reexec() | {ENV: "system"}  # a child runs on what LD_PRELOAD gives it, no re-execution
    cmd = [sys.executable, __file__, "--child", "--checkpoint", a.checkpoint, "--threads", str(a.threads)]
    subprocess.run(cmd, env=base, check=True, capture_output=True)  # builds missing packages, warms the disk cache
    runs: dict[str, list[dict]] = {m: [] for m in mallocs}
    for _ in range(a.rounds):
        for m, lib in mallocs.items():
            env = base | ({"LD_PRELOAD": lib} if lib else {})
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs[m].append(json.loads(out.splitlines()[-1]))
    for r in range(a.rounds):
        for m, lib in mallocs.items():
            runs[m][r]["cold"] = cold_start(**{ENV: lib or "system"})
    first = runs["glibc"][0]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"# {a.checkpoint}, {first['precision']} packages, {first['threads']} threads, {cpu}, "
          f"{os.cpu_count()} cores; "
          f"medians over {a.rounds} rounds, the mallocs taking turns; loaded: "
          + ", ".join(f"{m} -> {runs[m][0]['malloc']}" for m in mallocs) + "\n")
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in FIGURES} for m in mallocs}
    fast = [m for m in mallocs if m != "glibc"]
    print("| figure | " + " | ".join(mallocs) + " | " + " | ".join(f"glibc / {m}" for m in fast) + " |")
    print("|---|" + "---|" * (len(mallocs) + len(fast)))
    for k, label in FIGURES.items():
        digits = 2 if k.startswith(("call", "eager")) else 3
        print(f"| {label} | " + " | ".join(f"{med[m][k]:.{digits}f}" for m in mallocs) + " | "
              + " | ".join(f"{med['glibc'][k] / med[m][k]:.2f}x" for m in fast) + " |")


if __name__ == "__main__":
    main()
