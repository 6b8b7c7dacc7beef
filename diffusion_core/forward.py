"""The forward (noising) process q: the closed-form jump and the step-by-step Markov chain.

    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)     DDPM eq. 4
    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)                DDPM eq. 2
    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)                 DDPM eqs. 6-7

Pure functions of tensors; shapes are documented as [N x C x H x W] but any [N x ...] works.
x0 is always the clean data; timesteps are 0-based as in schedules.py (t = 0 is the paper's t = 1),
so the state after the first noising step is x_t with t = 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .schedules import NoiseSchedule, extract


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in closed form: sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps (DDPM eq. 4).

    :param x0: [N x C x H x W] clean data in [-1, 1].
    :param t: [N] integer timesteps in 0..T-1.
    :param noise: [N x C x H x W] standard normal eps.
    :return: [N x C x H x W] x_t.
    """
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0.shape).to(x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape).to(x0) * noise
    )


def q_mean_variance(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [N x ...] and variance [N x 1 x ...] of q(x_t | x_0) (DDPM eq. 4)."""
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0.shape).to(x0) * x0
    var = (1.0 - extract(schedule.alphas_cumprod, t, x0.shape)).to(x0)
    return mean, var


def q_step(schedule: NoiseSchedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One Markov step x_t ~ q(x_t | x_{t-1}) = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps (DDPM eq. 2).

    :param x_prev: [N x ...] the previous state x_{t-1}; the clean data x0 when t = 0.
    :param t: [N] timesteps of the result.
    :param noise: [N x ...] standard normal.
    """
    return (
        extract(schedule.alphas, t, x_prev.shape).to(x_prev).sqrt() * x_prev
        + extract(schedule.betas, t, x_prev.shape).to(x_prev).sqrt() * noise
    )


def q_chain(
    schedule: NoiseSchedule, x0: torch.Tensor, t_end: int, generator: torch.Generator | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Run the Markov chain from the clean data x0 one q_step at a time, yielding (t, x_t) for t = 0..t_end.

    Its marginal at t equals q_sample's (same mean sqrt(ab_t) x_0, same variance 1 - ab_t): the app
    shows this side by side. Noise is drawn on the CPU from `generator`, then moved to x0's device.
    """
    if not 0 <= t_end < schedule.num_timesteps:
        raise ValueError(f"t_end must lie in 0..{schedule.num_timesteps - 1}, got {t_end}")
    x = x0
    for t in range(t_end + 1):
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x = q_step(schedule, x, torch.full((x0.shape[0],), t, dtype=torch.long), noise)
        yield t, x


def q_posterior_mean_variance(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean mu_tilde_t(x_t, x_0), variance beta_tilde_t and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 7).

    :return: ([N x ...], [N x 1 x ...], [N x 1 x ...]).
    """
    mean = (
        extract(schedule.posterior_mean_coef1, t, x_t.shape).to(x_t) * x0
        + extract(schedule.posterior_mean_coef2, t, x_t.shape).to(x_t) * x_t
    )
    var = extract(schedule.posterior_variance, t, x_t.shape).to(x_t)
    logvar = extract(schedule.posterior_log_variance_clipped, t, x_t.shape).to(x_t)
    return mean, var, logvar


def predict_x0_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), inverting DDPM eq. 4. Shapes [N x ...]."""
    return (
        extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape).to(x_t) * x_t
        - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape).to(x_t) * eps
    )


def predict_eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t / sqrt(ab_t) - x_0) / sqrt(1/ab_t - 1), the inverse of predict_x0_from_eps. Shapes [N x ...]."""
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape).to(x_t) * x_t - x0) / extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape
    ).to(x_t)
