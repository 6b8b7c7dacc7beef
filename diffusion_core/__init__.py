"""diffusion_core: the math and the model of Diffusion Explorer, with no UI in it.

Modules: schedules (NoiseSchedule), forward (q_sample, q_chain, posterior), model (UNet, presets),
samplers (DDPM/DDIM generators of Step records), data, train, checkpoints, sample, evaluate,
classifier, render, runtime (device and threads), allocator (the process's malloc), cli
(dataclass -> argparse).

The names below are imported on first use (PEP 562), so that importing the package, or its
torch-free `allocator`, does not import torch: a command may still re-execute itself first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "checkpoints": ("Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"),
    "forward": ("predict_eps_from_x0", "predict_x0_from_eps", "q_chain", "q_posterior_mean_variance", "q_sample",
                "q_step"),
    "model": ("PRESETS", "ModelConfig", "build_model", "preset"),
    "samplers": ("SamplerConfig", "Step", "ddim_sample_progressive", "ddpm_sample_progressive", "initial_noise",
                 "make_generator", "sample", "sample_progressive", "timestep_pairs"),
    "schedules": ("NoiseSchedule", "ScheduleConfig", "make_schedule"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .checkpoints import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    from .forward import (predict_eps_from_x0, predict_x0_from_eps, q_chain, q_posterior_mean_variance, q_sample,
                          q_step)
    from .model import PRESETS, ModelConfig, build_model, preset
    from .samplers import (SamplerConfig, Step, ddim_sample_progressive, ddpm_sample_progressive, initial_noise,
                           make_generator, sample, sample_progressive, timestep_pairs)
    from .schedules import NoiseSchedule, ScheduleConfig, make_schedule
