"""Noise schedules: the beta_t sequence and everything derived from it, as one immutable value.

Notation (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "Improved DDPM"):

    code                        paper
    betas[t]                    beta_t            variance of q(x_t | x_{t-1})
    alphas[t]                   alpha_t = 1 - beta_t
    alphas_cumprod[t]           alpha_bar_t = prod_{s<=t} alpha_s
    alphas_cumprod_prev[t]      alpha_bar_{t-1}   (alpha_bar_{-1} = 1)
    posterior_variance[t]       beta_tilde_t      DDPM eq. 7
    posterior_mean_coef1/2[t]   coefficients of x_0 and x_t in mu_tilde_t, DDPM eq. 7
    snr[t]                      alpha_bar_t / (1 - alpha_bar_t)

Timesteps are 0-based: t = 0 .. T-1, where t = 0 is the first noising step (the paper's t = 1).
Everything is computed once in float64 and stored in float32. Nothing here touches a UI.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

ScheduleName = Literal["linear", "cosine"]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)


@dataclass(frozen=True)
class ScheduleConfig:
    """How to build a NoiseSchedule; stored in every checkpoint."""

    name: ScheduleName = "linear"  # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal)
    num_timesteps: int = 1000  # T, the number of diffusion steps
    beta_start: float = 1e-4  # linear only: beta at t = 0
    beta_end: float = 0.02  # linear only: beta at t = T-1
    cosine_s: float = 0.008  # cosine only: offset s that keeps beta_0 from being tiny
    max_beta: float = 0.999  # cosine only: betas are clipped here to avoid a singularity at t = T

    def __post_init__(self) -> None:
        check_choice("schedule", self.name, SCHEDULE_NAMES)
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer, got {self.num_timesteps!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        if not 0.0 < self.max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1), got {self.max_beta}")
        if self.cosine_s < 0.0:
            raise ValueError(f"cosine_s must be >= 0, got {self.cosine_s}")


def check_choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise ValueError naming the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(repr(a) for a in allowed)}")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linearly spaced betas (DDPM, section 4). Returns [T] float64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """f(u) = cos^2(((u + s) / (1 + s)) * pi/2) for u = t/T in [0, 1] (Improved DDPM, eq. 17, unnormalised)."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), max_beta) (Improved DDPM, section 3.2). Returns [T] float64."""
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = cosine_alpha_bar(u, s)
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


_FIELDS = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "snr",
)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """All per-timestep coefficients of a diffusion process, each a [T] float32 tensor.

    Build one with `NoiseSchedule.from_config(cfg)` or `make_schedule("cosine")`; the
    constructor checks shapes and monotonicity. `.to(device)` returns a new schedule.
    """

    config: ScheduleConfig
    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor  # 1/sqrt(alpha_bar_t), for x0 = (x_t - sqrt(1-ab) eps)/sqrt(ab)
    sqrt_recipm1_alphas_cumprod: torch.Tensor  # sqrt(1/alpha_bar_t - 1)
    posterior_variance: torch.Tensor  # beta_tilde_t = beta_t (1 - ab_{t-1}) / (1 - ab_t); 0 at t = 0
    posterior_log_variance_clipped: torch.Tensor  # log beta_tilde_t with t = 0 replaced by t = 1 (finite)
    posterior_mean_coef1: torch.Tensor  # sqrt(ab_{t-1}) beta_t / (1 - ab_t)       (times x_0)
    posterior_mean_coef2: torch.Tensor  # sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t)  (times x_t)
    snr: torch.Tensor  # alpha_bar_t / (1 - alpha_bar_t)

    def __post_init__(self) -> None:
        T = self.config.num_timesteps
        for name in _FIELDS:
            v = getattr(self, name)
            if not isinstance(v, torch.Tensor) or v.shape != (T,):
                raise ValueError(f"schedule field {name} must be a tensor of shape ({T},), got {getattr(v, 'shape', v)}")
        ab = self.alphas_cumprod
        if T > 1 and not bool((ab[1:] < ab[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @classmethod
    def from_betas(cls, config: ScheduleConfig, betas: torch.Tensor) -> "NoiseSchedule":
        """Derive every coefficient from betas ([T], computed in float64, stored as float32)."""
        b = betas.to(torch.float64)
        a = 1.0 - b
        ab = torch.cumprod(a, dim=0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        post_var = b * (1.0 - ab_prev) / (1.0 - ab)
        # beta_tilde_0 = 0; its log is clipped to beta_tilde_1 as in improved-diffusion.
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(b) > 1 else torch.log(b)
        d = dict(
            betas=b,
            alphas=a,
            alphas_cumprod=ab,
            alphas_cumprod_prev=ab_prev,
            sqrt_alphas_cumprod=ab.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - ab).sqrt(),
            sqrt_recip_alphas_cumprod=(1.0 / ab).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / ab - 1.0).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_logvar,
            posterior_mean_coef1=b * ab_prev.sqrt() / (1.0 - ab),
            posterior_mean_coef2=(1.0 - ab_prev) * a.sqrt() / (1.0 - ab),
            snr=ab / (1.0 - ab),
        )
        return cls(config=config, **{k: v.to(torch.float32) for k, v in d.items()})

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> "NoiseSchedule":
        if config.name == "linear":
            betas = linear_betas(config.num_timesteps, config.beta_start, config.beta_end)
        else:
            betas = cosine_betas(config.num_timesteps, config.cosine_s, config.max_beta)
        return cls.from_betas(config, betas)

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """A copy with every tensor on `device` (the config is shared)."""
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in _FIELDS})

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t for integer t in -1..T-1, where alpha_bar_{-1} = 1 (the fully denoised end). Shape of t."""
        ab = torch.cat([torch.ones(1, dtype=self.alphas_cumprod.dtype, device=self.device), self.alphas_cumprod])
        return ab[t.to(self.device).long() + 1]


def make_schedule(name: ScheduleName = "linear", num_timesteps: int = 1000, **kwargs: float) -> NoiseSchedule:
    """Shortcut: `make_schedule("cosine", 1000)`."""
    return NoiseSchedule.from_config(ScheduleConfig(name=name, num_timesteps=num_timesteps, **kwargs))


def extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Gather a[t] for a batch of timesteps and reshape to broadcast against x.

    :param a: [T] per-timestep coefficients.
    :param t: [N] integer timesteps (or a 0-d tensor, broadcast to all N).
    :param x_shape: shape [N x C x ...] of the tensor the result multiplies.
    :return: [N x 1 x 1 x ...] (or [1 x 1 x ...] for scalar t), on a's device.
    """
    out = a.gather(0, t.to(a.device).long().reshape(-1))
    return out.reshape(out.shape[0], *([1] * (len(x_shape) - 1)))
