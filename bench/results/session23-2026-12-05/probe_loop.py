"""Where DDPM-1000 x4's time goes: ours, model calls alone, diffusers, with the wrapper and with boxed_run direct."""
import sys, time, statistics
ROOT = str(__import__("pathlib").Path(__file__).resolve().parents[3])
sys.path.insert(0, ROOT); sys.path.insert(0, ROOT + "/bench")
from diffusion_core.allocator import reexec_with_fast_malloc
if __name__ == "__main__":
    reexec_with_fast_malloc()
import torch
from pathlib import Path
import sampling as B
from diffusion_core.checkpoints import load_checkpoint
from diffusion_core.compiled import load_compiled, CompiledModel
from diffusion_core.inference import InferenceModel
from diffusion_core.runtime import set_threads
set_threads(2)
ckpt = load_checkpoint(Path(ROOT) / "checkpoints" / "mnist-linear")
eager = InferenceModel(ckpt.model, "bfloat16", num_timesteps=1000)
fast = load_compiled(ckpt, eager, batches=(4, 16))
print(fast.batches)

class Direct(CompiledModel):
    def __init__(self, m):
        super().__init__(m.runner, m.eager, m.path, m.static)
        self.boxed = {n: r.loader.boxed_run for n, r in self.static.items()}
    def forward(self, x, t, y=None):
        n = x.shape[0]
        run = self.boxed.get(n)
        if run is None: return super().forward(x, t, y)
        c = self.eager.table(t, y)
        return run([x.to(self.dtype).contiguous(), c])[0].float()
direct = Direct(fast)
def med(fn, r=5):
    fn(); ts=[]
    for _ in range(r):
        t0=time.perf_counter(); fn(); ts.append(time.perf_counter()-t0)
    return statistics.median(ts)
for sampler, steps, n in (("ddpm", 1000, 4), ("ddim", 50, 16)):
    res = {}
    for name, m in (("wrapper", fast), ("direct", direct)):
        res[f"ours {name}"] = med(lambda: B.our_loop(m, ckpt, sampler, steps, n, "cpu"))
        res[f"alone {name}"] = med(lambda: B.model_calls(m, ckpt, steps, n, "cpu"))
        res[f"diffusers {name}"] = med(lambda: B.diffusers_loop(m, ckpt, sampler, steps, n, "cpu"))
    print(sampler, n, {k: round(v, 4) for k, v in res.items()}, flush=True)
    print("  ours/diffusers", {k: round(res[f'ours {k}'] / res[f'diffusers {k}'], 3) for k in ('wrapper', 'direct')})
