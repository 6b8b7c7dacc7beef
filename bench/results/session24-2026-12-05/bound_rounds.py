"""The shipped mnist-linear's batch-16 call on the app's path (bfloat16 package for batch 16) against the
bfloat16 matmul peak, measured in turns over several rounds: how much the ratio to the FLOP bound moves
with the peak each round reads.

    python bench/results/session24-2026-12-05/bound_rounds.py [ROUNDS]
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from diffusion_core.allocator import reexec_with_fast_malloc  # noqa: E402

reexec_with_fast_malloc()
import tempfile  # noqa: E402

import torch  # noqa: E402
from sampling import matmul_peak, model_gflop, paths, step_time  # noqa: E402

from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.compiled import compile_package, load_compiled, package_path  # noqa: E402
from diffusion_core.runtime import set_threads  # noqa: E402

set_threads(2)
cpu = torch.device("cpu")
ckpt = load_checkpoint(ROOT / "checkpoints" / "mnist-linear")
eager = paths(ckpt.model, cpu)["bfloat16 weights"]
gflop = model_gflop(ckpt.model, ckpt.model_config)
cache = Path(tempfile.mkdtemp(prefix="bound-rounds-"))  # built here, as bench/sampling.py does
for batch in (None, 16):
    compile_package(eager, package_path(ckpt, "bfloat16", cache, batch=batch), batch=batch)
model = load_compiled(ckpt, eager, cache, batches=(16,))
assert model is not None and 16 in model.static
print(f"{gflop:.3f} GFLOP per image step", flush=True)
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    peak = matmul_peak(torch.bfloat16, cpu, 20)
    t = step_time(model, ckpt.model_config, 16, 20, cpu)
    print(f"round {r}: peak {peak:.0f} GFLOP/s, call {t * 1e3:.2f} ms, bound {16 * gflop / peak * 1e3:.2f} ms, "
          f"ratio {t / (16 * gflop / peak):.2f}x", flush=True)
