"""What the EMA buys: a training run's raw (non-EMA) weights as a checkpoint that the evaluation reads.

    python bench/raw_weights.py --state runs/exp-ddp-cos/run --card checkpoints/mnist-cosine --out runs/raw-cos/mnist-cosine
    python -m diffusion_core.evaluate --checkpoint runs/raw-cos/mnist-cosine --steps 50

A run directory's state.safetensors holds `model.*` (the raw weights), `ema.*` (what the run
ships) and `opt.*`. This writes OUT.safetensors from `model.*` and OUT.json from the shipped card
(same model, schedule and data), with its evaluation results dropped and the weights' SHA-256
recomputed. It first checks that `ema.*` is, bit for bit, the card's checkpoint, so the two
evaluations differ only in the averaging.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.checkpoints import load_checkpoint, save_checkpoint
from diffusion_core.schedules import ScheduleConfig
from diffusion_core.train import state_part


def export_raw(state_dir: Path, card_path: Path, out: Path) -> None:
    """Write OUT.{safetensors,json}: CARD_PATH's checkpoint with STATE_DIR's raw weights in place of its EMA ones."""
    ck = load_checkpoint(card_path)  # verifies the shipped file's SHA-256
    tensors = load_file(str(state_dir / "state.safetensors"))
    ema, shipped = state_part(tensors, "ema"), ck.model.state_dict()
    if ema.keys() != shipped.keys() or not all(torch.equal(ema[k].float(), shipped[k]) for k in shipped):
        raise SystemExit(f"{state_dir}: its EMA weights are not {card_path}'s: not the run that made that checkpoint")
    ck.model.load_state_dict(state_part(tensors, "model"))
    step = json.loads((state_dir / "state.json").read_text())["step"]
    card = {k: v for k, v in ck.card.items() if k not in ("evaluation", "weights_sha256")}
    card["weights"] = f"raw (no EMA) from {state_dir}/state.safetensors at step {step}"
    save_checkpoint(out, ck.model, ck.model_config, ScheduleConfig(**ck.card["schedule"]), ck.dataset, card)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", type=Path, required=True, help="the run directory (--run-dir of the training command)")
    p.add_argument("--card", type=Path, required=True, help="the checkpoint that run shipped, e.g. checkpoints/mnist-cosine")
    p.add_argument("--out", type=Path, required=True, help="where to write OUT.safetensors and OUT.json")
    args = p.parse_args(argv)
    export_raw(args.state, args.card, args.out)
    print(f"{args.out}.safetensors, {args.out}.json")


if __name__ == "__main__":
    main()
