"""Sampling speed: model cost, the machine's matmul limit, per-step time per execution path,
end-to-end runs, our loop against diffusers' schedulers driving the same model, and what torch
work from a second OS thread costs (why the app keeps its torch work on one thread).

    python bench/sampling.py [--checkpoints mnist-linear circles] [--repeats 7] [--quality 500] [--app]

--app adds the app's figures: cold start of `python app.py` to the first served page, and
bench/app_latency.py (forward-scrub handler, time to the first streamed frame, full runs).

Prints tables; every figure is the median of --repeats runs measured in this one process. Figures that
are compared with each other are read in turns within each repeat (the execution paths' calls, with
the matmul peaks that give their FLOP bound; our loop, the calls alone and diffusers' loops), so that
a slow minute of the shared machine falls on all of them alike. It runs on the app's malloc (tcmalloc
or jemalloc where installed: diffusion_core/allocator.py; the header names it). Nothing here is a
test: machines are shared and noisy, so read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from diffusion_core.allocator import environ_before_reexec, loaded_malloc  # noqa: E402
from diffusion_core.checkpoints import autoguidance_weight, load_checkpoint, load_guide  # noqa: E402
from diffusion_core.compiled import (CompiledModel, compile_package, load_compiled, package_module,  # noqa: E402
                                     package_path)
from diffusion_core.inference import CUDAGraphModel, InferenceModel, native_bfloat16  # noqa: E402
from diffusion_core.runtime import available_cores, select_device, set_threads  # noqa: E402
from diffusion_core.samplers import AutoGuided, SamplerConfig, initial_noise, make_generator, sample  # noqa: E402


def sync() -> None:
    """Wait for queued GPU work, so that a timer measures it (a no-op on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def in_turns(fns: dict, repeats: int, warmup: int = 1, warm_each_turn: bool = False) -> dict[str, float]:
    """Median time of each fn, the fns taking turns within each repeat, so that a slow minute of a
    shared machine falls on all of them alike rather than on one (a ratio of two of them is read from
    the same minutes). `warm_each_turn`: run each fn once untimed before its timed run in every turn,
    for fns of a few ms whose first run after another's pays for cold caches."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if warm_each_turn:
                fn()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median time of fn over `repeats` runs, after `warmup` untimed ones."""
    return in_turns({"fn": fn}, repeats, warmup)["fn"]


def matmul_size(device: torch.device) -> int:
    """n of the n x n x n matmul that measures the peak: 1024 on the CPU, 8192 on a GPU (which a smaller
    one leaves partly idle)."""
    return 8192 if device.type == "cuda" else 1024


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """Measured GFLOP/s of an n x n x n matmul, n = matmul_size(device)."""
    n = matmul_size(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    dt = median_time(lambda: torch.mm(a, b), repeats, warmup=3)
    return 2 * n**3 / dt / 1e9


def model_gflop(model: torch.nn.Module, cfg) -> float:
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(x, torch.tensor([500]), None)
    return fc.get_total_flops() / 1e9


def paths(model: torch.nn.Module, device: torch.device) -> dict[str, InferenceModel]:
    """Every execution path; each but plain float32 works on its own copy of the weights. No bfloat16 ones
    on a CPU that emulates bfloat16 (no AVX-512 BF16 or AMX): there they are many times slower, and the
    app's `auto` never takes them."""
    ps = {"float32": InferenceModel(model, "float32"),
          "float32 channels-last": InferenceModel(model, "float32", channels_last=True)}
    if bfloat16_paths(device):
        ps |= {"bfloat16 autocast": InferenceModel(model, "bfloat16", autocast=True),
               "bfloat16 weights": InferenceModel(model, "bfloat16"),
               "bfloat16 weights channels-last": InferenceModel(model, "bfloat16", channels_last=True)}
    return ps


def bfloat16_paths(device: torch.device) -> bool:
    """Are bfloat16 paths worth timing here: on a GPU, or on a CPU that computes bfloat16 natively."""
    return device.type != "cpu" or native_bfloat16(device)


FIXED_BATCHES = (1, 4, 16)  # the packages for one batch size that this run builds: the batches it times


class EmbeddingPerCall(torch.nn.Module):
    """An InferenceModel with its conditioning table switched off: c(t, y) computed on every call, as
    before the table (what the table buys on the eager paths)."""

    def __init__(self, model: InferenceModel) -> None:
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        table, self.model.table = self.model.table, None
        try:
            return self.model(x, t, y)
        finally:
            self.model.table = table


class EmbeddingInPackage(torch.nn.Module):
    """A package of the whole net, eps(x, t, y) for any batch, as packages were built before the table
    (format aoti-2): the time and label embedding computed inside on every call."""

    def __init__(self, eager: InferenceModel, path: Path) -> None:
        super().__init__()
        cfg = self.cfg = eager.cfg
        self.dtype = eager.dtype
        x = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size).to(self.dtype)
        args = (x, torch.tensor([1, 2, 3, 4])) + ((torch.tensor([0, 1, 2, 3]),) if cfg.num_classes else ())
        package_module(eager.model, args, path)
        self.runner = torch._inductor.aoti_load_package(str(path))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        args = (x.to(self.dtype).contiguous(), t.long())
        if self.cfg.num_classes:
            args += (torch.full_like(t, self.cfg.null_label) if y is None else y.long(),)
        return self.runner(*args).float()


class Zero(torch.nn.Module):
    """A stand-in eps-model that costs nothing: isolates what a sampling loop spends around the model."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x)


def step_times(models: dict[str, torch.nn.Module], cfg, batch: int, repeats: int, device,
               peaks: tuple[torch.dtype, ...] = ()) -> dict[str, float]:
    """Median time of one call per model, the models taking turns within each repeat (interleaved),
    so that a slow minute of a shared machine falls on every path alike rather than on one. With
    `peaks`, the matmul peak of each of those dtypes is read in the same turns (as key "peak <dtype>",
    in GFLOP/s): the FLOP bound then comes from the same minutes as the calls."""
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.full((batch,), 500, device=device)
    n = matmul_size(device)
    operands = {d: (torch.randn(n, n, device=device, dtype=d), torch.randn(n, n, device=device, dtype=d))
                for d in peaks}
    fns = {k: (lambda m=m: [m(x, t, None) for _ in range(3)]) for k, m in models.items()}
    fns |= {f"peak {str(d).removeprefix('torch.')}": (lambda ab=ab: [torch.mm(*ab) for _ in range(3)])
            for d, ab in operands.items()}
    with torch.inference_mode():
        out = {k: v / 3 for k, v in in_turns(fns, repeats, warmup=2, warm_each_turn=True).items()}
    return {k: 2 * n**3 / v / 1e9 if k.startswith("peak ") else v for k, v in out.items()}


def step_time(model, cfg, batch: int, repeats: int, device) -> float:
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.full((batch,), 500, device=device)
    with torch.inference_mode():
        return median_time(lambda: model(x, t, None), repeats)


def our_loop(model, ckpt, sampler: str, steps: int, n: int, device, seed: int = 0) -> torch.Tensor:
    g = make_generator(seed)
    x_T = initial_noise((n, ckpt.model_config.in_channels, ckpt.model_config.image_size,
                         ckpt.model_config.image_size), g, device)
    cfg = SamplerConfig(sampler, steps, spacing="leading")
    with torch.inference_mode():
        return sample(model, ckpt.schedule, x_T, cfg, None, g)


def model_calls(model, ckpt, steps: int, n: int, device) -> None:
    """The loop's model calls and nothing else (the same x every time): the floor of any sampling loop
    that calls this model once per step."""
    x = torch.randn(n, ckpt.model_config.in_channels, ckpt.model_config.image_size, ckpt.model_config.image_size,
                    device=device)
    with torch.inference_mode():
        for t in torch.linspace(ckpt.schedule.num_timesteps - 1, 0, steps).long().tolist():
            model(x, torch.full((n,), t, device=device), None)
    sync()


def diffusers_loop(model, ckpt, sampler: str, steps: int, n: int, device, seed: int = 0) -> torch.Tensor:
    """How a diffusers user samples: scheduler.set_timesteps, then model + scheduler.step per timestep."""
    import diffusers

    beta = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[ckpt.schedule.config.name]
    cls = diffusers.DDIMScheduler if sampler == "ddim" else diffusers.DDPMScheduler
    sched = cls(num_train_timesteps=ckpt.schedule.num_timesteps, beta_schedule=beta, clip_sample=True)
    sched.set_timesteps(steps)
    g = make_generator(seed)
    x = initial_noise((n, ckpt.model_config.in_channels, ckpt.model_config.image_size,
                       ckpt.model_config.image_size), g, device)
    with torch.inference_mode():
        for t in sched.timesteps:
            eps = model(x, t.expand(n).to(device), None)
            x = sched.step(eps, t, x, generator=g).prev_sample
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", default=["mnist-linear"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quality", type=int, default=0, help="also evaluate float32 vs bfloat16 on this many samples")
    p.add_argument("--app", action="store_true", help="also measure the app: cold start and bench/app_latency.py")
    a = p.parse_args()
    # Packages go to a fresh folder, so that every run measures the compile time it reports.
    os.environ["DIFFUSION_CACHE"] = tempfile.mkdtemp(prefix="bench-compiled-")
    device = select_device(a.device)
    threads = set_threads(a.threads or None)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"# machine: {cpu}, {available_cores()} cores, {threads} threads, device {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}, "
          f"native bfloat16: {native_bfloat16(device)}, malloc {loaded_malloc()}")
    peak = {"float32": matmul_peak(torch.float32, device, a.repeats),
            "bfloat16": matmul_peak(torch.bfloat16, device, a.repeats)}
    print(f"# matmul peak ({matmul_size(device)}^3): float32 {peak['float32']:.0f} GFLOP/s, "
          f"bfloat16 {peak['bfloat16']:.0f} GFLOP/s\n")
    precisions = ("float32", "bfloat16") if bfloat16_paths(device) else ("float32",)
    if len(precisions) == 1:
        print(f"# this CPU emulates bfloat16 (its matmul at {peak['bfloat16']:.1f} GFLOP/s): float32 paths only, "
              "as the app's `auto` takes here\n")

    for name in a.checkpoints:
        ckpt = load_checkpoint(ROOT / "checkpoints" / name, device)
        gf = model_gflop(ckpt.model.cpu(), ckpt.model_config)
        ckpt.model.to(device)
        print(f"## {name}: {sum(p.numel() for p in ckpt.model.parameters()) / 1e6:.2f} M parameters, "
              f"{gf:.3f} GFLOP per image per step\n")
        print("| path | batch 1 ms | batch 4 ms | batch 16 ms | over the FLOP bound at 1 / 4 / 16 |")
        print("|---|---|---|---|---|")
        ps: dict[str, torch.nn.Module] = dict(paths(ckpt.model, device))
        if device.type == "cpu":  # (the table is a CPU path: on a GPU the embedding runs inside the CUDA graph)
            ps |= {f"{k}, c(t, y) computed per call": EmbeddingPerCall(ps[k]) for k in list(ps)
                   if k in ("float32", "bfloat16 weights")}
        compile_s: dict[str, str] = {}
        if device.type == "cuda":  # the app's path there (explorer.state): one launch per model call
            for k in ("float32", "bfloat16 weights"):
                ps[f"{k}, CUDA graphs"] = CUDAGraphModel(ps[k])
        if device.type == "cpu":  # AOTInductor packages, as `python -m diffusion_core.compiled` builds them
            for prec in precisions:
                eager_name = "bfloat16 weights" if prec == "bfloat16" else "float32"
                eager = ps[eager_name]
                t0 = time.perf_counter()
                compile_package(eager, package_path(ckpt, prec))
                any_s = time.perf_counter() - t0
                fixed_s = []
                for b in FIXED_BATCHES:
                    t0 = time.perf_counter()
                    compile_package(eager, package_path(ckpt, prec, batch=b), batch=b)
                    fixed_s.append(time.perf_counter() - t0)
                compile_s[prec] = (f"{any_s:.1f} s for any batch, "
                                   + " / ".join(f"{t:.1f}" for t in fixed_s) + f" s for batch {' / '.join(map(str, FIXED_BATCHES))}")
                label = f"{eager_name}, AOTInductor"
                ps[f"{label}, fixed batch"] = load_compiled(ckpt, eager, batches=FIXED_BATCHES)
                ps[f"{label}, any batch"] = load_compiled(ckpt, eager, batches=())
                # The package for any batch with Inductor's own GroupNorm: what the channel-sums rewrite buys.
                plain_gn = package_path(ckpt, prec).with_suffix(".torch-group-norm.pt2")
                compile_package(eager, plain_gn, group_norm_from_sums=False)
                ps[f"{label}, any batch, Inductor's GroupNorm"] = CompiledModel(
                    torch._inductor.aoti_load_package(str(plain_gn)), eager, plain_gn)
                # ... and with the time embedding in the package (format aoti-2): what the table buys.
                ps[f"{label}, any batch, c(t, y) in the package"] = EmbeddingInPackage(
                    eager, package_path(ckpt, prec).with_suffix(".embedding.pt2"))
        # The matmul peaks read again in turns with the calls (not bfloat16's where it is emulated: too slow)
        by_batch = {b: step_times(ps, ckpt.model_config, b, a.repeats, device,
                                  tuple(getattr(torch, p) for p in precisions)) for b in (1, 4, 16)}
        turn_peak = {b: {d: by_batch[b].get(f"peak {d}", peak[d]) for d in peak} for b in (1, 4, 16)}
        for pname in ps:
            ts = [by_batch[b][pname] for b in (1, 4, 16)]
            # seconds per image at the matmul peak of the path's dtype, read in turns with these calls
            per_image = [gf / turn_peak[b]["bfloat16" if "bfloat16" in pname else "float32"] for b in (1, 4, 16)]
            print(f"| {pname} | {ts[0] * 1e3:.2f} | {ts[1] * 1e3:.2f} | {ts[2] * 1e3:.2f} | "
                  + " / ".join(f"{t / (pi * b):.2f}x" for t, pi, b in zip(ts, per_image, (1, 4, 16))) + " |")
        print("\nthe FLOP bound above: the matmul peak read in turns with the calls, float32 / bfloat16 at batch "
              + ", ".join(f"{b}: {turn_peak[b]['float32']:.0f} / {turn_peak[b]['bfloat16']:.0f}"
                          for b in (1, 4, 16)) + " GFLOP/s")
        best = min(ps, key=by_batch[16].get)
        eager = [k for k in ps if "AOTInductor" not in k and "CUDA graphs" not in k]
        eager_best = min(eager, key=by_batch[16].get)
        if compile_s:
            print("\nAOTInductor compile time, once per machine and checkpoint: " + "; ".join(
                f"{k} {v}" for k, v in compile_s.items()))
        print(f"\nfastest at batch 16: {best}\n")
        print("| end to end | ours (s) | diffusers loop, same path (s) | diffusers loop, float32 model "
              "as a diffusers user runs it (s) | ours / same path | ours / float32 user | "
              "the model calls alone (s) | calls alone / diffusers, same path |")
        print("|---|---|---|---|---|---|---|---|")
        plain = ps["float32"]
        reps = max(3, a.repeats // 2)
        has_diffusers = importlib.util.find_spec("diffusers") is not None
        for pname in dict.fromkeys([eager_best, best]):  # the fastest eager path, and the fastest if compiled
            fast = ps[pname]
            for sampler, steps, n in (("ddim", 50, 16), ("ddpm", 1000, 4)):
                loops = {"ours": lambda: our_loop(fast, ckpt, sampler, steps, n, device),
                         "alone": lambda: model_calls(fast, ckpt, steps, n, device)}
                if has_diffusers:
                    loops |= {"same": lambda: diffusers_loop(fast, ckpt, sampler, steps, n, device),
                              "user": lambda: diffusers_loop(plain, ckpt, sampler, steps, n, device)}
                m = in_turns(loops, reps)
                ours, alone = m["ours"], m["alone"]
                if "same" in m:
                    same, user = m["same"], m["user"]
                    cells = (f"{same:.3f} | {user:.3f} | {ours / same:.2f} | {ours / user:.2f} | {alone:.3f} | "
                             f"{alone / same:.2f}")
                else:
                    cells = f"diffusers not installed | - | - | - | {alone:.3f} | -"
                print(f"| {sampler.upper()}-{steps}, {n} images ({pname}) | {ours:.3f} | {cells} |")
        weight = autoguidance_weight(ckpt.card)
        if weight is not None:  # unconditional sampling as the app runs it: the fastest path, the guide on it too
            guide = load_guide(ROOT / "checkpoints" / name)
            guide_gf = model_gflop(guide.model, guide.model_config)
            guide.model.to(device)
            guide_model = InferenceModel(guide.model, "bfloat16" if "bfloat16" in best else "float32")
            if "AOTInductor" in best:  # the guide's packages as the model's
                for b in (None, *FIXED_BATCHES):
                    compile_package(guide_model, package_path(guide, guide_model.precision, batch=b), batch=b)
                guide_model = load_compiled(guide, guide_model,
                                            batches=FIXED_BATCHES if "fixed" in best else ()) or guide_model
            guided = AutoGuided(ps[best], guide_model, weight)
            m = in_turns({"plain": lambda: our_loop(ps[best], ckpt, "ddim", 50, 16, device),
                          "guided": lambda: our_loop(guided, ckpt, "ddim", 50, 16, device)}, reps)
            plain_s, guided_s = m["plain"], m["guided"]
            print(f"\nautoguidance (w = {weight}, guide {guide.name}: "
                  f"{guide_gf:.3f} GFLOP per image step, on the same path), DDIM-50 for 16 images on {best}: "
                  f"{guided_s:.3f} s against {plain_s:.3f} s without ({guided_s / plain_s:.2f}x)")
        # What the loops cost around the model: the model replaced by a constant (zeros).
        zero = Zero(ckpt.model_config)
        cells = []
        for sampler, steps, n in (("ddim", 50, 16), ("ddpm", 1000, 4)):
            loops = {"ours": lambda: our_loop(zero, ckpt, sampler, steps, n, device)}
            if has_diffusers:
                loops["diffusers"] = lambda: diffusers_loop(zero, ckpt, sampler, steps, n, device)
            m = {k: v / steps for k, v in in_turns(loops, reps).items()}
            cells.append(f"{sampler.upper()}, batch {n}: ours {m['ours'] * 1e6:.0f} us"
                         + (f", diffusers {m['diffusers'] * 1e6:.0f} us" if "diffusers" in m else ""))
        print("\nsampler arithmetic per step, model replaced by a constant: " + "; ".join(cells))
        # The thread count: the same call on 1 thread and on all of them.
        # (eager: a package is built for one thread count)
        per_thread = []
        for n_threads in sorted({1, threads}):
            torch.set_num_threads(n_threads)
            per_thread.append(f"{n_threads} thread{'s' if n_threads > 1 else ''} " + " / ".join(
                f"{step_time(ps[eager_best], ckpt.model_config, b, a.repeats, device) * 1e3:.2f}" for b in (4, 16))
                + " ms")
        torch.set_num_threads(threads)
        print(f"threads, {eager_best} at batch 4 / 16: " + ", ".join(per_thread))
        if device.type == "cpu":  # (in a fresh process, on the fastest eager path: it builds no package)
            second_thread_figure(name, eager_best, a.repeats, threads)
        if a.quality and ckpt.dataset == "mnist":
            from diffusion_core.evaluate import EvalArgs, evaluate

            print("\n| quality, DDIM-50, n = %d | fd | fd_real_floor | confident | coverage |" % a.quality)
            print("|---|---|---|---|---|")
            default = EvalArgs.batch_size
            runs = [(prec, False, seed, default) for prec in precisions for seed in (0, 1)]
            # A package runs at most 64 images per call, so the compiled rows sample in batches of 64, and so
            # do eager rows beside them: the batch size decides which x_T are drawn (seed + batch index).
            runs += [(precisions[-1], c, seed, 64) for seed in (0, 1) for c in (False, True)] if compile_s else []
            for prec, compiled, seed, batch in runs:
                r = evaluate(EvalArgs(checkpoint=str(ROOT / "checkpoints" / name), num=a.quality, seed=seed,
                                      precision=prec, device=a.device, compiled=compiled, batch_size=batch))
                label = prec + (", AOTInductor" if compiled else "") + (f", batches of {batch}" if batch != default else "")
                print(f"| {label}, seed {seed} | {r['fd']} | {r['fd_real_floor']} | {r['confident']} | {r['coverage']} |")
        print()
    if a.app:
        app_figures()


def second_thread_figure(name: str, path: str, repeats: int, threads: int) -> None:
    """DDIM-50 for 16 images on the main thread, on a second OS thread, and on the main thread again
    while the second lives (what a server's worker threads do), in a fresh process, since the
    slowdown lasts as long as the second thread: see diffusion_core.runtime.TorchThread."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--second-thread", name, path, str(max(3, repeats // 2)),
                          str(threads)], cwd=ROOT, capture_output=True, text=True, check=False)
    print(out.stdout.strip() or f"second-thread figure failed: {out.stderr.strip()[-300:]}")


def second_thread_run(name: str, path: str, repeats: int, threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    set_threads(threads)
    device = torch.device("cpu")
    ckpt = load_checkpoint(ROOT / "checkpoints" / name, device)
    model = paths(ckpt.model, device)[path]

    def ddim() -> float:
        return median_time(lambda: our_loop(model, ckpt, "ddim", 50, 16, device), repeats, 1)

    alone = ddim()
    with ThreadPoolExecutor(1) as pool:  # a worker that stays alive, as a server's worker threads do
        worker = pool.submit(ddim).result()
        after = ddim()
    print(f"torch work from a second OS thread ({path}, DDIM-50, 16 images): main thread alone {alone:.3f} s; "
          f"then on a second, living thread {worker:.3f} s ({worker / alone:.2f}x); main thread again {after:.3f} s "
          f"({after / alone:.2f}x). The app runs all of its torch work on one thread (diffusion_core.runtime.TorchThread)")


def cold_start(**env: str) -> float:
    """Seconds from starting `python app.py` (with `env` added) to its first served page.

    The app starts as from a shell: without this process's preloaded malloc, so that it makes its own
    choice (and re-executes itself) as `python app.py` does.
    """
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # "use": the packages this run built, and no background build competing with the measurement.
    env = {**environ_before_reexec(), "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "EXPLORER_COMPILED": "use", **env}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def app_figures() -> None:
    """Cold start of `python app.py` to its first served page, then bench/app_latency.py's figures."""
    import subprocess

    print(f"## app\n\ncold start, `python app.py` to the first served page: {cold_start():.2f} s\n")
    for compiled, what in (("0", "eager"), ("use", "compiled (AOTInductor packages built by this run)")):
        print(f"### served {what}\n", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "app_latency.py"), "--repeats", "10"], cwd=ROOT,
                       check=False, env={**os.environ, "EXPLORER_COMPILED": compiled})


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--second-thread":
        second_thread_run(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
