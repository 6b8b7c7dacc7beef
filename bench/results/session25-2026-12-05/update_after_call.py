"""Session 25: what our sampling loop spends beside the model calls, and why it is more than its arithmetic.

    python bench/results/session25-2026-12-05/update_after_call.py [ROUNDS]

The app's path for mnist-linear (bfloat16 package for batch 16, built into a temporary folder), DDIM-50
with clipping at batch 16. Per step, medians over ROUNDS runs (default 7):
  - the model call inside the loop, and the DDIM update right after it (samplers.ddim_update);
  - the same update run alone in a loop of 50, with no model call between (a fixed eps);
  - six identical small operations (x * 0.5 on [16 x 1 x 28 x 28]) timed one by one right after a model call.
It runs on the app's malloc.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from diffusion_core.allocator import reexec_with_fast_malloc  # noqa: E402

reexec_with_fast_malloc()
import torch  # noqa: E402

from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.compiled import compile_package, load_compiled, package_path  # noqa: E402
from diffusion_core.inference import InferenceModel  # noqa: E402
from diffusion_core.runtime import set_threads  # noqa: E402
from diffusion_core.samplers import SamplerConfig, _plan, ddim_update  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
N = 16
set_threads(2)
ckpt = load_checkpoint(ROOT / "checkpoints" / "mnist-linear")
eager = InferenceModel(ckpt.model, "bfloat16", num_timesteps=ckpt.schedule.num_timesteps)
cache = Path(tempfile.mkdtemp(prefix="update-after-call-"))
for batch in (None, N):
    compile_package(eager, package_path(ckpt, "bfloat16", cache, batch=batch), batch=batch)
model = load_compiled(ckpt, eager, cache, batches=(N,))
plan = _plan(ckpt.schedule, SamplerConfig("ddim", 50, spacing="leading"))
x_T = torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(0))
eps_fixed = torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def in_loop() -> tuple[float, float]:
    x, t_model, t_update = x_T, 0.0, 0.0
    for c in plan:
        t0 = time.perf_counter()
        eps = model(x, torch.full((N,), c.t))
        t1 = time.perf_counter()
        x, _, _ = ddim_update(c, x, eps, None, 0.0, True)
        t_update += time.perf_counter() - t1
        t_model += t1 - t0
    return t_model / len(plan), t_update / len(plan)


def update_alone() -> float:
    x, t_update = x_T, 0.0
    for c in plan:
        t0 = time.perf_counter()
        x, _, _ = ddim_update(c, x, eps_fixed, None, 0.0, True)
        t_update += time.perf_counter() - t0
    return t_update / len(plan)


def small_ops_after_call() -> list[float]:
    x, per_step = x_T, []
    for c in plan:
        eps = model(x, torch.full((N,), c.t))
        stamps = [time.perf_counter()]
        for _ in range(6):
            x * 0.5
            stamps.append(time.perf_counter())
        per_step.append([b - a for a, b in zip(stamps, stamps[1:])])
        x, _, _ = ddim_update(c, x, eps, None, 0.0, True)
    return [statistics.median(s[k] for s in per_step) for k in range(6)]


with torch.inference_mode():
    in_loop(), update_alone(), small_ops_after_call()
    loops = [in_loop() for _ in range(ROUNDS)]
    alone = [update_alone() for _ in range(ROUNDS)]
    ops = [small_ops_after_call() for _ in range(ROUNDS)]
print(f"# mnist-linear, bfloat16 package for batch {N}, DDIM-50 with clipping, {torch.get_num_threads()} threads; "
      f"medians of {ROUNDS} runs, per step")
print(f"model call in the loop: {1e6 * statistics.median(m for m, _ in loops):.0f} us")
print(f"DDIM update right after the call: {1e6 * statistics.median(u for _, u in loops):.1f} us")
print(f"the same update in a loop of its own: {1e6 * statistics.median(alone):.1f} us")
print("x * 0.5, six times one after another right after a call: "
      + ", ".join(f"{1e6 * statistics.median(o[k] for o in ops):.1f}" for k in range(6)) + " us")
