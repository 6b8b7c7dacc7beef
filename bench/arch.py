"""Which U-Net shape is cheap on 2 CPU cores: sampling and training speed of candidate nets.

    python bench/arch.py [--repeats 15] [--train-steps 30] [--no-compile] [--only fast "p2 64/128"]

Every candidate takes a 28x28 MNIST digit and a label (10 classes + null), and is built with
random weights (speed does not depend on them). For each it prints parameters, GFLOP per image
step, one sampling call at batch 1, 4 and 16 in the app's precision (bfloat16 on a CPU that computes
it natively, else float32; eager, and AOTInductor packages built for 2 threads as the app runs
them: one for each of these fixed batch sizes), the ratio to the FLOP bound at batch 16, and one training step
as the DDP recipe runs it per process (1 thread, batch 32, `--amp auto`'s autocast, min-SNR loss, AdamW).
Candidates:
- `fast`: the shipped checkpoints' net (widths 16/32/64 at 28/14/7, attention at 7x7).
- `p2 A/B`: `patch_size=2` (pixel-unshuffle 28x28x1 -> 14x14x4 first, pixel-shuffle back last), a
  two-level U-Net of widths A/B at 14/7 with attention at 7x7: the 28x28 level, the least
  efficient on a CPU (16 channels), is gone. The wider ones (64/128, 96/192) ask what an AMX CPU,
  whose bfloat16 peak only wide matmuls reach, needs of a net to come near the FLOP bound.
- `p4 A`: 4x4 patches (28x28x1 -> 7x7x16), one level of width A at 7x7, two blocks, attention: the
  fewest, widest matmuls a U-Net of this code can be.
- `dit DxL`: a DiT (Peebles & Xie 2023) on the same 49 tokens, width D, L blocks, adaLN-Zero
  modulation from c(t, y): matmuls without convolutions (defined here; speed only).
Calls take turns across candidates; figures are medians from this one run (shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # the app's malloc, chosen before torch is imported (as app.py does)
    from diffusion_core.allocator import reexec_with_fast_malloc

    reexec_with_fast_malloc()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffusion_core.allocator import loaded_malloc  # noqa: E402
from diffusion_core.compiled import CompiledModel, compile_package  # noqa: E402
from diffusion_core.inference import InferenceModel, resolve_precision  # noqa: E402
from diffusion_core.model import Conditioned, Embedding, ModelConfig, UNet, count_parameters  # noqa: E402
from diffusion_core.runtime import set_threads  # noqa: E402
from diffusion_core.schedules import make_schedule  # noqa: E402
from diffusion_core.train import diffusion_loss, resolve_amp  # noqa: E402
from sampling import matmul_peak, model_gflop  # noqa: E402  (bench/sampling.py, beside this script)

MNIST = dict(in_channels=1, image_size=28, num_classes=10)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero (Peebles & Xie 2023): its 6 modulation vectors come in as a slice of c."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ada = nn.Linear(d, 6 * d)  # the net's embedding -> shift, scale, gate for attention and MLP
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [N x L x d], c [N x 6d] -> [N x L x d]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = c[:, None].chunk(6, dim=2)
        n, length, d = x.shape
        h = F.layer_norm(x, (d,)) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + gate1 * self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, d))
        h = F.layer_norm(x, (d,)) * (1 + scale2) + shift2
        return x + gate2 * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiT(Conditioned):
    """A transformer on 4x4 patches (7 x 7 = 49 tokens of width d, `depth` blocks): speed only, never trained."""

    def __init__(self, d: int, depth: int, heads: int, patch: int = 4) -> None:
        super().__init__()
        self.cfg = ModelConfig(**MNIST)  # what InferenceModel and model_gflop read: the image shape and labels
        self.patch = patch
        self.embed = Embedding(d, d, MNIST["num_classes"])
        self.inp = nn.Linear(patch * patch, d)
        self.pos = nn.Parameter(torch.zeros(1, (28 // patch) ** 2, d))
        self.blocks = nn.ModuleList(DiTBlock(d, heads) for _ in range(depth))
        self.final_ada, self.out = nn.Linear(d, 2 * d), nn.Linear(d, patch * patch)

    def projections(self) -> list[nn.Linear]:
        return [b.ada for b in self.blocks] + [self.final_ada]

    def denoise(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        n, p, side = x.shape[0], self.patch, 28 // self.patch
        *per_block, final = self.split_conditioning(c)
        h = self.inp(F.pixel_unshuffle(x, p).flatten(2).transpose(1, 2)) + self.pos  # [N x 49 x d]
        for block, cb in zip(self.blocks, per_block):
            h = block(h, cb)
        shift, scale = final[:, None].chunk(2, dim=2)
        h = F.layer_norm(h, h.shape[-1:]) * (1 + scale) + shift
        return F.pixel_shuffle(self.out(h).transpose(1, 2).reshape(n, p * p, side, side), p)


def candidates() -> dict[str, nn.Module]:
    def patched(a: int, blocks: int = 1) -> nn.Module:
        return UNet(ModelConfig(**MNIST, patch_size=2, base_channels=a, channel_mults=(1, 2), num_res_blocks=blocks,
                                attention=True))

    def coarse(a: int) -> nn.Module:
        return UNet(ModelConfig(**MNIST, patch_size=4, base_channels=a, channel_mults=(1,), num_res_blocks=2,
                                attention=True))

    return {
        "fast": UNet(ModelConfig(**MNIST, base_channels=16, channel_mults=(1, 2, 4), attention=True)),
        "p2 32/64": patched(32),
        "p2 32/64, 2 blocks": patched(32, 2),
        "p2 48/96": patched(48),
        "p2 64/128": patched(64),
        "p2 96/192": patched(96),
        "p4 128": coarse(128),
        "p4 160": coarse(160),
        "p4 192": coarse(192),
        "dit 192x8": DiT(192, 8, 3),
        "dit 256x6": DiT(256, 6, 4),
    }


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Nonzero weights everywhere (the zero-initialised output convs would make blocks skip work)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def call_args(n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 1000, (n,), generator=g), \
        torch.randint(0, 11, (n,), generator=g)


def train_step_fn(model: nn.Module, batch: int = 32):
    """One DDP-rank training step of the shipped recipe, without the all-reduce."""
    net = randomize(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve_amp("auto", torch.device("cpu")))

    def step() -> None:
        x0 = torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1
        y = torch.randint(0, 11, (batch,), generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        with amp:
            loss = diffusion_loss(net, schedule, x0, t, noise, y, "min_snr", 5.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    return step


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--no-compile", action="store_true", help="skip the AOTInductor packages (about 20 s each)")
    p.add_argument("--only", nargs="+", default=[], help="candidate names (default: all)")
    a = p.parse_args()
    only = a.only
    built = candidates()
    unknown = set(only) - set(built)
    if unknown:
        p.error(f"unknown candidates {sorted(unknown)}; choose from {list(built)}")
    cands = {k: randomize(m) for k, m in built.items() if not only or k in only}
    set_threads(2)
    prec = resolve_precision("auto", torch.device("cpu"))  # what the app samples in here
    peak = matmul_peak(getattr(torch, prec), torch.device("cpu"), repeats=10)
    print(f"# 2 threads, torch {torch.__version__}, malloc {loaded_malloc()}, "
          f"{prec} matmul peak (1024^3) {peak:.0f} GFLOP/s")
    flops = {k: model_gflop(m, m.cfg) for k, m in cands.items()}
    paths: dict[str, dict[str, nn.Module]] = {f"{prec} eager": {k: InferenceModel(m, prec) for k, m in cands.items()}}
    if not a.no_compile:
        cache = Path(tempfile.mkdtemp(prefix="bench-arch-"))
        paths[f"{prec} AOTInductor"] = {}
        for k, m in paths[f"{prec} eager"].items():
            stem = cache / k.replace(" ", "_").replace("/", "-").replace(",", "")
            static, spent = {}, []
            for b in (1, 4, 16):
                t0 = time.perf_counter()
                path = compile_package(m, stem.with_name(f"{stem.name}-b{b}.pt2"), 2, batch=b)
                static[b] = torch._inductor.aoti_load_package(str(path))
                spent.append(time.perf_counter() - t0)
            paths[f"{prec} AOTInductor"][k] = CompiledModel(static[16], m, path, static)
            print(f"# compiled {k} for batch 1 / 4 / 16 in " + " / ".join(f"{s:.1f}" for s in spent) + " s")

    g = torch.Generator().manual_seed(0)
    times: dict[tuple[str, str, int], list[float]] = {}
    with torch.inference_mode():
        for batch in (1, 4, 16):
            args = call_args(batch, g)
            for path, models in paths.items():
                for m in models.values():
                    m(*args)  # warm-up
            for _ in range(a.repeats):
                for path, models in paths.items():
                    for k, m in models.items():
                        times.setdefault((path, k, batch), []).append(timed(lambda: m(*args)))

    set_threads(1)
    steps = {k: train_step_fn(m) for k, m in candidates().items() if k in cands}
    for fn in steps.values():
        fn(), fn()  # warm-up
    train: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.train_steps):
        for k, fn in steps.items():
            train[k].append(timed(fn))

    print("\n| net | parameters | GFLOP / image step | path | batch 1 ms | batch 4 ms | batch 16 ms | "
          "batch 16 / FLOP bound | train step, 1 thread, batch 32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in cands:
        for path in paths:
            ms = [1e3 * statistics.median(times[(path, k, b)]) for b in (1, 4, 16)]
            bound = 16 * flops[k] / peak * 1e3
            print(f"| {k} | {count_parameters(cands[k]) / 1e6:.2f} M | {flops[k]:.3f} | {path} | "
                  + " | ".join(f"{v:.2f}" for v in ms) + f" | {ms[2] / bound:.2f}x | "
                  f"{1e3 * statistics.median(train[k]):.0f} ms |")


if __name__ == "__main__":
    main()
