"""Checkpoints: weights in safetensors, everything else in a JSON model card beside them.

    checkpoints/NAME.safetensors   the (EMA) weights; never pickled
    checkpoints/NAME.json          model config, schedule config, dataset, training settings,
                                   loss log, evaluation results, and the weights' SHA-256

A card may name an autoguidance guide beside it, `"autoguidance": {"guide": "NAME-guide", "weight": w}`
(diffusion_core.samplers.AutoGuided): `load_guide` loads it, and `discover_checkpoints` leaves it out,
since a guide is part of the model that names it, not a model of its own.

`load_checkpoint` checks every step and raises CheckpointError naming the file and the fault.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

try:
    import fcntl  # POSIX; elsewhere update_card does not lock
except ImportError:  # pragma: no cover
    fcntl = None

from .model import ModelConfig, build_model
from .schedules import NoiseSchedule, ScheduleConfig

FORMAT = "diffusion-explorer/1"
WeightsDtype = Literal["float32", "float16"]
WEIGHTS_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}  # how a file may store them


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, tampered with or does not match its config."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on CPU), its schedule and its card."""

    name: str
    model: torch.nn.Module
    model_config: ModelConfig
    schedule: NoiseSchedule
    dataset: str
    card: dict[str, Any] = field(default_factory=dict)


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """`checkpoints/NAME`, `...NAME.safetensors` or `...NAME.json` -> (weights path, card path)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_card(path: str | os.PathLike[str], card: dict[str, Any]) -> None:
    _, card_path = checkpoint_paths(path)
    _atomic_write_bytes(card_path, (json.dumps(card, indent=2, sort_keys=False) + "\n").encode())


def update_card(path: str | os.PathLike[str], change: Callable[[dict[str, Any]], None]) -> None:
    """Read the card, apply `change` to it in place, and write it back, under an exclusive lock on the
    card's folder (flock; not on Windows): processes adding evaluation results to one card at once
    then lose none of them."""
    _, card_path = checkpoint_paths(path)
    folder = os.open(card_path.parent, os.O_RDONLY) if fcntl else None
    try:
        if folder is not None:
            fcntl.flock(folder, fcntl.LOCK_EX)
        card = read_card(path)
        change(card)
        write_card(path, card)
    finally:
        if folder is not None:
            os.close(folder)  # releases the lock


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    model_config: ModelConfig,
    schedule_config: ScheduleConfig,
    dataset: str,
    card: dict[str, Any] | None = None,
    weights_dtype: WeightsDtype = "float32",
) -> None:
    """Write NAME.safetensors (model's state dict, contiguous, in `weights_dtype`) and NAME.json (the card).

    float16 halves the file (what keeps a wider net's checkpoint a few MB); load_checkpoint reads the
    weights back as float32, so a float16 file holds the float32 weights rounded to 11 significant bits.
    """
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {weights_dtype!r}")
    weights_path, _ = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    dtype = WEIGHTS_DTYPES[weights_dtype]
    source = model.state_dict()
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in source.items()}
    for k, v in source.items():  # float16 stops at 65504: refuse rather than write inf
        if not torch.isfinite(state[k]).all() and torch.isfinite(v).all():
            raise ValueError(f"{k} does not fit {weights_dtype} (|w| up to {v.abs().max():.3g})")
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, weights_path)
    full = {
        "format": FORMAT,
        "dataset": dataset,
        "model": model_config.to_dict(),
        "schedule": asdict(schedule_config),
        **(card or {}),
        "weights_sha256": sha256_file(weights_path),
    }
    write_card(path, full)


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON card, checked for the fields every checkpoint must have."""
    _, card_path = checkpoint_paths(path)
    if not card_path.is_file():
        raise CheckpointError(f"{card_path}: model card not found (every checkpoint needs NAME.json beside NAME.safetensors)")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{card_path}: not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{card_path}: expected a JSON object")
    missing = [k for k in ("format", "dataset", "model", "schedule", "weights_sha256") if k not in card]
    if missing:
        raise CheckpointError(f"{card_path}: missing field(s) {', '.join(missing)}")
    if card["format"] != FORMAT:
        raise CheckpointError(f"{card_path}: unknown format {card['format']!r}, expected {FORMAT!r}")
    return card


def discover_checkpoints(directory: Path) -> list[Path]:
    """DIRECTORY/*.json whose "format" is diffusion-explorer/1, less the guides other cards name (the
    classifier's card is skipped too)."""
    found, guides = [], set()
    for card_path in sorted(Path(directory).glob("*.json")):
        try:
            card = json.loads(card_path.read_text())
            if card.get("format") == FORMAT:
                found.append(card_path.with_suffix(""))
                guides.add(str((card.get("autoguidance") or {}).get("guide", "")))
        except (OSError, ValueError, AttributeError):
            continue
    return [p for p in found if p.name not in guides]


def autoguidance_weight(card: dict[str, Any]) -> float | None:
    """The autoguidance weight w a card recommends with its guide, or None when it names no guide."""
    ag = card.get("autoguidance")
    return float(ag["weight"]) if isinstance(ag, dict) and "guide" in ag else None


def named_guide(path: str | os.PathLike[str], card: dict | None = None) -> Path:
    """The path of the autoguidance guide that checkpoint `path`'s card (read unless given) names: a
    checkpoint in the same directory."""
    weights_path, card_path = checkpoint_paths(path)
    ag = (read_card(path) if card is None else card).get("autoguidance")
    if not isinstance(ag, dict) or not isinstance(ag.get("guide"), str):
        raise CheckpointError(f"{card_path}: names no autoguidance guide (\"autoguidance\": {{\"guide\": NAME}})")
    if Path(ag["guide"]).name != ag["guide"] or ag["guide"] in ("", ".", ".."):
        raise CheckpointError(f"{card_path}: the guide must be a checkpoint name in the same folder, "
                              f"got {ag['guide']!r}")
    return weights_path.parent / ag["guide"]


def load_guide(path: str | os.PathLike[str], device: torch.device | str = "cpu",
               guide_path: str | os.PathLike[str] | None = None) -> Checkpoint:
    """The autoguidance guide that checkpoint `path`'s card names (a checkpoint in the same directory),
    or the one at `guide_path`, loaded and checked to share the checkpoint's dataset, image format and
    noise schedule, and to be unconditional."""
    _, card_path = checkpoint_paths(path)
    card = read_card(path)
    guide = load_checkpoint(named_guide(path, card) if guide_path is None else guide_path, device)
    main_cfg = ModelConfig.from_dict(card["model"])
    if (guide.dataset != card["dataset"] or guide.schedule.config != ScheduleConfig(**card["schedule"])
            or (guide.model_config.in_channels, guide.model_config.image_size)
            != (main_cfg.in_channels, main_cfg.image_size)):
        raise CheckpointError(f"{card_path}: guide {guide.name} is not trained on the same data, image format "
                              "and noise schedule")
    if guide.model_config.conditional:
        raise CheckpointError(f"{card_path}: guide {guide.name} is class-conditional; autoguidance here "
                              "takes an unconditional guide")
    return guide


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Checkpoint:
    """Load and verify a checkpoint; the model is in eval mode with gradients off. Nothing is unpickled."""
    weights_path, card_path = checkpoint_paths(path)
    card = read_card(path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file not found")
    digest = sha256_file(weights_path)
    if digest != card["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path}: SHA-256 {digest[:12]}... does not match {card_path.name} "
            f"({str(card['weights_sha256'])[:12]}...): the file is truncated, corrupt or was replaced"
        )
    try:
        model_config = ModelConfig.from_dict(card["model"])
        schedule_config = ScheduleConfig(**card["schedule"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{card_path}: invalid model or schedule config ({e})") from None
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e})") from None
    stored = {v.dtype for v in state.values()} - set(WEIGHTS_DTYPES.values())
    if stored:
        raise CheckpointError(f"{weights_path}: weights stored as {sorted(map(str, stored))}, expected float32 or float16")
    state = {k: v.float() for k, v in state.items()}  # a float16 file runs as float32 like any other
    model = build_model(model_config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            s
            for s in (
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "",
                f"shape mismatch {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:3]]}" if wrong else "",
            )
            if s
        )
        raise CheckpointError(f"{weights_path}: weights do not match the model config in {card_path.name}: {detail}")
    model.load_state_dict(state)
    model.eval().requires_grad_(False).to(device)
    return Checkpoint(
        name=weights_path.with_suffix("").name,
        model=model,
        model_config=model_config,
        schedule=NoiseSchedule.from_config(schedule_config).to(device),
        dataset=card["dataset"],
        card=card,
    )
