"""Training levers compared on one GPU: `python bench/sweep.py --out DIR [--budget-s S] [--levers NAME ...]`.

Every run is `mnist-cosine`'s recipe (the command in its card) as one process with the two CPU
processes' batch of 64 (`--batch-size 64`), its step replayed as a CUDA graph (`--cuda-graph`),
plus one lever. The runs train one after another (four side by side on one H100 took 414 s for
12,000 steps each, more than four in turn: the GPU time-slices between processes), then each
scores its EMA checkpoint as the issue measures it, the scorers side by side: unconditional
DDIM-50 (eta 0, 1,000 samples, several seeds: FD and its real floor, confident share, coverage)
and guided DDIM-50 (w = 2, every digit in turn: label accuracy).

With --budget-s, a probe first times a few hundred steps, and the step count is cut so that the
runs finish within the budget: a shorter horizon than the recipe's 30,000 steps, the same for
every lever, learning-rate decay included. Prints one table; writes DIR/NAME.json (card),
DIR/NAME.result.json (scores) per run and DIR/sweep.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = ["--dataset", "mnist", "--schedule", "cosine", "--model", "fast", "--amp", "bf16", "--label-dropout", "0.5",
          "--ema-decay", "0.9995", "--batch-size", "64", "--checkpoint-every", "5000", "--log-every", "100",
          "--no-progress"]
LEVERS: dict[str, list[str]] = {
    "recipe": [],
    "no-min-snr": ["--loss-weighting", "none"],
    "dropout-0.7": ["--label-dropout", "0.7"],
    "dropout-0.7-no-min-snr": ["--label-dropout", "0.7", "--loss-weighting", "none"],
    "lr-1e-3": ["--lr", "1e-3"],
    "lr-4e-3": ["--lr", "4e-3"],
    "min-snr-1": ["--min-snr-gamma", "1"],
    "res-blocks-2": ["--num-res-blocks", "2"],
}
KEYS = ("fd", "fd_real_floor", "confident", "coverage")


def train_cmd(name: str, out: Path, steps: int, a: argparse.Namespace) -> list[str]:
    graph = a.graph and a.device == "cuda"
    return [sys.executable, "-m", "diffusion_core.train", *RECIPE, *LEVERS[name], "--max-steps", str(steps),
            "--device", a.device, *(["--cuda-graph"] if graph else []), "--no-resume", "--out", str(out / name),
            "--run-dir", str(out / f"run-{name}")]


def launch(cmds: dict[str, list[str]], logdir: Path, side_by_side: bool) -> dict[str, int]:
    """Run the commands, side by side (each on its own share of the CPU cores) or one after another;
    returns each one's exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // len(cmds)) if side_by_side else len(cores)
    procs = {}
    with contextlib.ExitStack() as logs:
        for i, (n, c) in enumerate(cmds.items()):
            mine = set(cores[i * share % len(cores):][:share]) if side_by_side else set(cores)
            log = logs.enter_context(open(logdir / f"{n}.log", "w"))
            procs[n] = subprocess.Popen(c, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=lambda mine=mine: os.sched_setaffinity(0, mine))  # noqa: PLW1509 - no threads here
            if not side_by_side:
                procs[n].wait()
        return {n: p.wait() for n, p in procs.items()}


def ms_per_step(run_dir: Path) -> float:
    """Steady-state training time per step from a run's loss log (the first logged window, with capture, left out)."""
    log = json.loads((run_dir / "state.json").read_text())["loss_log"]
    return 1e3 * (log[-1]["wall_s"] - log[0]["wall_s"]) / (log[-1]["step"] - log[0]["step"])


def score(name: str, out: Path, a: argparse.Namespace) -> dict:
    from diffusion_core.evaluate import EvalArgs, evaluate

    ck = str(out / name)
    uncond = [evaluate(EvalArgs(checkpoint=ck, num=a.num, seed=s, device=a.device)) for s in range(a.seeds)]
    guided = evaluate(EvalArgs(checkpoint=ck, num=a.num, seed=0, all_labels=True, guidance=2.0, device=a.device))
    card = json.loads((out / f"{name}.json").read_text())
    result = {"lever": name, "args": " ".join(LEVERS[name]), "steps": card["steps"], "wall_time_s": card["wall_time_s"],
              "final_loss": card["loss_log"][-1]["loss"] if card["loss_log"] else None, "uncond": uncond, "guided": guided}
    (out / f"{name}.result.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/sweep"))
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    p.add_argument("--steps", type=int, default=30000, help="the recipe's horizon; --budget-s may cut it")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="wall-clock budget of all the training, the probe left out (0: none)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--num", type=int, default=1000, help="samples per score")
    p.add_argument("--device", default="cuda", help="cuda (cpu only to check the script)")
    p.add_argument("--no-graph", dest="graph", action="store_false", help="eager steps instead of CUDA graphs")
    p.add_argument("--score-only", action="store_true", help="score the runs already in --out")
    p.add_argument("--no-score", dest="score", action="store_false",
                   help="train only (score elsewhere: --score-only --device cpu)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.score_only:
        for n in a.levers:
            score(n, a.out, a)
        return
    steps = a.steps
    if a.budget_s:
        # Time a short run: the per-step time, and what a run costs besides its steps (start-up,
        # capture, saving), which the step count must leave room for.
        probe, first, probe_steps = a.out / "probe", a.levers[0], 600
        probe.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        status = launch({first: train_cmd(first, probe, probe_steps, a)}, probe, side_by_side=False)
        if any(status.values()):
            sys.exit(f"probe failed: {status}; log in {probe}")
        ms = ms_per_step(probe / f"run-{first}")
        overhead = max(0.0, time.perf_counter() - t0 - probe_steps * ms / 1e3)
        per_run = a.budget_s / len(a.levers) - overhead
        steps = min(a.steps, max(1000, int(per_run / (ms / 1e3) // 1000 * 1000)))
        print(f"probe: {ms:.2f} ms per step, {overhead:.0f} s per run besides its steps -> {steps} steps for each "
              f"of {len(a.levers)} runs", flush=True)
    t0 = time.perf_counter()
    status = launch({n: train_cmd(n, a.out, steps, a) for n in a.levers}, a.out, side_by_side=False)
    print(f"trained {len(a.levers)} runs in {time.perf_counter() - t0:.0f} s: {status}", flush=True)
    trained = [n for n in a.levers if status[n] == 0]
    if not a.score:
        return
    t0 = time.perf_counter()
    score_cmds = {f"score-{n}": [sys.executable, str(Path(__file__).resolve()), "--out", str(a.out), "--score-only",
                                 "--levers", n, "--seeds", str(a.seeds), "--num", str(a.num), "--device", a.device]
                  for n in trained}
    status = launch(score_cmds, a.out, side_by_side=True)
    print(f"scored {len(trained)} runs in {time.perf_counter() - t0:.0f} s: {status}", flush=True)
    results = [json.loads((a.out / f"{n}.result.json").read_text()) for n in trained
               if (a.out / f"{n}.result.json").is_file()]
    mean, sd = statistics.mean, statistics.stdev
    lines = [f"| lever | args | steps | train s | final loss | uncond DDIM-50 eta 0, {a.seeds} seeds: "
             + " / ".join(KEYS) + " (mean ± sd) | guided w=2 label accuracy |", "|---" * 7 + "|"]
    for r in results:
        cells = " / ".join(f"{mean(u[k] for u in r['uncond']):.3f} ± {sd(u[k] for u in r['uncond']):.3f}"
                           if len(r["uncond"]) > 1 else str(r["uncond"][0][k]) for k in KEYS)
        lines.append(f"| {r['lever']} | {r['args'] or '-'} | {r['steps']} | {r['wall_time_s']} | {r['final_loss']} | "
                     f"{cells} | {r['guided'].get('label_accuracy')} |")
    print("\n".join(lines))
    (a.out / "sweep.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
