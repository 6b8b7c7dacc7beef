"""Autoguidance trials (session 13): python guide_trials.py NAME W LO HI SEED [STEPS], from the repository root.

Unconditional DDIM (eta 0) on 1,000 samples of checkpoints/NAME, guided at weight W only where
sigma_t = sqrt(1 / alpha_bar_t - 1) lies in (LO, HI]; the guide is the card's, or $GUIDE. Prints one JSON line.
"""
import json, sys, time, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from diffusion_core.checkpoints import load_checkpoint, load_guide
from diffusion_core.inference import InferenceModel
from diffusion_core.samplers import AutoGuided, sample
from diffusion_core.sample import sampler_config
from diffusion_core.evaluate import score
from diffusion_core.runtime import set_threads
from diffusion_core.samplers import initial_noise, make_generator

name, w, lo, hi, seed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
steps = int(sys.argv[6]) if len(sys.argv) > 6 else 50
set_threads(1)
ck = load_checkpoint(f"checkpoints/{name}", "cpu")
import os; gd = load_guide(f"checkpoints/{name}", "cpu", os.environ.get("GUIDE"))
sig = ck.schedule.sqrt_recipm1_alphas_cumprod

class AGI(AutoGuided):
    def forward(self, x, t, y=None):
        e1 = self.model(x, t, None)
        s = sig[t]
        m = ((s > lo) & (s <= hi)).to(e1.dtype).view(-1, 1, 1, 1)
        if not m.any():
            return e1
        e0 = self.guide(x, t, None).to(e1.dtype)
        return e1 + m * (self.weight - 1) * (e1 - e0)

model = AGI(InferenceModel(ck.model, "float32"), InferenceModel(gd.model, "float32"), w)
cfg = sampler_config("ddim", steps, ck.schedule.num_timesteps, eta=0.0)
t0 = time.time()
out = []
with torch.inference_mode():
    for k, start in enumerate(range(0, 1000, 250)):
        g = make_generator(seed + k)
        x_T = initial_noise((250, 1, 28, 28), g, "cpu")
        out.append(sample(model, ck.schedule, x_T, cfg, None, g).float())
x = torch.cat(out)
r = score("mnist", x, None, seed=seed)
r = {k: r[k] for k in ("fd", "fd_real_floor", "confident", "coverage", "class_shares", "copy_share") if k in r} | {k: v for k, v in r.items() if "copy" in k}
print(json.dumps({"guide": os.environ.get("GUIDE"), "name": name, "w": w, "lo": lo, "hi": hi, "seed": seed, "steps": steps, "s": round(time.time() - t0),
                  "fd_ratio": round(r["fd"] / r["fd_real_floor"], 3)} | r), flush=True)
