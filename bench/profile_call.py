"""Where one model call's time goes: the app's fixed-batch package, op by op, against the FLOP bound.

    python bench/profile_call.py [--checkpoint mnist-linear] [--batches 4,16] [--precision auto]

For each batch size it builds the package as the app does (compiled.compile_package, fixed batch,
the current thread count) with Inductor's kernel profiling on, times the call (median of 50), and
prints the profiler's self time per call summed by kind: oneDNN convolutions as the package calls
them (ATen's mkldnn ops, with their framework around the kernel), Inductor's fused loops, matmuls
and the rest. A second process runs the same calls with ONEDNN_VERBOSE=profile_exec and sums the
convolution kernels' own execution times, so "around the kernel" is the difference. The FLOP bound
is the net's FLOPs at the measured 1024^3 matmul peak of the precision (bench/sampling.py). It runs
on the app's malloc (diffusion_core/allocator.py; DIFFUSION_ALLOCATOR=system for glibc's).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
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
import torch._inductor.config as inductor_config  # noqa: E402

from diffusion_core.allocator import loaded_malloc  # noqa: E402
from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.compiled import _example_inputs, compile_package  # noqa: E402
from diffusion_core.inference import InferenceModel, resolve_precision  # noqa: E402
from sampling import matmul_peak, model_gflop  # noqa: E402  (bench/sampling.py, beside this script)

CALLS = 50


def runner_and_inputs(a, batch: int, cache: Path):
    ckpt = load_checkpoint(ROOT / "checkpoints" / a.checkpoint)
    model = InferenceModel(ckpt.model, resolve_precision(a.precision, torch.device("cpu")))
    path = cache / f"{a.checkpoint}-{model.precision}-b{batch}.pt2"
    if not path.exists():
        with inductor_config.patch({"cpp.enable_kernel_profile": True}):
            compile_package(model, path, batch=batch)
    x, t, *y = _example_inputs(model, batch)  # the load probe's draws: x_t, t and (conditional nets) labels
    x, y = x.to(model.dtype), (y[0] if y else None)
    return ckpt, model, torch._inductor.aoti_load_package(str(path)), (x, model.table(t, y))


def kind(name: str) -> str:
    if "convolution" in name:
        return "convolutions (oneDNN, as called)"
    if "_cpp_fused_" in name:  # graph_<i>_cpp_fused_...: i counts the graphs compiled in this process
        return "Inductor's fused loops"
    if name.endswith(("mm_out", "bmm_out", "addmm_out")):
        return "matmuls"
    return "the rest (allocation, copies, ...)"


def child(a) -> None:
    """Run the calls under ONEDNN_VERBOSE=profile_exec (set by the parent); it prints one line per kernel."""
    _, _, runner, args = runner_and_inputs(a, a.child, Path(a.cache))
    with torch.inference_mode():
        for _ in range(CALLS):
            runner(*args)


def onednn_kernel_ms(a, batch: int) -> float:
    """Mean oneDNN convolution kernel time per call, from a child process's verbose log."""
    env = {**os.environ, "ONEDNN_VERBOSE": "profile_exec"}
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", str(batch), "--cache", a.cache],
                         env=env, capture_output=True, text=True, check=True).stdout
    per_call = collections.defaultdict(float)
    execs = [line.split(",") for line in out.splitlines() if ",exec," in line and ",convolution," in line]
    convs = len(execs) // CALLS
    for i, fields in enumerate(execs):
        per_call[i // convs] += float(fields[-1])
    return statistics.median(per_call.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="mnist-linear")
    p.add_argument("--batches", default="4,16")
    p.add_argument("--precision", default="auto")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cache", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    a.cache = a.cache or tempfile.mkdtemp(prefix="bench-profile-")
    print(f"# {a.checkpoint}, {torch.get_num_threads()} threads, torch {torch.__version__}, malloc {loaded_malloc()}")
    for batch in (int(b) for b in a.batches.split(",")):
        ckpt, model, runner, args = runner_and_inputs(a, batch, Path(a.cache))
        peak = matmul_peak(model.dtype, torch.device("cpu"), repeats=10)
        bound = batch * model_gflop(ckpt.model, model.cfg) / peak * 1e3
        with torch.inference_mode():
            for _ in range(20):
                runner(*args)
            times = []
            for _ in range(CALLS):
                t0 = time.perf_counter()
                runner(*args)
                times.append(time.perf_counter() - t0)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(CALLS):
                    runner(*args)
        spent: dict[str, float] = collections.defaultdict(float)
        count: dict[str, int] = collections.Counter()
        for e in prof.events():
            spent[kind(e.name)] += e.self_cpu_time_total / 1e3 / CALLS
            count[kind(e.name)] += 1
        call = 1e3 * statistics.median(times)
        kernels = onednn_kernel_ms(a, batch)
        print(f"\n## batch {batch}, {model.precision}: one call {call:.2f} ms; FLOP bound {bound:.2f} ms "
              f"({peak:.0f} GFLOP/s peak); call / bound {call / bound:.2f}x\n")
        print("| where | ms per call | over the FLOP bound |")
        print("|---|---|---|")
        for k, ms in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"| {k}, {count[k] // CALLS} a call | {ms:.2f} | {ms / bound:.2f}x |")
        print(f"| of which the convolution kernels themselves (oneDNN verbose) | {kernels:.2f} | {kernels / bound:.2f}x |")


if __name__ == "__main__":
    main()
