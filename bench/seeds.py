"""How much the headline figures move with the sampling seed: `python bench/seeds.py [--seeds 5]`.

Unconditional DDIM-50 (eta 0 and eta 1), 1,000 samples per seed, each checkpoint: FD (and its real
floor), confident share, coverage and copy share for every seed, then mean and standard deviation over
seeds. `--autoguidance 1.5` guides the samples away from the guide each card names (1: off).
A single seed's confident share at n = 1,000 carries a binomial standard error of about 0.0075; this
measures the spread itself, so that a figure is read against the target with its noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.evaluate import EvalArgs, evaluate  # noqa: E402

KEYS = ("fd", "fd_real_floor", "confident", "coverage", "copy_share")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", default=["checkpoints/mnist-linear", "checkpoints/mnist-cosine"])
    p.add_argument("--seeds", type=int, default=5, help="how many seeds, from --first-seed on")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--autoguidance", type=float, default=1.0, help="autoguidance weight w (1: off)")
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    a = p.parse_args()
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    if a.autoguidance != 1.0:
        print(f"autoguided, w = {a.autoguidance}, by each card's guide\n")
    print("| checkpoint | eta | seed | " + " | ".join(KEYS) + " | device, precision |")
    print("|---" * (4 + len(KEYS)) + "|")
    summary = []
    for ck in a.checkpoints:
        for eta in a.etas:
            rs = [evaluate(EvalArgs(checkpoint=str(ROOT / ck), eta=eta, num=a.num, seed=s, device=a.device,
                                    precision=a.precision, autoguidance=a.autoguidance)) for s in seeds]
            for s, r in zip(seeds, rs):
                print(f"| {ck} | {eta} | {s} | " + " | ".join(str(r[k]) for k in KEYS)
                      + f" | {r['device']}, {r['precision']} |", flush=True)
            mean = statistics.mean
            sd = statistics.stdev if len(rs) > 1 else (lambda _: float("nan"))
            cells = (f"{mean(r[k] for r in rs):.3f} ± {sd([r[k] for r in rs]):.3f}" for k in KEYS)
            summary.append(f"| {ck} | {eta} | " + " | ".join(cells) + " |")
    print(f"\n| checkpoint | eta | {' | '.join(KEYS)} (mean ± sd over seeds {seeds.start} to {seeds.stop - 1}) |")
    print("|---" * (2 + len(KEYS)) + "|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
