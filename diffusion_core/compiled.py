"""Ahead-of-time compiled eps-models (AOTInductor), built once per machine and loaded in milliseconds.

    python -m diffusion_core.compiled [--checkpoints checkpoints] [--precision auto] [--cache DIR]

compiles every checkpoint in a folder (and the autoguidance guide its card names) into a `.pt2`
package (torch.export, then Inductor with its weights frozen into the code: 25 to 35 s per `fast`
U-Net and precision on the quiet 2-core machine). `load_compiled` returns a `CompiledModel` with
InferenceModel's call and `.cfg` when a package for exactly these weights, this precision, this
torch, this CPU and this thread count exists, and None otherwise, so a caller falls back to eager.

Why ahead of time: `torch.compile` at start-up costs a minute or more of a 2-core machine before the
first sample; a package compiled once is loaded in 10 ms. What it buys on CPU (bench/sampling.py):
no Python dispatch per op, and GroupNorm, SiLU and the additions fused into few loops; measured on
one thread, `mnist-linear` in bfloat16, eager and compiled taking turns: 1.74x at batch 1, 1.45x
at batch 4, 1.20x at batch 16. CPU only: a CUDA package would have to be built on that GPU, and
the eager bfloat16 path is already fast there.

Before Inductor sees the graph, every GroupNorm is rewritten (`group_norm_from_channel_sums`, same
math): Inductor keeps conv activations channels-last on the CPU, and its own GroupNorm then reduces
each group's 2 to 8 interleaved channels with masked 2- to 8-lane vectors (`mnist-linear`, bfloat16,
batch 16, Xeon with AMX: 4.7 ms of a 10 ms call in GroupNorm kernels; bench/sampling.py: 10.4 ms a
call without the rewrite, 8.8 ms with it, in one run). Inductor is also told to compute each
GroupNorm's per-channel scale once rather than per pixel (INDUCTOR_CONFIGS: 1.13x at batch 16 there).

A package computes eps = denoise(x_t, c) from the conditioning c(t, y), which the call looks up in the
eager model's table (inference.ConditioningTable), so the time embedding is not in the package. Beside
the package for any batch (1..MAX_BATCH) a net gets packages for a few fixed batch sizes
(`static_batches`): with every shape known, Inductor prepacks every convolution's weights for oneDNN
(with a symbolic batch it left 11 of `fast`'s 38, the 1x1 ones and the first, to be reordered on every
call) and drops the symbolic index arithmetic (`mnist-linear`, bfloat16, AMX Xeon, bench/sampling.py:
3.14 against 3.98 ms at batch 1, 5.02 against 5.75 ms at batch 4, 9.90 against 10.40 ms at batch 16).
A call takes the package of its exact batch where there is one, else the one for any batch.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from pathlib import Path

import torch

from .checkpoints import (
    Checkpoint,
    CheckpointError,
    autoguidance_weight,
    discover_checkpoints,
    load_checkpoint,
    load_guide,
)
from .inference import PRECISIONS, InferenceModel, _cpu_flags, resolve_precision
from .runtime import available_cores

log = logging.getLogger(__name__)

FORMAT = "aoti-5"  # bump when what goes into a package changes (2: GroupNorm from channel sums; 3: eps from (x, c);
# 4: GroupNorm's per-channel scale computed once, INDUCTOR_CONFIGS; 5: group moments by a sum, not a matmul)
MAX_BATCH = 64  # the dynamic package's batch dimension runs 1..MAX_BATCH; larger batches run eagerly
# Batch sizes that get a package of their own (15 to 20 s each to build for an MNIST net): one image,
# the app's default 4 images, 8 (4 images under classifier-free guidance) and its largest, 16.
# $DIFFUSION_STATIC_BATCHES overrides ("1,4,8,16"; empty: none).
STATIC_BATCHES = (1, 4, 8, 16)
# Largest |compiled - eager| accepted by the probe at load, relative to max |eager|: bfloat16 keeps
# 8 bits of mantissa (0.4% per rounding) and fusion changes the order of roundings.
PROBE_RTOL = {"float32": 1e-3, "bfloat16": 0.05}
# Inductor settings of every package besides the thread count. Freezing folds the weights into the code
# (and lets it prepack them for oneDNN). realize_opcount_threshold: Inductor inlines a pointwise
# expression of up to 50 ops (its CPU default) into every loop that reads it, so GroupNorm's scale
# rsqrt(var + eps) * gamma, one value per (image, channel), was recomputed for every pixel, a square
# root and a division per element beside SiLU's exponential; at 5, expressions of more than 5 ops are
# computed once into a buffer. bfloat16 calls of mnist-linear / its guide / circles / circles-lesson at
# batch 16 on the AMX Xeon (bench/package_configs.py): 6.73 -> 5.88, 6.81 -> 4.60, 8.37 -> 7.36,
# 3.25 -> 1.82 ms (batch 4: 1.05x to 1.21x; batch 1: 0.95x to 1.09x; docs/speed.md, session 21).
INDUCTOR_CONFIGS = {"freezing": True, "realize_opcount_threshold": 5}


def default_cache_dir() -> Path:
    """$DIFFUSION_CACHE, else ~/.cache/diffusion-explorer: packages are per machine, never in git."""
    return Path(os.environ.get("DIFFUSION_CACHE") or Path.home() / ".cache" / "diffusion-explorer") / "compiled"


def machine_tag() -> str:
    """What a package depends on besides the weights: torch version, the CPU's vector ISA and flags."""
    flags = hashlib.sha256(" ".join(sorted(_cpu_flags())).encode()).hexdigest()[:8]
    return f"torch{torch.__version__.replace('+', '-')}-{torch.backends.cpu.get_cpu_capability().lower()}-{flags}"


def static_batches() -> tuple[int, ...]:
    """The batch sizes that get a package of their own: $DIFFUSION_STATIC_BATCHES, else STATIC_BATCHES."""
    env = os.environ.get("DIFFUSION_STATIC_BATCHES")
    if env is None:
        return STATIC_BATCHES
    try:
        batches = tuple(sorted({int(b) for b in env.replace(",", " ").split()}))
    except ValueError:
        raise ValueError(f"DIFFUSION_STATIC_BATCHES must list batch sizes like '1,4,8', got {env!r}") from None
    if any(not 1 <= b <= MAX_BATCH for b in batches):
        raise ValueError(f"DIFFUSION_STATIC_BATCHES: batch sizes lie in 1..{MAX_BATCH}, got {env!r}")
    return batches


def package_path(ckpt: Checkpoint, precision: str, cache_dir: Path | None = None, threads: int | None = None,
                 batch: int | None = None) -> Path:
    """The package file for these weights (their SHA-256), this precision, this machine, `threads`
    (default: torch's current count) and `batch` (None: any batch up to MAX_BATCH). Inductor writes the
    thread count of its fused loops into the code (`#pragma omp parallel num_threads(N)`), so a package
    is built for one count."""
    sha = ckpt.card.get("weights_sha256")
    if not sha:
        raise CheckpointError(f"{ckpt.name}: the card has no weights_sha256, so a package cannot be keyed to it")
    threads = threads or torch.get_num_threads()
    return (cache_dir or default_cache_dir()) / (
        f"{ckpt.name}-{sha[:16]}-{precision}-{FORMAT}-{machine_tag()}-t{threads}-{f'b{batch}' if batch else 'dyn'}.pt2")


def _example_inputs(model: InferenceModel, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x [n x C x H x W] float32, t [n] long, y [n] long if conditional): the probe's inputs."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, model.table.num_timesteps, (n,), generator=g)
    if cfg.num_classes:
        return x, t, torch.randint(0, cfg.num_classes + 1, (n,), generator=g)
    return x, t


class Denoiser(torch.nn.Module):
    """What a package computes: eps = net.denoise(x_t [N x C x H x W], c [N x D]), in the net's dtype."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net.denoise(x, c)


def group_norm_from_channel_sums(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                                 bias: torch.Tensor | None = None, eps: float = 1e-5,
                                 cudnn_enabled: bool = True) -> torch.Tensor:
    """GroupNorm (Wu & He 2018, section 3.1) as `aten.group_norm`, computed so that channels-last code vectorizes.

    y = (x - mu_g) / sqrt(sigma_g^2 + eps) * gamma_c + beta_c, with mu_g and sigma_g^2 the mean and
    variance over the C/G channels of group g and all H x W positions. Here: per-channel sums of x and
    x^2 over H x W (a reduction along the contiguous channel axis of a channels-last tensor); for each
    channel, the sum of those over the C/G channels of its group, as a second reduction over an
    [2N x C x C/G] view of them, so that each channel's group moments land in an [N x C] buffer; then
    sigma^2 = E[x^2] - mu^2 in float32 (values of order 1 here). Inductor fuses all of it into one
    kernel per GroupNorm whose per-pixel loop reads scale and shift as vectors. Written as a sum per
    group followed by a broadcast, Inductor inlined the broadcast's gather `c // (C/G)` into the
    per-pixel loop of some GroupNorms (the guide's 24-channel one: a call 1.07x slower than with the
    matmul); until session 25 a [C x C] matmul averaged the groups, an MKL call per GroupNorm
    (docs/speed.md, session 25).

    :param x: [N x C x H x W]; weight, bias: [C] or None. Returns [N x C x H x W] in x's dtype.
    (`cudnn_enabled` is aten.group_norm's and ignored.)
    """
    n, c, h, w = x.shape
    per_group = c // num_groups  # channels in a group
    xf = x.float()
    sums = torch.cat([xf.sum(dim=(2, 3)), (xf * xf).sum(dim=(2, 3))])  # [2N x C]: sums of x and x^2
    # [2N x C x C/G]: for channel c of group g, the sums of channels g C/G .. (g + 1) C/G - 1 (each sum C/G times)
    of_group = sums.view(2 * n, num_groups, 1, per_group).expand(2 * n, num_groups, per_group, per_group)
    moments = of_group.reshape(2 * n, c, per_group).sum(-1) / (per_group * h * w)  # [2N x C]: the group's E[x], E[x^2]
    mean, mean_sq = moments[:n], moments[n:]
    scale = torch.rsqrt((mean_sq - mean * mean).clamp_min(0) + eps)  # [N x C]
    if weight is not None:
        scale = scale * weight.float()
    shift = -mean * scale if bias is None else bias.float() - mean * scale
    return (xf * scale[:, :, None, None] + shift[:, :, None, None]).to(x.dtype)


def compile_package(model: InferenceModel, path: Path, threads: int | None = None,
                    group_norm_from_sums: bool = True, batch: int | None = None) -> Path:
    """Export `model`'s denoise(x, c) for batches of `batch` (None: any batch 1..MAX_BATCH) and compile it
    into `path` (CPU only) for `threads` threads (default: torch's current count; see package_path).
    `group_norm_from_sums=False` leaves GroupNorm to Inductor (what bench/sampling.py compares the
    rewrite against)."""
    if model.autocast or model.channels_last:
        raise ValueError("compile the plain float32 or bfloat16 path (no autocast, no channels-last)")
    if next(model.model.parameters()).device.type != "cpu":
        raise ValueError("AOTInductor packages are built here for the CPU only")
    if model.table is None:
        raise ValueError("a package computes eps from the conditioning c(t, y): the net must be a model.Conditioned")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"a package's batch lies in 1..{MAX_BATCH}, got {batch}")
    x, t, *y = _example_inputs(model, batch or 4)
    args = (x.to(model.dtype), model.table(t, y[0] if y else None))
    return package_module(Denoiser(model.model), args, path, threads, any_batch=batch is None,
                          group_norm_from_sums=group_norm_from_sums)


def package_module(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, threads: int | None = None,
                   any_batch: bool = True, group_norm_from_sums: bool = True) -> Path:
    """Export `module` at the example `args` (with their first dimension free in 1..MAX_BATCH if
    `any_batch`, else fixed) and compile it into `path` for `threads` threads, every GroupNorm rewritten
    as group_norm_from_channel_sums unless `group_norm_from_sums` is False."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dims = tuple({0: batch} for _ in args) if any_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")  # Inductor wants the .pt2 suffix
    with torch.inference_mode():
        exported = torch.export.export(module, args, dynamic_shapes=dims)
        if group_norm_from_sums:
            decompositions = torch.export.default_decompositions()
            decompositions[torch.ops.aten.group_norm.default] = group_norm_from_channel_sums
            exported = exported.run_decompositions(decompositions)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp), inductor_configs={
            **INDUCTOR_CONFIGS, "cpp.threads": threads or torch.get_num_threads()})
    os.replace(tmp, path)  # atomic: a concurrent reader sees no package or a whole one
    return path


class CompiledModel(torch.nn.Module):
    """eps_theta through AOTInductor packages: `CompiledModel(...)(x, t, y) -> float32 eps`.

    Same call and `.cfg` as the InferenceModel it was compiled from, whose conditioning table gives
    c(t, y) and which it keeps for what the packages cannot run: batches over MAX_BATCH, tensors on
    another device, t outside the table, and images of another size or channel count than the net's
    config (a package does not check its inputs' shapes: it would read a 32 x 32 image as a wrong
    28 x 28 one, and past the end of a smaller one). `runner` takes any batch; `static` maps a batch
    size to the package built for exactly that batch, used in its place.
    """

    def __init__(self, runner, eager: InferenceModel, path: Path, static: dict[int, object] | None = None) -> None:
        super().__init__()
        self.runner = runner
        self.static = dict(static or {})
        self.eager = eager
        self.path = path
        self.cfg = eager.cfg
        self.precision = eager.precision
        self.dtype = eager.dtype
        self.image_shape = (self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)  # [C x H x W]

    @property
    def batches(self) -> tuple[int, ...]:
        """The batch sizes with a package of their own."""
        return tuple(sorted(self.static))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        packaged = n <= MAX_BATCH and x.device.type == "cpu" and x.shape[1:] == self.image_shape
        c = self.eager.table(t, y) if packaged else None
        if c is None:
            return self.eager(x, t, y)
        return self.static.get(n, self.runner)(x.to(self.dtype).contiguous(), c).float()


def _probe(runner, model: InferenceModel, n: int) -> float:
    """max |runner - eager| / max |eager| on a batch of n."""
    x, t, *y = _example_inputs(model, n, seed=1)
    with torch.inference_mode():
        want = model(x, t, *y)
        got = runner(x.to(model.dtype).contiguous(), model.table(t, y[0] if y else None)).float()
    return (got - want).abs().max().item() / max(want.abs().max().item(), 1e-6)


def _load_checked(path: Path, model: InferenceModel, n: int):
    """The package's runner, or None where it is missing, unreadable or disagrees with eager on a batch of n (logged)."""
    if not path.is_file():
        return None
    try:
        runner = torch._inductor.aoti_load_package(str(path))
        err = _probe(runner, model, n)
    except Exception as e:  # a truncated or foreign file: eager still works
        log.warning("ignoring compiled package %s: %s", path, e)
        return None
    if not err <= PROBE_RTOL[model.precision]:
        log.warning("ignoring compiled package %s: differs from eager by %.3g (relative)", path, err)
        return None
    return runner


def load_compiled(ckpt: Checkpoint, model: InferenceModel, cache_dir: Path | None = None,
                  threads: int | None = None, batches: tuple[int, ...] | None = None) -> CompiledModel | None:
    """The compiled twin of `model` (the InferenceModel of `ckpt`) for `threads` (default: torch's
    current count), or None when there is no package for any batch on this machine or it disagrees with
    eager on a probe batch (logged). It also runs the packages for the fixed batch sizes `batches`
    (default: static_batches()) that exist and pass their probe."""
    if model.autocast or model.channels_last or model.precision not in PROBE_RTOL or model.table is None:
        return None
    try:
        path = package_path(ckpt, model.precision, cache_dir, threads)
    except CheckpointError:
        return None
    runner = _load_checked(path, model, 3)
    if runner is None:
        return None
    static = {}
    for b in static_batches() if batches is None else batches:
        fixed = _load_checked(package_path(ckpt, model.precision, cache_dir, threads, b), model, b)
        if fixed is not None:
            static[b] = fixed
    return CompiledModel(runner, model, path, static)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core.compiled", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="checkpoints", help="folder of checkpoints (default: checkpoints)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="the path to compile; auto = bfloat16 where native, as the app chooses (default: auto)")
    parser.add_argument("--cache", default=None, help=f"where packages go (default: {default_cache_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild packages that exist")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads the packages will run on (default: this machine's cores, as the app uses)")
    parser.add_argument("--background", action="store_true",
                        help="run at the lowest CPU priority (how the app builds its missing packages)")
    parser.add_argument("--batches", type=int, nargs="*", default=None,
                        help="batch sizes that also get a package of their own, built after every net has its "
                             "package for any batch; none with no value (default: $DIFFUSION_STATIC_BATCHES or "
                             f"{' '.join(map(str, STATIC_BATCHES))})")
    args = parser.parse_args(argv)
    parent = os.getppid()
    if args.background:
        os.nice(19)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    threads = args.threads or available_cores()
    cache = Path(args.cache) if args.cache else None
    batches = static_batches() if args.batches is None else tuple(sorted(set(args.batches)))
    if any(not 1 <= b <= MAX_BATCH for b in batches):
        parser.error(f"--batches: batch sizes lie in 1..{MAX_BATCH}")
    paths = discover_checkpoints(Path(args.checkpoints))
    if not paths:
        sys.exit(f"no diffusion checkpoints in {args.checkpoints}")
    models = []  # (checkpoint, its InferenceModel): the checkpoints and the guides their cards name
    for p in paths:
        try:
            ckpts = [load_checkpoint(p)]
            if autoguidance_weight(ckpts[0].card) is not None:  # its guide runs beside it at every step
                ckpts.append(load_guide(p))
        except CheckpointError as e:
            print(f"{p.name}: skipped ({e})")
            continue
        models += [(c, InferenceModel(c.model, precision, num_timesteps=c.schedule.num_timesteps)) for c in ckpts]
    # Every net's package for any batch first, so that a reader of the cache (the app) can switch to it
    # sooner; the fixed-batch packages after.
    for batch in (None, *batches):
        for ckpt, model in models:
            if args.background and os.getppid() != parent:
                sys.exit("the app that started this build has exited")
            out = package_path(ckpt, precision, cache, threads, batch)
            if out.is_file() and not args.force:
                print(f"{ckpt.name}: {out} exists")
                continue
            t0 = time.perf_counter()
            compile_package(model, out, threads, batch=batch)
            ok = _load_checked(out, model, batch or 3) is not None
            print(f"{ckpt.name}: {out} ({time.perf_counter() - t0:.1f} s, {out.stat().st_size / 1e6:.1f} MB, "
                  f"{'matches eager' if ok else 'DIFFERS FROM EAGER: not used'})", flush=True)


if __name__ == "__main__":
    main()
