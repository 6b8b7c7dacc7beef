"""Sample a checkpoint from the command line:

    python -m diffusion_core.sample --checkpoint checkpoints/mnist-linear --sampler ddim --steps 50 \
        --eta 0 --num 64 --seed 0 [--label 3 --guidance 3 | --autoguidance 2] [--device auto] --out grid.png

`--out` ending in .npz writes key `images`, uint8 [N x H x W x C]. The same seed and settings
give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

if __name__ == "__main__":  # the app's malloc (allocator.py), chosen before torch is imported
    from .allocator import reexec_with_fast_malloc

    reexec_with_fast_malloc()

import torch

from .allocator import loaded_malloc
from .checkpoints import Checkpoint, CheckpointError, load_checkpoint, load_guide
from .compiled import MAX_BATCH, load_compiled
from .cli import add_dataclass_args, dataclass_from_args
from .inference import InferenceModel, Precision, resolve_precision
from .render import save_images, to_uint8
from .runtime import DeviceName, select_device, set_threads
from .samplers import AutoGuided, SamplerConfig, SamplerName, Spacing, Variance, initial_noise, make_generator, sample


@dataclass(frozen=True)
class SampleArgs:
    checkpoint: str = "checkpoints/mnist-linear"  # checkpoint path (with or without extension)
    sampler: SamplerName = "ddim"  # ddpm or ddim
    steps: int | None = None  # model calls; default: T for ddpm, 50 for ddim
    eta: float = 0.0  # DDIM noise scale in [0, 1]
    spacing: Spacing = "trailing"  # timestep spacing
    variance: Variance = "fixed_small"  # DDPM posterior variance
    clip_x0: bool = True  # clamp predicted x_0 to [-1, 1]
    num: int = 64  # number of images
    seed: int = 0  # seeds x_T and every draw
    label: int | None = None  # class to generate (conditional models only); default: unconditional
    guidance: float = 1.0  # classifier-free guidance scale (with --label)
    autoguidance: float = 1.0  # autoguidance weight w without --label (1: off; 0: the guide alone), with the card's guide
    guide: str | None = None  # with --autoguidance: this guide checkpoint instead of the card's
    batch_size: int = 256  # images per batch (the output depends on it)
    device: DeviceName = "auto"  # auto = CUDA, then MPS, then CPU
    precision: Precision = "auto"  # model precision; auto = bfloat16 where the hardware has it natively
    compiled: bool = False  # run this machine's AOTInductor package (python -m diffusion_core.compiled builds it)
    out: str = "samples.png"  # .png (grid) or .npz (key images, uint8 N x H x W x C)


def sampler_config(sampler: str, steps: int | None, num_timesteps: int, **kw: object) -> SamplerConfig:
    """A SamplerConfig with steps defaulting to T for DDPM and 50 for DDIM, checked against T."""
    n = steps if steps is not None else (num_timesteps if sampler == "ddpm" else min(50, num_timesteps))
    cfg = SamplerConfig(sampler=sampler, steps=n, **kw)  # type: ignore[arg-type]
    cfg.check_steps(num_timesteps)
    return cfg


@torch.inference_mode()
def generate(
    ckpt: Checkpoint, config: SamplerConfig, num: int, seed: int,
    labels: torch.Tensor | None = None, device: torch.device | str = "cpu", batch_size: int = 256,
    precision: str = "float32", compiled: bool = False, guide: Checkpoint | None = None, autoguidance: float = 1.0,
) -> torch.Tensor:
    """num samples [num x C x H x W] in [-1, 1] on the CPU. Batch k draws from a generator seeded by seed + k.

    :param precision: "float32" or "bfloat16" (see inference.py); "auto" picks for the device.
    :param compiled: run the checkpoint's AOTInductor package (diffusion_core.compiled); raises if there is none.
    :param guide: with autoguidance w != 1, the guide (checkpoints.load_guide) that unconditional
        samples are guided away from (samplers.AutoGuided); it runs eagerly at the same precision.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if labels is not None and labels.shape != (num,):
        raise ValueError(f"labels must have shape ({num},), got {tuple(labels.shape)}")
    make_generator(seed)  # validates the seed
    c, s = ckpt.model_config.in_channels, ckpt.model_config.image_size
    precision = resolve_precision(precision, torch.device(device))
    model: torch.nn.Module = InferenceModel(ckpt.model, precision, num_timesteps=ckpt.schedule.num_timesteps)
    if compiled:
        model = _compiled(ckpt, model, config, batch_size, labels is not None)
    if autoguidance != 1.0:
        if guide is None:
            raise ValueError("autoguidance needs a guide: this checkpoint's card names none")
        model = AutoGuided(model, InferenceModel(guide.model, precision, num_timesteps=guide.schedule.num_timesteps),
                           autoguidance)
    out = []
    for k, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        g = make_generator((seed + k) % (2**63))
        x_T = initial_noise((n, c, s, s), g, device)
        y = None if labels is None else labels[start: start + n].to(device)
        out.append(sample(model, ckpt.schedule, x_T, config, y, g).float().cpu())
    return torch.cat(out)


def _compiled(ckpt: Checkpoint, model: InferenceModel, config: SamplerConfig, batch_size: int,
              labelled: bool) -> torch.nn.Module:
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("compiled packages run on the CPU only (use --device cpu, or leave out --compiled)")
    per_call = batch_size * (2 if labelled and config.guidance not in (0.0, 1.0) else 1)  # guidance doubles it
    if per_call > MAX_BATCH:
        raise ValueError(f"a compiled model runs at most {MAX_BATCH} images per call; this batch size makes "
                         f"{per_call}: use a batch size of at most {MAX_BATCH * batch_size // per_call}")
    found = load_compiled(ckpt, model)
    if found is None:
        raise ValueError(f"no compiled package for {ckpt.name} ({model.precision}) on this machine: "
                         "run python -m diffusion_core.compiled")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core.sample", description=__doc__.split("\n\n")[0])
    add_dataclass_args(parser, SampleArgs)
    a: SampleArgs = dataclass_from_args(SampleArgs, parser.parse_args(argv))
    try:
        if not a.out.endswith((".png", ".npz")):
            raise ValueError(f"--out must end in .png or .npz, got {a.out!r}")
        device = select_device(a.device)
        set_threads()
        ckpt = load_checkpoint(a.checkpoint, device)
        cfg = sampler_config(a.sampler, a.steps, ckpt.schedule.num_timesteps, eta=a.eta, spacing=a.spacing,
                             variance=a.variance, clip_x0=a.clip_x0, guidance=a.guidance)
        labels = None if a.label is None else torch.full((a.num,), a.label, dtype=torch.long)
        t0 = time.perf_counter()
        precision = resolve_precision(a.precision, device)
        guide = None
        if a.autoguidance != 1.0:
            guide = load_guide(a.checkpoint, device, a.guide)
        x = generate(ckpt, cfg, a.num, a.seed, labels, device, a.batch_size, precision, a.compiled, guide,
                     a.autoguidance)
    except (ValueError, CheckpointError) as e:
        parser.exit(2, f"error: {e}\n")
    save_images(to_uint8(x), a.out)
    print(f"wrote {a.num} samples to {a.out} ({cfg.sampler}, {cfg.steps} steps, {time.perf_counter() - t0:.2f} s "
          f"on {device}, {precision}, malloc {loaded_malloc()})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
