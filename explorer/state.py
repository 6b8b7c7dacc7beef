"""Process-wide, read-only state: the device (chosen once), the checkpoints (loaded once) and the schedules.

Everything here is shared by all visitors and never mutated after start-up; per-visitor data
(the chosen image, recorded trajectories) lives in gr.State. `METRICS` is process telemetry
(how many sampler steps each run computed, whether it was closed early) that the tests read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion_core.checkpoints import FORMAT, Checkpoint, CheckpointError, load_checkpoint
from diffusion_core.inference import InferenceModel, resolve_precision
from diffusion_core.runtime import select_device, set_threads, torch_thread
from diffusion_core.schedules import SCHEDULE_NAMES, NoiseSchedule, make_schedule

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT_DIR = ROOT / "checkpoints"
ASSETS_DIR = ROOT / "assets"


def discover_checkpoints(directory: Path) -> list[Path]:
    """checkpoints/*.json whose "format" is diffusion-explorer/1 (the classifier's card is skipped)."""
    found = []
    for card in sorted(Path(directory).glob("*.json")):
        try:
            if json.loads(card.read_text()).get("format") == FORMAT:
                found.append(card.with_suffix(""))
        except (OSError, ValueError, AttributeError):
            continue
    return found


def load_with_retry(path: Path, device: torch.device, retries: int = 1, wait_s: float = 2.0) -> Checkpoint:
    """Load a checkpoint; a training run may be rewriting it at this moment, so try again once."""
    for attempt in range(retries + 1):
        try:
            return load_checkpoint(path, device)
        except CheckpointError:
            if attempt == retries:
                raise
            time.sleep(wait_s)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Registry:
    device: torch.device
    threads: int
    precision: str  # "float32" or "bfloat16": the execution path of every model (diffusion_core.inference)
    checkpoints: dict[str, Checkpoint]  # name -> loaded checkpoint; .model is an InferenceModel on `device`
    schedules: dict[str, NoiseSchedule]  # "linear" / "cosine", T = 1000, on the CPU (forward views)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it could not be loaded

    @property
    def names(self) -> list[str]:
        return list(self.checkpoints)

    def get(self, name: str) -> Checkpoint:
        if name not in self.checkpoints:
            raise ValueError(f"unknown checkpoint {name!r}; loaded: {', '.join(self.checkpoints)}")
        return self.checkpoints[name]

    def formats(self) -> dict[str, tuple[int, int]]:
        """dataset -> (channels, image size), for the datasets of the loaded checkpoints."""
        out: dict[str, tuple[int, int]] = {}
        for c in self.checkpoints.values():
            out.setdefault(c.dataset, (c.model_config.in_channels, c.model_config.image_size))
        return out


def load_registry(directory: str | os.PathLike[str] | None = None, device: str = "auto",
                  precision: str | None = None) -> Registry:
    """Choose the device, size the thread pool and load every diffusion checkpoint in `directory`.

    `directory` defaults to $EXPLORER_CHECKPOINTS or ./checkpoints; `precision` to $EXPLORER_PRECISION
    or "auto" (bfloat16 where the hardware computes it natively: the fastest path that holds quality,
    see bench/sampling.py). Raises if no checkpoint loads. Runs on the torch thread, like every
    handler (explorer.common.friendly), so that one OS thread does all of the app's torch work; the
    calling thread and threads started later get one intra-op thread each (TorchThread.confine_others).
    """
    reg = torch_thread().run(_load_registry, directory, device, precision)
    torch_thread().confine_others()
    return reg


def _load_registry(directory: str | os.PathLike[str] | None, device: str, precision: str | None) -> Registry:
    directory = Path(directory or os.environ.get("EXPLORER_CHECKPOINTS") or DEFAULT_CHECKPOINT_DIR)
    dev = select_device(device)
    threads = set_threads()
    precision = resolve_precision(precision or os.environ.get("EXPLORER_PRECISION", "auto"), dev)
    loaded, skipped = {}, {}
    for path in discover_checkpoints(directory):
        try:
            ckpt = load_with_retry(path, dev)
            ckpt.model = InferenceModel(ckpt.model, precision)
            loaded[ckpt.name] = ckpt
        except CheckpointError as e:
            skipped[path.name] = str(e)
            log.warning("skipping checkpoint %s: %s", path, e)
    if not loaded:
        raise RuntimeError(f"no diffusion checkpoint could be loaded from {directory} (skipped: {skipped or 'none found'})")
    # Visitors see the first model by default: MNIST before circles, linear before cosine.
    loaded = dict(sorted(loaded.items(), key=lambda kv: (kv[1].dataset != "mnist",
                                                         kv[1].schedule.config.name != "linear", kv[0])))
    schedules = {name: make_schedule(name, 1000) for name in SCHEDULE_NAMES}
    return Registry(dev, threads, precision, loaded, schedules, skipped)


@dataclass
class RunRecord:
    kind: str  # "reverse" or "compare"
    planned: int  # sampler steps the run would compute if not stopped
    done: int = 0  # sampler steps actually computed
    frames: list[int] = field(default_factory=list)  # `done` at each streamed frame, in order
    closed: bool = False  # the handler's generator has finished or been closed
    started: float = field(default_factory=time.perf_counter)  # when the run began (perf_counter seconds)


class Metrics:
    """Thread-safe log of sampling runs (process telemetry, not visitor data)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: list[RunRecord] = []

    def start(self, kind: str, planned: int) -> RunRecord:
        rec = RunRecord(kind, planned)
        with self._lock:
            self.runs.append(rec)
            del self.runs[:-100]
        return rec


METRICS = Metrics()
