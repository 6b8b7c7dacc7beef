"""The checkpoints' measured quality, and the lesson's questions answered with figures.

    python bench/quality.py [--num 1000] [--ddpm-num 250] [--write-cards] [--grids assets/samples]

For each MNIST checkpoint: DDIM at 10, 20 and 50 steps, unconditional (the null label) with eta 0 and
eta 1, autoguided (the guide the card names, at its weight: unconditional, eta 0), and guided over all ten digits (classifier-free guidance, --guidance), DDIM-50 conditional without
guidance (w = 1), and DDPM-1000 unconditional, autoguided (unless --no-ddpm-autoguidance) and guided
(on --ddpm-num samples: it costs 20x DDIM-50), each with the real-vs-real floor at the same count;
then DDPM-1000 vs DDIM-50 from the same x_T, per pixel.
For circles checkpoints: the share of clean discs at DDIM-50 (eta 0 and 1) and DDPM-1000. Prints Markdown
tables; --write-cards adds every result to "evaluation" in the checkpoint's JSON card and
--grids saves an 8x8 sample grid per checkpoint.

Each run's result and samples are kept in --cache as soon as the run ends, under a hash of its
arguments and of the weights' bytes (the guide's and the scoring classifier's too): a rerun after an
interruption (hours of CPU) picks up where it stopped, and a changed checkpoint or setting is
sampled afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.checkpoints import (CheckpointError, autoguidance_weight, checkpoint_paths,  # noqa: E402
                                        named_guide, read_card, sha256_file, update_card)
from diffusion_core.evaluate import EvalArgs, evaluate_samples, evaluation_key  # noqa: E402
from diffusion_core.render import save_images, to_uint8  # noqa: E402

MNIST_KEYS = ("fd", "fd_real_floor", "confident", "coverage", "coverage_real_floor", "label_accuracy", "nn_ratio", "copy_share",
              "sampling_s")
CIRCLE_KEYS = ("clean_disc", "nn_ratio", "copy_share", "sampling_s")


def row(name: str, r: dict, keys: tuple[str, ...]) -> str:
    what = f"{r['sampler'].upper()}-{r['steps']}" + (f", eta={r['eta']}" if r["sampler"] == "ddim" and r["eta"] else "")
    if r["labels"] is not None:  # every digit in turn: guided, or conditional without guidance at w = 1
        what += ", conditional w=1" if r["guidance"] == 1.0 else f", guided w={r['guidance']}"
    if r.get("guide"):
        what += f", autoguided w={r['autoguidance']}"
    if r.get("seed"):
        what += f", seed {r['seed']}"
    return "| " + " | ".join([name, what, str(r["num"])] + [str(r.get(k, "-")) for k in keys]) + " |"


def cached_run(ea: EvalArgs, cache: Path | None) -> tuple[dict, torch.Tensor, bool]:
    """evaluate_samples(ea), or what an earlier run of the same arguments on the same weights kept in
    `cache`; returns (result, samples [N x C x H x W], whether it came from the cache)."""
    if cache is None:
        return *evaluate_samples(ea), False
    weights, _ = checkpoint_paths(ea.checkpoint)
    key = sha256_file(weights) + json.dumps(dataclasses.asdict(ea), sort_keys=True)
    if ea.autoguidance != 1.0:  # the guide the run loads, as load_guide finds it
        try:
            key += sha256_file(checkpoint_paths(ea.guide or named_guide(ea.checkpoint))[0])
        except (CheckpointError, OSError):
            pass  # no guide: evaluate_samples refuses the run with the reason
    scorer, _ = checkpoint_paths(ea.classifier)  # the MNIST metrics' classifier
    if scorer.exists():
        key += sha256_file(scorer)
    file = cache / f"{weights.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if file.exists():
        kept = torch.load(file)
        return kept["result"], kept["samples"], True
    r, x = evaluate_samples(ea)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"result": r, "samples": x}, file.with_suffix(".tmp"))
    file.with_suffix(".tmp").replace(file)  # whole or absent: an interrupted save is not a result
    return r, x, False


def run_order(r: dict) -> tuple:
    """The order of a run's row in the tables: as main() runs them (DDIM plain, autoguided, guided,
    conditional; then DDPM-1000), each by eta, steps and seed."""
    return (r["sampler"] == "ddpm", r["labels"] is not None, r.get("guidance") == 1.0, bool(r.get("guide")),
            r["eta"], r["steps"], r["seed"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", default=["mnist-linear", "mnist-cosine", "circles", "circles-lesson"])
    p.add_argument("--dir", default=str(ROOT / "checkpoints"), help="folder holding the checkpoints")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--ddpm-num", type=int, default=250)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--no-ddpm-autoguidance", action="store_true",
                   help="skip autoguided DDPM-1000 (two nets for 1,000 steps: the slowest run, and no gain measured)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-cards", action="store_true")
    p.add_argument("--grids", default="")
    p.add_argument("--cache", default=str(ROOT / "runs" / "quality-cache"),
                   help="folder keeping each run's result and samples ('' keeps none)")
    p.add_argument("--report", action="store_true", help="only print the tables from the cards' evaluation results")
    a = p.parse_args()
    if a.report:
        results, pixel = {}, {}
        for name in a.checkpoints:
            path = Path(a.dir) / name
            if path.with_suffix(".json").exists():
                card = read_card(path)
                rs = list(card.get("evaluation", {}).values())
                rs = [r for r in rs if not (r["sampler"] == "ddim" and r["num"] != max(x["num"] for x in rs))]
                results[name] = sorted(rs, key=run_order)  # a card holds them in the order they were filed
                if "evaluation_ddpm1000_vs_ddim50_mean_abs_pixel" in card:
                    pixel[name] = card["evaluation_ddpm1000_vs_ddim50_mean_abs_pixel"]
        print_tables(results, pixel)
        return

    results: dict[str, list[dict]] = {}
    pixel: dict[str, float] = {}
    for name in a.checkpoints:
        path = Path(a.dir) / name
        if not path.with_suffix(".json").exists():
            print(f"(skipping {name}: no checkpoint)", file=sys.stderr)
            continue
        card = read_card(path)
        mnist = card["dataset"] == "mnist"
        conditional = mnist and bool(card["model"]["num_classes"])
        runs = [EvalArgs(checkpoint=str(path), sampler="ddim", steps=n, num=a.num, seed=a.seed)
                for n in ((10, 20, 50) if mnist else (50,))]
        # stochastic DDIM: eta = 1 re-injects noise each step (the DDPM posterior variance of the skipped step)
        runs += [EvalArgs(checkpoint=str(path), sampler="ddim", steps=n, eta=1.0, num=a.num, seed=a.seed)
                 for n in ((10, 20, 50) if mnist else (50,))]
        weight = autoguidance_weight(card)
        if weight is not None:  # unconditional, guided away from the card's guide (samplers.AutoGuided)
            runs += [EvalArgs(checkpoint=str(path), sampler="ddim", steps=n, num=a.num, seed=a.seed, autoguidance=weight)
                     for n in (10, 20, 50)]
            # both: the stochastic sampler corrects the class balance, the guide the confidence (session 13)
            runs.append(EvalArgs(checkpoint=str(path), sampler="ddim", steps=50, eta=1.0, num=a.num, seed=a.seed,
                                 autoguidance=weight))
        if conditional:
            runs += [EvalArgs(checkpoint=str(path), sampler="ddim", steps=n, num=a.num, seed=a.seed,
                              all_labels=True, guidance=a.guidance) for n in (10, 20, 50)]
            runs.append(EvalArgs(checkpoint=str(path), sampler="ddim", steps=50, num=a.num, seed=a.seed,
                                 all_labels=True, guidance=1.0))
        runs.append(EvalArgs(checkpoint=str(path), sampler="ddpm", num=a.ddpm_num, seed=a.seed))
        if weight is not None and not a.no_ddpm_autoguidance:
            runs.append(EvalArgs(checkpoint=str(path), sampler="ddpm", num=a.ddpm_num, seed=a.seed, autoguidance=weight))
        if conditional:
            runs.append(EvalArgs(checkpoint=str(path), sampler="ddpm", num=a.ddpm_num, seed=a.seed,
                                 all_labels=True, guidance=a.guidance))
        runs.append(EvalArgs(checkpoint=str(path), sampler="ddim", steps=50, num=a.ddpm_num, seed=a.seed))
        out, samples = [], {}
        for ea in runs:
            t0 = time.perf_counter()
            r, x, kept = cached_run(ea, Path(a.cache) if a.cache else None)
            print(f"{name}: {evaluation_key(r)} " + ("kept from an earlier run" if kept else
                  f"done in {time.perf_counter() - t0:.0f} s"), file=sys.stderr)
            out.append(r)
            samples[(r["sampler"], r["steps"], r["eta"], r["num"], r["labels"], r["guidance"], r.get("autoguidance"))] = x
        # DDPM-1000 vs DDIM-50 from the same x_T (same seed and batch size: generate draws x_T first).
        ddpm = samples[("ddpm", 1000, 0.0, a.ddpm_num, None, None, None)]
        ddim = samples[("ddim", 50, 0.0, a.ddpm_num, None, None, None)]
        pixel[name] = float((ddpm - ddim).abs().mean())  # in [-1, 1] units
        results[name] = out[:-1]  # the last DDIM-50 run only served the comparison
        if a.write_cards:
            def add(card: dict) -> None:
                # added to what the card holds (as `evaluate --write-card` does): a result of the same key is replaced
                card.setdefault("evaluation", {}).update({evaluation_key(r): r for r in out})
                card["evaluation_ddpm1000_vs_ddim50_mean_abs_pixel"] = round(pixel[name], 4)

            update_card(path, add)
        if a.grids:
            big = samples[("ddim", 50, 0.0, a.num, None, None, None)][:64]
            save_images(to_uint8(big), Path(a.grids) / f"{name}-ddim50.png", nrow=8)
            if weight is not None:  # the same x_T, autoguided
                auto = samples[("ddim", 50, 0.0, a.num, None, None, weight)][:64]
                save_images(to_uint8(auto), Path(a.grids) / f"{name}-ddim50-autoguided.png", nrow=8)
            if conditional:
                guided = samples[("ddim", 50, 0.0, a.num, "all", a.guidance, None)][:80]  # sample i is digit i % 10: one digit per column
                save_images(to_uint8(guided), Path(a.grids) / f"{name}-guided.png", nrow=10)

    print_tables(results, pixel)


def print_tables(results: dict[str, list[dict]], pixel: dict[str, float]) -> None:
    for keys, marker in ((MNIST_KEYS, "fd"), (CIRCLE_KEYS, "clean_disc")):  # one table per dataset kind
        print("\n| checkpoint | sampler | n | " + " | ".join(keys) + " |")
        print("|---" * (3 + len(keys)) + "|")
        for name, rs in results.items():
            for r in rs:
                if marker in r:
                    print(row(name, r, keys))
    print("\nDDPM-1000 vs DDIM-50 from the same x_T, mean |difference| per pixel (range [-1, 1]):")
    print(json.dumps({k: round(v, 4) for k, v in pixel.items()}))


if __name__ == "__main__":
    main()
