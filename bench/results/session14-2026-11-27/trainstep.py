"""Time one rank's training step of the MNIST recipe (1 thread, batch 32, float32): eager, channels-last, or
torch.compile'd. `taskset -c 0 python trainstep.py eager 40` (mode: eager | cl | compile; then the number of timed
steps). Session 14 ran two at once, one per core, as the recipe's two DDP ranks run."""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from diffusion_core.train import TrainConfig, diffusion_loss
from diffusion_core.model import build_model
from diffusion_core.schedules import NoiseSchedule
torch.set_num_threads(1)
mode = sys.argv[1]
cfg = TrainConfig(dataset="mnist", schedule="linear", model="fast", label_dropout=0.5)
mcfg = cfg.model_config(); sched = NoiseSchedule.from_config(cfg.schedule_config())
torch.manual_seed(0)
model = build_model(mcfg)
cl = "cl" in mode
if cl: model = model.to(memory_format=torch.channels_last)
net = model
t0 = time.perf_counter()
if "compile" in mode:
    net = torch.compile(model, dynamic=False)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # as train.py builds it
g = torch.Generator().manual_seed(0)
def step():
    x0 = torch.randn(32, 1, 28, 28, generator=g)
    if cl: x0 = x0.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (32,), generator=g); noise = torch.randn(x0.shape, generator=g)
    y = torch.randint(0, 11, (32,), generator=g)
    loss = diffusion_loss(net, sched, x0, t, noise, y, "min_snr", 5.0)
    opt.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0); opt.step()
    return loss.item()
for _ in range(3): step()
print(mode, "warm-up incl. compile", round(time.perf_counter() - t0, 1), "s", flush=True)
ts = []
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 40):
    t1 = time.perf_counter(); step(); ts.append(time.perf_counter() - t1)
print(mode, "median ms", round(1000 * statistics.median(ts), 1), "p10", round(1000 * sorted(ts)[len(ts)//10], 1), flush=True)
