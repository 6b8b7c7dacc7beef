"""What an Inductor setting buys the packages: one call of each checkpoint, per setting, taking turns.

    python bench/package_configs.py [--checkpoints mnist-linear mnist-linear-guide circles circles-lesson]
                                    [--thresholds none,5] [--precision auto] [--repeats 40]

For each checkpoint, batch size (1, 4, 16) and value of Inductor's `realize_opcount_threshold`
("none": Inductor's own default, 50 on a CPU; compiled.INDUCTOR_CONFIGS uses 5), it builds the
fixed-batch package as the app does (compiled.compile_package, the current thread count) and times
one call, the settings taking turns (median of `--repeats`); also the largest |package - eager|
relative to max |eager|, so a setting that changed the math would show.
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

import torch  # noqa: E402

import diffusion_core.compiled as compiled  # noqa: E402
from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.inference import InferenceModel, resolve_precision  # noqa: E402

BATCHES = (1, 4, 16)


def build(model: InferenceModel, threshold: int | None, batch: int, cache: Path):
    configs = {k: v for k, v in compiled.INDUCTOR_CONFIGS.items() if k != "realize_opcount_threshold"}
    if threshold is not None:
        configs["realize_opcount_threshold"] = threshold
    saved, compiled.INDUCTOR_CONFIGS = compiled.INDUCTOR_CONFIGS, configs
    try:
        path = compiled.compile_package(model, cache / f"{model.cfg.arch}-{id(model)}-{threshold}-b{batch}.pt2",
                                        batch=batch)
    finally:
        compiled.INDUCTOR_CONFIGS = saved
    return torch._inductor.aoti_load_package(str(path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+",
                   default=["mnist-linear", "mnist-linear-guide", "circles", "circles-lesson"])
    p.add_argument("--thresholds", default="none,5")
    p.add_argument("--precision", default="auto")
    p.add_argument("--repeats", type=int, default=40)
    a = p.parse_args()
    thresholds = [None if v == "none" else int(v) for v in a.thresholds.split(",")]
    cache = Path(tempfile.mkdtemp(prefix="bench-configs-"))
    precision = resolve_precision(a.precision, torch.device("cpu"))
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}, {precision}; "
          "realize_opcount_threshold: " + ", ".join("Inductor's default" if v is None else str(v) for v in thresholds))
    print("\n| checkpoint | realize_opcount_threshold | batch 1 ms | batch 4 ms | batch 16 ms | "
          "max rel. difference from eager |")
    print("|---|---|---|---|---|---|")
    for name in a.checkpoints:
        model = InferenceModel(load_checkpoint(ROOT / "checkpoints" / name).model, precision)
        ms: dict[tuple, float] = {}
        err: dict[tuple, float] = {}
        for batch in BATCHES:
            runners = {v: build(model, v, batch, cache) for v in thresholds}
            x, t, *y = compiled._example_inputs(model, batch)  # the load probe's draws
            y = y[0] if y else None
            args = (x.to(model.dtype), model.table(t, y))
            times: dict = {v: [] for v in thresholds}
            with torch.inference_mode():
                want = model(x, t, y)
                for v, r in runners.items():
                    for _ in range(10):
                        r(*args)
                    err[(v, batch)] = ((r(*args).float() - want).abs().max() / want.abs().max()).item()
                for _ in range(a.repeats):
                    for v, r in runners.items():
                        t0 = time.perf_counter()
                        r(*args)
                        times[v].append(time.perf_counter() - t0)
            for v in thresholds:
                ms[(v, batch)] = 1e3 * statistics.median(times[v])
        for v in thresholds:
            print(f"| {name} | {'default' if v is None else v} | "
                  + " | ".join(f"{ms[(v, b)]:.2f}" for b in BATCHES)
                  + f" | {max(err[(v, b)] for b in BATCHES):.4f} |")


if __name__ == "__main__":
    main()
