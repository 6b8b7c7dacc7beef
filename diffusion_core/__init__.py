"""diffusion_core: the math and the model of Diffusion Explorer, with no UI in it.

Modules: schedules (NoiseSchedule), forward (q_sample, q_chain, posterior), model (UNet, presets),
samplers (DDPM/DDIM generators of Step records), data, train, checkpoints, sample, evaluate,
classifier, render, runtime (device and threads), cli (dataclass -> argparse).
"""

from .checkpoints import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .forward import predict_eps_from_x0, predict_x0_from_eps, q_chain, q_posterior_mean_variance, q_sample, q_step
from .model import PRESETS, ModelConfig, build_model, preset
from .samplers import (
    SamplerConfig,
    Step,
    ddim_sample_progressive,
    ddpm_sample_progressive,
    initial_noise,
    make_generator,
    sample,
    sample_progressive,
    timestep_pairs,
)
from .schedules import NoiseSchedule, ScheduleConfig, make_schedule

__all__ = [
    "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint",
    "predict_eps_from_x0", "predict_x0_from_eps", "q_chain", "q_posterior_mean_variance", "q_sample", "q_step",
    "PRESETS", "ModelConfig", "build_model", "preset",
    "SamplerConfig", "Step", "ddim_sample_progressive", "ddpm_sample_progressive", "initial_noise",
    "make_generator", "sample", "sample_progressive", "timestep_pairs",
    "NoiseSchedule", "ScheduleConfig", "make_schedule",
]
