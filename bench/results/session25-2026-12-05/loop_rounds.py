"""Session 25: our sampling loop against diffusers' with the same model, read in turns over many rounds.

    python bench/results/session25-2026-12-05/loop_rounds.py [ROUNDS]

bench/sampling.py reads each loop a few times in a row, so a slow minute of a shared machine can fall
on one loop and not the other. Here the app's path for mnist-linear (bfloat16 packages for batch 4 and
16, built into a temporary folder) runs three loops in turns within each round: ours
(samplers.sample), the model calls alone with nothing between them (the floor of any loop that calls
this model once per step) and diffusers' scheduler loop (bench/sampling.py's functions), for DDIM-50 at
batch 16 and DDPM-1000 at batch 4. It prints each round's ratios and their medians. App's malloc.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from diffusion_core.allocator import reexec_with_fast_malloc  # noqa: E402

reexec_with_fast_malloc()
import torch  # noqa: E402
from sampling import diffusers_loop, model_calls, our_loop  # noqa: E402

from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.compiled import compile_package, load_compiled, package_path  # noqa: E402
from diffusion_core.inference import InferenceModel  # noqa: E402
from diffusion_core.runtime import set_threads  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 9
set_threads(2)
cpu = torch.device("cpu")
ckpt = load_checkpoint(ROOT / "checkpoints" / "mnist-linear")
eager = InferenceModel(ckpt.model, "bfloat16", num_timesteps=ckpt.schedule.num_timesteps)
cache = Path(tempfile.mkdtemp(prefix="loop-rounds-"))
for batch in (None, 4, 16):
    compile_package(eager, package_path(ckpt, "bfloat16", cache, batch=batch), batch=batch)
model = load_compiled(ckpt, eager, cache, batches=(4, 16))
print(f"# mnist-linear, bfloat16 packages for batch 4 and 16, {torch.get_num_threads()} threads, "
      f"torch {torch.__version__}; seconds per run; ours / diffusers and calls alone / diffusers per round")
for sampler, steps, n in (("ddim", 50, 16), ("ddpm", 1000, 4)):
    loops = {"ours": lambda: our_loop(model, ckpt, sampler, steps, n, cpu),
             "calls alone": lambda: model_calls(model, ckpt, steps, n, cpu),
             "diffusers": lambda: diffusers_loop(model, ckpt, sampler, steps, n, cpu)}
    for f in loops.values():
        f()
    print(f"\n## {sampler.upper()}-{steps}, {n} images\n")
    print("| round | ours | calls alone | diffusers | ours / diffusers | calls alone / diffusers |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for r in range(ROUNDS):
        s = {}
        for k, f in loops.items():
            t0 = time.perf_counter()
            f()
            s[k] = time.perf_counter() - t0
        ratios.append((s["ours"] / s["diffusers"], s["calls alone"] / s["diffusers"]))
        print(f"| {r + 1} | {s['ours']:.3f} | {s['calls alone']:.3f} | {s['diffusers']:.3f} | "
              f"{ratios[-1][0]:.3f} | {ratios[-1][1]:.3f} |", flush=True)
    print(f"| median | | | | {statistics.median(a for a, _ in ratios):.3f} | "
          f"{statistics.median(b for _, b in ratios):.3f} |")
