"""The app's CUDA path, checked where a GPU is present: `python bench/cuda_check.py [cpu]`
(`cpu`: the same check of the CPU path).

Loads every checkpoint the way `python app.py` does (explorer.state.load_registry: device chosen
once, `auto` precision, CUDA graphs on a GPU), then runs the samplers the Reverse and Compare tabs
stream (DDIM-50 x 16, DDPM-1000 x 4, guided DDIM-50 on the digit models) from the same seed on the
GPU and, as the reference, in float32 on the CPU. It prints, per run, the time of the app's path
and of eager float32, whether every pixel is finite, and the mean and largest absolute pixel
difference from the CPU run (pixels in [-1, 1]), and the same for eager float32 on the GPU; it
exits non-zero when a run is not finite or drifts from the CPU's further than rounding explains
(MAX_APP_DIFF, MAX_F32_DIFF).
Needs no Gradio: the registry module is loaded without the UI package around it.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.inference import InferenceModel  # noqa: E402
from diffusion_core.samplers import SamplerConfig, initial_noise, make_generator, sample_progressive  # noqa: E402
from sampling import sync  # noqa: E402  (bench/sampling.py, beside this script)

# bfloat16 vs float32 from one x_T: 0.002 to 0.047 on the CPU (session 9), most of it a few trajectories
# that end at another digit; unrelated samples differ by several times that. float32 on another device
# differs by rounding alone (cuDNN's TF32 convolutions included), except where a trajectory forks.
MAX_APP_DIFF, MAX_F32_DIFF = 0.1, 0.02


def registry_module() -> types.ModuleType:
    """explorer/state.py without explorer/__init__.py (which imports Gradio)."""
    pkg = types.ModuleType("explorer")
    pkg.__path__ = [str(ROOT / "explorer")]
    sys.modules.setdefault("explorer", pkg)
    spec = importlib.util.spec_from_file_location("explorer.state", ROOT / "explorer" / "state.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["explorer.state"] = mod
    spec.loader.exec_module(mod)
    return mod


def run(model, ckpt, cfg: SamplerConfig, n: int, digit: int | None, device: torch.device) -> tuple[torch.Tensor, float]:
    g = make_generator(0)
    shape = (n, ckpt.model_config.in_channels, ckpt.model_config.image_size, ckpt.model_config.image_size)
    x = initial_noise(shape, g, device)
    y = None if digit is None else torch.full((n,), digit, dtype=torch.long, device=device)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        frames = 0
        for step in sample_progressive(model, ckpt.schedule, x, cfg, y, g):
            x = step.x
            frames += 1
    sync()
    assert frames == cfg.steps, (frames, cfg.steps)
    return x.float().cpu(), time.perf_counter() - t0


def main() -> int:
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu": the same check of the CPU path, here
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing to check")
        return 0
    reg = registry_module().load_registry(device=device, compiled=False)
    gpu_name = torch.cuda.get_device_name() if reg.device.type == "cuda" else "no GPU"
    print(f"# {gpu_name}, torch {torch.__version__}; registry: device {reg.device}, "
          f"precision {reg.precision}, checkpoints {reg.names}, skipped {reg.skipped or 'none'}\n")
    assert reg.device.type == device, reg.device
    if device == "cuda":  # the app's GPU path: float32, each model call replayed from a CUDA graph
        assert reg.precision == "float32" and reg.cuda_graphs == tuple(reg.names), (reg.precision, reg.cuda_graphs)
    print(f"models run as: {type(next(iter(reg.checkpoints.values())).model).__name__}\n")
    print("| checkpoint | run | app path, s (median of 3) | eager float32, s | finite | app path vs CPU float32, "
          f"mean / max abs diff | eager float32 on {reg.device.type} vs CPU float32, mean abs diff |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    for name, ckpt in reg.checkpoints.items():
        ref = load_checkpoint(reg.directory / name, torch.device("cpu"))
        same_device_f32 = InferenceModel(load_checkpoint(reg.directory / name, reg.device).model, "float32")
        runs = [("DDIM-50, 16 images", SamplerConfig("ddim", 50), 16, None),
                ("DDPM-1000, 4 images", SamplerConfig("ddpm", 1000), 4, None)]
        if ckpt.model_config.num_classes:
            runs.append(("guided DDIM-50, w = 2, digit 3, 16 images", SamplerConfig("ddim", 50, guidance=2.0), 16, 3))
        for label, cfg, n, digit in runs:
            out, times = None, []
            for _ in range(3):
                out, dt = run(ckpt.model, ckpt, cfg, n, digit, reg.device)
                times.append(dt)
            f32, t32 = run(same_device_f32, ckpt, cfg, n, digit, reg.device)
            cpu, _ = run(ref.model, ref, cfg, n, digit, torch.device("cpu"))
            finite = bool(torch.isfinite(out).all() and torch.isfinite(f32).all())
            diff, diff32 = (out - cpu).abs(), (f32 - cpu).abs().mean().item()
            bad = not finite or diff.mean().item() > MAX_APP_DIFF or diff32 > MAX_F32_DIFF
            failures += bad
            print(f"| {name} | {label} | {statistics.median(times):.3f} | {t32:.3f} | {finite} | "
                  f"{diff.mean().item():.4f} / {diff.max().item():.3f} | {diff32:.5f}{' FAIL' if bad else ''} |")
    print(f"\n{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
