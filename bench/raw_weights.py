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
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.checkpoints import FORMAT, checkpoint_paths, read_card, sha256_file, write_card


def export_raw(state_dir: Path, card_path: Path, out: Path) -> Path:
    """Write OUT.{safetensors,json} from STATE_DIR/state.safetensors's raw weights; returns the weights' path."""
    state = load_file(str(state_dir / "state.safetensors"))
    shipped_weights, _ = checkpoint_paths(card_path)
    shipped = load_file(str(shipped_weights))
    ema = {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
    if ema.keys() != shipped.keys() or not all(torch.equal(ema[k].float(), shipped[k]) for k in shipped):
        raise SystemExit(f"{state_dir}: its EMA weights are not {shipped_weights}: not the run that made that checkpoint")
    raw = {k: state[f"model.{k}"].to("cpu", torch.float32).contiguous() for k in shipped}
    weights, _ = checkpoint_paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(raw, str(weights), metadata={"format": FORMAT})
    card = read_card(card_path)
    card.pop("evaluation", None)
    step = json.loads((state_dir / "state.json").read_text())["step"]
    card["weights"] = f"raw (no EMA) from {state_dir}/state.safetensors at step {step}"
    card["weights_sha256"] = sha256_file(weights)
    write_card(out, card)
    return weights


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", type=Path, required=True, help="the run directory (--run-dir of the training command)")
    p.add_argument("--card", type=Path, required=True, help="the checkpoint that run shipped, e.g. checkpoints/mnist-cosine")
    p.add_argument("--out", type=Path, required=True, help="where to write OUT.safetensors and OUT.json")
    args = p.parse_args(argv)
    print(export_raw(args.state, args.card, args.out))


if __name__ == "__main__":
    main()
