"""Process-wide, read-only state: the device (chosen once), the checkpoints (loaded once) and the schedules.

Everything here is shared by all visitors and never mutated after start-up, with one exception:
`compile_in_background` replaces a checkpoint's model by its compiled twin once its package is
built (on the torch thread, between two steps; a run in progress keeps the model it started
with). Per-visitor data (the chosen image, recorded trajectories) lives in gr.State. `METRICS` is
process telemetry (how many sampler steps each run computed, whether it was closed early) that
the tests read.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion_core.checkpoints import (
    Checkpoint,
    CheckpointError,
    autoguidance_weight,
    discover_checkpoints,
    load_checkpoint,
    load_guide,
)
from diffusion_core.compiled import CompiledModel, load_compiled, static_batches
from diffusion_core.inference import CUDAGraphModel, InferenceModel, resolve_precision
from diffusion_core.runtime import available_cores, select_device, set_threads, torch_thread
from diffusion_core.schedules import SCHEDULE_NAMES, NoiseSchedule, make_schedule

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT_DIR = ROOT / "checkpoints"
ASSETS_DIR = ROOT / "assets"


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
class Guide:
    """A checkpoint's autoguidance guide (diffusion_core.samplers.AutoGuided), ready to run."""

    checkpoint: Checkpoint  # .model: InferenceModel, CompiledModel or CUDAGraphModel, as for the checkpoints
    weight: float  # the w its checkpoint's card recommends

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def model(self) -> torch.nn.Module:
        return self.checkpoint.model


@dataclass(frozen=True)
class Registry:
    device: torch.device
    threads: int
    precision: str  # "float32" or "bfloat16": the execution path of every model (diffusion_core.inference)
    checkpoints: dict[str, Checkpoint]  # name -> loaded checkpoint; .model: InferenceModel or CompiledModel
    schedules: dict[str, NoiseSchedule]  # "linear" / "cosine", T = 1000, on the CPU (forward views)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it could not be loaded
    directory: Path | None = None  # where the checkpoints were found
    guides: dict[str, Guide] = field(default_factory=dict)  # checkpoint name -> its autoguidance guide, if any

    @property
    def names(self) -> list[str]:
        return list(self.checkpoints)

    @property
    def compiled(self) -> tuple[str, ...]:
        """The checkpoints that now run from an AOTInductor package (diffusion_core.compiled)."""
        return tuple(n for n, c in self.checkpoints.items() if isinstance(c.model, CompiledModel))

    def models(self) -> list[Checkpoint]:
        """Every model the registry runs: the checkpoints, then their autoguidance guides."""
        return list(self.checkpoints.values()) + [g.checkpoint for g in self.guides.values()]

    def all_compiled(self) -> bool:
        """Does every model run from its packages: the one for any batch and those for static_batches()?"""
        want = set(static_batches())
        return all(isinstance(c.model, CompiledModel) and want <= set(c.model.batches) for c in self.models())

    @property
    def cuda_graphs(self) -> tuple[str, ...]:
        """The checkpoints that run from CUDA graphs (diffusion_core.inference.CUDAGraphModel)."""
        return tuple(n for n, c in self.checkpoints.items() if isinstance(c.model, CUDAGraphModel))

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


# On a ZeroGPU Space each GPU call runs in a forked process that gets the GPU for that call only: a
# CUDA graph captured there would not outlive it, so the models run eagerly.
ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serving_threads(cores: int, server_name: str | None) -> int:
    """The app's torch threads: every core, but one fewer when the app serves this machine only (Gradio's
    default host, 127.0.0.1), where the visitor's browser runs on the same cores.

    An OpenMP pool as wide as the machine stalls whenever another process takes one of its cores: each of
    a model call's parallel regions waits for the descheduled thread. Measured on 2 cores (AMX Xeon,
    session 20; `mnist-linear`, its packages, DDPM-1000 for 4 images guided): served to Chromium on the
    same machine 15.0 to 16.4 s on 2 threads, 8.2 to 9.2 s on 1; to a light client (curl, as a remote
    browser costs the server nothing) 4.1 to 4.5 s on 2 threads, 4.8 s on 1 (docs/speed.md, session 20).
    So a server reachable from elsewhere (a Space sets GRADIO_SERVER_NAME=0.0.0.0) keeps every core.
    """
    local = (server_name or "127.0.0.1") in LOCAL_HOSTS
    return max(1, cores - 1) if local else cores


def app_threads() -> int:
    """$EXPLORER_THREADS, else serving_threads(available cores, $GRADIO_SERVER_NAME)."""
    env = os.environ.get("EXPLORER_THREADS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"EXPLORER_THREADS must be a whole number >= 1, got {env!r}")
        return int(env)
    return serving_threads(available_cores(), os.environ.get("GRADIO_SERVER_NAME"))


def load_registry(directory: str | os.PathLike[str] | None = None, device: str = "auto",
                  precision: str | None = None, compiled: bool | None = None, threads: int | None = None) -> Registry:
    """Choose the device, size the thread pool and load every diffusion checkpoint in `directory`.

    `directory` defaults to $EXPLORER_CHECKPOINTS or ./checkpoints; `precision` to $EXPLORER_PRECISION
    or "auto" (bfloat16 on a CPU that computes it natively: the fastest path that holds quality,
    see bench/sampling.py). On the CPU a checkpoint runs from its AOTInductor package where
    `python -m diffusion_core.compiled` built one for this machine (`compiled`; default: unless
    $EXPLORER_COMPILED is "0"), else eagerly; on a CUDA GPU from CUDA graphs, unless
    $EXPLORER_COMPILED is "0" or this is a ZeroGPU Space. Raises if no checkpoint loads. Runs on the
    torch thread, like every handler (explorer.common.friendly), so that one OS thread does all of
    the app's torch work, with `threads` intra-op threads (default: app_threads()); the calling thread
    and threads started later get one intra-op thread each (TorchThread.confine_others).
    """
    allowed = os.environ.get("EXPLORER_COMPILED", "1") != "0"  # "1" or "use": run packages that exist
    if compiled is None:
        compiled = allowed
    # CUDA graphs need no compiler (nothing to defer, unlike AOTInductor): on unless $EXPLORER_COMPILED is "0".
    cuda_graphs = allowed and not ZERO_GPU
    reg = torch_thread().run(_load_registry, directory, device, precision, compiled, cuda_graphs,
                             threads or app_threads())
    torch_thread().confine_others()
    return reg


def _load_registry(directory: str | os.PathLike[str] | None, device: str, precision: str | None,
                   use_compiled: bool, cuda_graphs: bool, threads: int) -> Registry:
    directory = Path(directory or os.environ.get("EXPLORER_CHECKPOINTS") or DEFAULT_CHECKPOINT_DIR)
    dev = select_device(device)
    threads = set_threads(threads)
    precision = resolve_precision(precision or os.environ.get("EXPLORER_PRECISION", "auto"), dev)
    loaded, skipped, guides = {}, {}, {}

    def ready(ckpt: Checkpoint) -> Checkpoint:
        """ckpt with .model on the execution path: the package where one exists (CPU), else CUDA graphs or eager."""
        ckpt.model = InferenceModel(ckpt.model, precision, num_timesteps=ckpt.schedule.num_timesteps)
        if use_compiled and dev.type == "cpu":
            ckpt.model = load_compiled(ckpt, ckpt.model) or ckpt.model
        elif dev.type == "cuda" and cuda_graphs:  # one launch per model call
            ckpt.model = CUDAGraphModel(ckpt.model)
        return ckpt

    for path in discover_checkpoints(directory):
        try:
            ckpt = loaded[path.name] = ready(load_with_retry(path, dev))
        except CheckpointError as e:
            skipped[path.name] = str(e)
            log.warning("skipping checkpoint %s: %s", path, e)
            continue
        weight = autoguidance_weight(ckpt.card)
        if weight is not None:
            try:  # the guide runs on the path its checkpoint runs on
                guides[ckpt.name] = Guide(ready(load_guide(path, dev)), weight)
            except CheckpointError as e:  # the model still runs, without autoguidance
                skipped[f"{path.name} (autoguidance guide)"] = str(e)
                log.warning("no autoguidance for %s: %s", path, e)
    if not loaded:
        raise RuntimeError(f"no diffusion checkpoint could be loaded from {directory} (skipped: {skipped or 'none found'})")
    # Visitors see the first model by default: MNIST before circles, linear before cosine.
    loaded = dict(sorted(loaded.items(), key=lambda kv: (kv[1].dataset != "mnist",
                                                         kv[1].schedule.config.name != "linear", kv[0])))
    schedules = {name: make_schedule(name, 1000) for name in SCHEDULE_NAMES}
    return Registry(dev, threads, precision, loaded, schedules, skipped, directory, guides)


def compile_in_background(reg: Registry, build: bool = True) -> threading.Thread | None:
    """Run each checkpoint from its AOTInductor package once there is one, without delaying start-up.

    A thread imports Inductor (about 2 s, so not before the first page), switches the checkpoints
    that have a package on this machine, and with `build` runs `python -m diffusion_core.compiled`
    for the rest in a child process at the lowest CPU priority (visitors keep the cores), twice: the
    packages for any batch (25 to 35 s per net), then the ones for the fixed batch sizes of
    diffusion_core.compiled.static_batches (15 to 20 s each), switching after each. Packages are kept per machine
    (diffusion_core.compiled.default_cache_dir), so later starts only load them. CPU only; returns
    the thread, or None when there is nothing to do.
    """
    if reg.device.type != "cpu" or reg.directory is None or reg.all_compiled():
        return None

    def work() -> None:
        import torch._inductor  # noqa: F401  (here, not on the torch thread or before the first page)

        torch_thread().run(_adopt_compiled, reg)
        # Every net's package for any batch first (switched to as soon as they are all built), then the
        # packages for the fixed batch sizes.
        for batches in ([], list(static_batches())):
            if not build or reg.all_compiled():
                return
            cmd = [sys.executable, "-m", "diffusion_core.compiled", "--checkpoints", str(reg.directory),
                   "--precision", reg.precision, "--threads", str(reg.threads), "--background",
                   "--batches", *map(str, batches)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}  # its own tensor work; the packages get --threads
            try:
                done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
            except OSError as e:
                log.warning("could not start the compile: %s", e)
                return
            if done.returncode != 0:
                log.warning("compiling the checkpoints failed; they run eagerly: %s", done.stderr.strip()[-500:])
            torch_thread().run(_adopt_compiled, reg)  # the packages that were built, even if one failed
            if done.returncode != 0:
                return

    thread = threading.Thread(target=work, name="compile-checkpoints", daemon=True)
    thread.start()
    return thread


def _adopt_compiled(reg: Registry) -> None:
    adopted = []
    for ckpt in reg.models():  # the checkpoints and their guides
        now = ckpt.model
        eager = now.eager if isinstance(now, CompiledModel) else now
        if not isinstance(eager, InferenceModel):
            continue
        compiled = load_compiled(ckpt, eager)
        if compiled is not None and not (isinstance(now, CompiledModel) and now.batches == compiled.batches):
            ckpt.model = compiled  # new runs use it; a run in progress holds the model it started with
            adopted.append(f"{ckpt.name}{' (batches ' + ', '.join(map(str, compiled.batches)) + ')' if compiled.batches else ''}")
    if adopted:
        print(f"* Compiled (AOTInductor), used from the next run on: {', '.join(adopted)}", flush=True)


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
