"""Small pure helpers behind the explainer app's views: numbers to show, no UI (never imports gradio).

    snr_db(schedule)            10 log10(alpha_bar_t / (1 - alpha_bar_t)) per t         [T]
    strip_timesteps(T)          the timesteps of the forward strip (0, 100, 250, 500, 750, 999 for T = 1000)
    chain_vs_jump(...)          Markov chain (DDPM eq. 2, step by step) vs closed-form jump (eq. 4) at t
    chain_vs_jump_steps(...)    the same as a generator: each chain step s as it is taken, then the result
    normal_pdf(x)               the N(0, 1) density, for the histogram overlay
    step_stats(step)            std of x_t and RMS of the predicted noise, per sampler step
    frame_indices(N, k)         which of N steps to record for the scrub slider (at most k, always the last)
    interleave_by_timestep(..)  run two samplers side by side, always advancing the one at the larger t
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .forward import q_chain, q_sample
from .samplers import Step
from .schedules import NoiseSchedule


def snr_db(schedule: NoiseSchedule) -> torch.Tensor:
    """SNR_t in decibels, 10 log10(alpha_bar_t / (1 - alpha_bar_t)). [T] float64 on the CPU."""
    ab = schedule.alphas_cumprod.double().cpu()
    return 10.0 * torch.log10(ab / (1.0 - ab))


def strip_timesteps(num_timesteps: int) -> list[int]:
    """0, 100, 250, 500, 750, 999 for T = 1000; the same fractions of T otherwise (distinct, in 0..T-1)."""
    fractions = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    ts = [min(num_timesteps - 1, round(f * num_timesteps)) for f in fractions]
    return sorted(set(ts))


def normal_pdf(x: torch.Tensor) -> torch.Tensor:
    """exp(-x^2 / 2) / sqrt(2 pi), elementwise."""
    return torch.exp(-0.5 * x.double() ** 2) / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class ChainJump:
    """Empirical moments of x_t over `num` independent draws, by two routes, and the theory.

    Means and stds are per pixel, then averaged over pixels: mean_* is the pixel-average of
    |E[x_t] - sqrt(alpha_bar_t) x_0| (0 in theory), std_* the pixel-average of std(x_t)
    (sqrt(1 - alpha_bar_t) in theory).
    """

    t: int
    num: int
    chain_mean_err: float
    jump_mean_err: float
    chain_std: float
    jump_std: float
    theory_std: float
    chain_mean_image: torch.Tensor  # [C x H x W]: E[x_t] estimated from the chain
    jump_mean_image: torch.Tensor  # [C x H x W]: E[x_t] estimated from the jump
    theory_mean_image: torch.Tensor  # [C x H x W]: sqrt(alpha_bar_t) x_0


def chain_vs_jump(
    schedule: NoiseSchedule, x0: torch.Tensor, t: int, num: int, generator: torch.Generator
) -> ChainJump:
    """Draw `num` samples of x_t from x0 [C x H x W] both ways and compare their moments.

    The chain applies q(x_s | x_{s-1}) = N(sqrt(alpha_s) x_{s-1}, beta_s I) for s = 0..t (DDPM eq. 2);
    the jump draws q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) at once (eq. 4).
    """
    for item in chain_vs_jump_steps(schedule, x0, t, num, generator):
        pass
    return item


def chain_vs_jump_steps(
    schedule: NoiseSchedule, x0: torch.Tensor, t: int, num: int, generator: torch.Generator
) -> Iterator[int | ChainJump]:
    """`chain_vs_jump` as a generator: yields s after each chain step s = 0..t, then the ChainJump.

    The t + 1 steps on `num` images can take tens of seconds (t = 999 on 1,000 RGB 32x32 images), so a
    server streams them and serves other work between steps.
    """
    if num < 2:
        raise ValueError(f"num must be >= 2 to estimate a std, got {num}")
    if not 0 <= t < schedule.num_timesteps:
        raise ValueError(f"t must lie in 0..{schedule.num_timesteps - 1}, got {t}")
    xs = x0.float().cpu().expand(num, *x0.shape).contiguous()  # [num x C x H x W]
    x_chain = xs
    for s, x_chain in q_chain(schedule, xs, t, generator):
        yield s
    noise = torch.randn(xs.shape, generator=generator)
    x_jump = q_sample(schedule, xs, torch.full((num,), t, dtype=torch.long), noise)
    mean_theory = schedule.sqrt_alphas_cumprod[t].item() * x0.float().cpu()
    yield ChainJump(
        t=t,
        num=num,
        chain_mean_err=(x_chain.mean(0) - mean_theory).abs().mean().item(),
        jump_mean_err=(x_jump.mean(0) - mean_theory).abs().mean().item(),
        chain_std=x_chain.std(0).mean().item(),
        jump_std=x_jump.std(0).mean().item(),
        theory_std=schedule.sqrt_one_minus_alphas_cumprod[t].item(),
        chain_mean_image=x_chain.mean(0),
        jump_mean_image=x_jump.mean(0),
        theory_mean_image=mean_theory,
    )


@dataclass(frozen=True)
class StepStats:
    index: int
    t: int  # the timestep the model saw
    x_std: float  # std of x_{t_prev} over the whole batch
    eps_rms: float  # ||eps_theta|| / sqrt(d), averaged over the batch (about 1 for pure noise)


def step_stats(step: Step) -> StepStats:
    """Per-step statistics plotted under the reverse process."""
    eps = step.eps_pred.float().flatten(1)  # [N x d]
    rms = (eps.norm(dim=1) / math.sqrt(eps.shape[1])).mean().item()
    return StepStats(step.index, step.t, step.x.float().std().item(), rms)


def frame_indices(num_steps: int, max_frames: int) -> set[int]:
    """Indices of at most `max_frames` of `num_steps` steps, evenly spread, always including the first and last."""
    if num_steps < 1 or max_frames < 1:
        raise ValueError(f"need num_steps >= 1 and max_frames >= 1, got {num_steps}, {max_frames}")
    if num_steps <= max_frames:
        return set(range(num_steps))
    if max_frames == 1:
        return {num_steps - 1}
    return {round(k * (num_steps - 1) / (max_frames - 1)) for k in range(max_frames)}


@dataclass
class RunClock:
    """Wall time spent inside one sampler and the number of steps (model calls) it made."""

    seconds: float = 0.0
    steps: int = 0


def interleave_by_timestep(
    a: Iterator[Step], b: Iterator[Step]
) -> Iterator[tuple[int, Step, RunClock, RunClock]]:
    """Advance two samplers together, always stepping the one whose latest x sits at the larger t.

    Both then move from t = T-1 towards t = -1 at the same pace in t, whatever their step counts.
    Yields (which: 0 or 1, that sampler's Step, clock of a, clock of b). Time is measured per sampler.
    Closing this generator closes both samplers.
    """
    gens = [a, b]
    clocks = [RunClock(), RunClock()]
    pos = [math.inf, math.inf]  # t of each sampler's current x (inf: not started)
    try:
        while any(p > -1 for p in pos):
            k = 0 if pos[0] >= pos[1] else 1
            if pos[k] == -1:
                k = 1 - k
            t0 = time.perf_counter()
            step = next(gens[k], None)
            clocks[k].seconds += time.perf_counter() - t0
            if step is None:
                pos[k] = -1
                continue
            clocks[k].steps += 1
            pos[k] = step.t_prev
            yield k, step, clocks[0], clocks[1]
    finally:
        for g in gens:
            close = getattr(g, "close", None)
            if close is not None:
                close()
