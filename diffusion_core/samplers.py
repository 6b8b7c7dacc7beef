"""Reverse-process samplers as generators: each yields one immutable `Step` per model call.

    ddpm   ancestral sampling, Algorithm 2 of Ho et al. (2020); on a strided plan of N < T steps
           it uses the posterior q(x_{t'} | x_t, x_0) between the two visited timesteps
           (Nichol & Dhariwal 2021, section 4, "respacing").
    ddim   Song et al. (2021), eq. 12, with sigma_t(eta) of eq. 16; eta = 0 is deterministic,
           eta = 1 over all T steps is DDPM with sigma_t^2 = beta_tilde_t ("fixed_small").

Notation: x = x_t, x_prev = x_{t'} with t' the next visited timestep (t' = -1 means fully
denoised, alpha_bar_{-1} = 1); eps = eps_theta(x_t, t); x0 = the predicted x_0.

Every sampler has the same signature: (model, schedule, x_T, config, y=None, generator=None).
Timestep pairs (t, t') are computed once by `timestep_pairs`, and the per-pair coefficients
once, in float64, by `plan_coefficients`. Random draws come from an explicit CPU
`torch.Generator` and are moved to x's device, so CPU and GPU see the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, get_args

import torch

from .schedules import NoiseSchedule, check_choice

SamplerName = Literal["ddpm", "ddim"]
Spacing = Literal["linspace", "leading", "trailing"]
Variance = Literal["fixed_small", "fixed_large"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
SPACINGS: tuple[str, ...] = get_args(Spacing)
VARIANCES: tuple[str, ...] = get_args(Variance)
MAX_SEED = 2**63 - 1

# eps_theta(x_t [N x C x H x W], t [N] long, y [N] long or None) -> [N x C x H x W]
EpsModel = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    sampler: SamplerName = "ddim"  # "ddpm" (ancestral) or "ddim"
    steps: int = 50  # number of model calls N, 1..T; DDPM usually uses N = T
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 = DDPM-like noise (Song et al. eq. 16)
    spacing: Spacing = "trailing"  # how N timesteps are picked from 0..T-1 (see ddim_timesteps)
    variance: Variance = "fixed_small"  # DDPM only: beta_tilde_t ("fixed_small") or beta_t ("fixed_large")
    clip_x0: bool = True  # clamp the predicted x_0 to [-1, 1] before each update
    guidance: float = 1.0  # classifier-free guidance scale w: eps_u + w (eps_c - eps_u); 1 = plain conditional

    def __post_init__(self) -> None:
        check_choice("sampler", self.sampler, SAMPLER_NAMES)
        check_choice("timestep spacing", self.spacing, SPACINGS)
        check_choice("DDPM variance", self.variance, VARIANCES)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {self.eta!r}")
        if not (isinstance(self.guidance, (int, float)) and math.isfinite(self.guidance) and self.guidance >= 0.0):
            raise ValueError(f"guidance scale must be a finite number >= 0, got {self.guidance!r}")

    def check_steps(self, num_timesteps: int) -> None:
        if not 1 <= self.steps <= num_timesteps:
            raise ValueError(f"steps must lie in 1..{num_timesteps} (the schedule's T), got {self.steps}")


@dataclass(frozen=True)
class Step:
    """What one sampler step produced. Tensors are [N x C x H x W] on the sampling device."""

    index: int  # 0-based count of this step
    num_steps: int  # total steps in the plan
    t: int  # timestep the model saw
    t_prev: int  # timestep of x after the update; -1 = fully denoised
    x: torch.Tensor  # x_{t_prev}, the sample after this step
    x0_pred: torch.Tensor  # predicted x_0 (after clipping, if on)
    eps_pred: torch.Tensor  # predicted noise eps_theta(x_t, t) (guided; recomputed from the clipped x_0 in DDIM)


def ddim_timesteps(num_timesteps: int, steps: int, spacing: Spacing) -> list[int]:
    """The N visited timesteps, descending, by the definitions of Lin et al. (2024), table 2:

    linspace  round(linspace(0, T-1, N)), reversed            (from T-1 down to 0)
    leading   k * floor(T/N) for k = N-1..0                    (DDIM's uniform skip, exactly when N divides T)
    trailing  round(T - k T/N) - 1 for k = 0..N-1              (from T-1 down to T/N - 1)
    """
    check_choice("timestep spacing", spacing, SPACINGS)
    T, N = num_timesteps, steps
    if not 1 <= N <= T:
        raise ValueError(f"steps must lie in 1..{T} (the schedule's T), got {N}")
    if spacing == "linspace":
        ts = [round(Fraction(k * (T - 1), N - 1)) for k in range(N)] if N > 1 else [0]
    elif spacing == "leading":
        ts = [k * (T // N) for k in range(N)]
    else:
        ts = [round(Fraction(T * (N - k), N)) - 1 for k in range(N)]
    return sorted(ts, reverse=True)


def timestep_pairs(num_timesteps: int, steps: int, spacing: Spacing) -> list[tuple[int, int]]:
    """[(t, t_prev), ...] in sampling order; the last t_prev is -1, where alpha_bar = 1."""
    ts = ddim_timesteps(num_timesteps, steps, spacing)
    return list(zip(ts, ts[1:] + [-1]))


@dataclass(frozen=True)
class PairCoefficients:
    """Scalars for one update from t to t_prev, computed in float64 (Python floats)."""

    t: int
    t_prev: int
    alpha_bar: float  # alpha_bar_t
    alpha_bar_prev: float  # alpha_bar_{t'}; 1 for t' = -1
    beta: float  # 1 - alpha_bar_t / alpha_bar_{t'}: the effective beta of the jump t' -> t
    posterior_variance: float  # beta_tilde = (1 - ab_{t'}) / (1 - ab_t) * beta
    posterior_mean_coef1: float  # sqrt(ab_{t'}) beta / (1 - ab_t)        (times x_0)
    posterior_mean_coef2: float  # sqrt(1 - beta) (1 - ab_{t'}) / (1 - ab_t) (times x_t)


def plan_coefficients(schedule: NoiseSchedule, pairs: list[tuple[int, int]]) -> list[PairCoefficients]:
    """Per-pair coefficients from the schedule's (float32) betas, computed in float64:
    log alpha_bar_t = sum_{s<=t} log(1 - beta_s)."""
    T = schedule.num_timesteps
    for t, t_prev in pairs:
        if not (0 <= t < T and -1 <= t_prev < t):
            raise ValueError(f"invalid timestep pair ({t}, {t_prev}) for T = {T}")
    log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log1p(-schedule.betas.double().cpu()).cumsum(0)])
    out = []
    for t, t_prev in pairs:
        la, la_prev = log_ab[t + 1].item(), log_ab[t_prev + 1].item()  # index shifted: log_ab[k+1] = log ab_k
        ab, ab_prev = math.exp(la), math.exp(la_prev)
        one_minus_ab, one_minus_ab_prev = -math.expm1(la), -math.expm1(la_prev)
        beta = -math.expm1(la - la_prev)
        out.append(
            PairCoefficients(
                t=t,
                t_prev=t_prev,
                alpha_bar=ab,
                alpha_bar_prev=ab_prev,
                beta=beta,
                posterior_variance=one_minus_ab_prev / one_minus_ab * beta,
                posterior_mean_coef1=math.sqrt(ab_prev) * beta / one_minus_ab,
                posterior_mean_coef2=math.sqrt(1.0 - beta) * one_minus_ab_prev / one_minus_ab,
            )
        )
    return out


def x0_from_eps(c: PairCoefficients, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) (DDPM eq. 4 inverted)."""
    return (x - math.sqrt(1.0 - c.alpha_bar) * eps) / math.sqrt(c.alpha_bar)


def eps_from_x0(c: PairCoefficients, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t)."""
    return (x - math.sqrt(c.alpha_bar) * x0) / math.sqrt(1.0 - c.alpha_bar)


def ddpm_update(
    c: PairCoefficients, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None,
    variance: Variance = "fixed_small", clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step (DDPM Algorithm 2 via eq. 7): x_{t'} = mu_tilde(x_t, x_0) + sigma z.

    sigma^2 = beta_tilde ("fixed_small") or beta ("fixed_large"); no noise on the last step (t' = -1).
    :param x, eps, noise: [N x ...]; noise may be None only on the last step.
    :return: (x_{t'}, x_0 prediction), each [N x ...].
    """
    x0 = x0_from_eps(c, x, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean = c.posterior_mean_coef1 * x0 + c.posterior_mean_coef2 * x
    if c.t_prev < 0:
        return mean, x0
    var = c.posterior_variance if variance == "fixed_small" else c.beta
    assert noise is not None, "DDPM needs noise on every step but the last"
    return mean + math.sqrt(var) * noise, x0


def ddim_sigma(c: PairCoefficients, eta: float) -> float:
    """sigma_t(eta) = eta sqrt((1 - ab_{t'}) / (1 - ab_t)) sqrt(1 - ab_t / ab_{t'}) (DDIM eq. 16)."""
    return eta * math.sqrt(c.posterior_variance)


def ddim_update(
    c: PairCoefficients, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None,
    eta: float = 0.0, clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_{t'} = sqrt(ab_{t'}) x_0 + sqrt(1 - ab_{t'} - sigma^2) eps + sigma z (DDIM eq. 12).

    With clipping, eps is recomputed from the clipped x_0 so that both terms agree (improved-diffusion).
    :return: (x_{t'}, x_0 prediction, eps actually used), each [N x ...].
    """
    x0 = x0_from_eps(c, x, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = eps_from_x0(c, x, x0)
    sigma = ddim_sigma(c, eta)
    x_prev = math.sqrt(c.alpha_bar_prev) * x0 + math.sqrt(max(1.0 - c.alpha_bar_prev - sigma**2, 0.0)) * eps
    if sigma > 0.0:
        assert noise is not None, "DDIM with eta > 0 needs noise"
        x_prev = x_prev + sigma * noise
    return x_prev, x0, eps


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (0 <= seed <= 2^63 - 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(seed)


def randn_like_cpu(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of x's shape, drawn on the CPU in float32, moved to x's device and dtype."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def initial_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """x_T ~ N(0, I), drawn on the CPU so every device starts from the same x_T. [N x C x H x W] float32."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def check_labels(model: object, y: torch.Tensor | None) -> None:
    """Raise if labels are given to an unconditional model or fall outside 0..num_classes-1."""
    if y is None:
        return
    num_classes = getattr(getattr(model, "cfg", None), "num_classes", 0)
    if num_classes == 0:
        raise ValueError("this model is unconditional: it takes no class label (pass no label)")
    if y.dtype not in (torch.int64, torch.int32) or y.ndim != 1:
        raise ValueError(f"labels must be a 1-D integer tensor, got dtype {y.dtype} and shape {tuple(y.shape)}")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.numel():
        raise ValueError(f"label {int(bad[0])} is outside the model's classes 0..{num_classes - 1}")


def guided_eps(
    model: EpsModel, x: torch.Tensor, t: int, y: torch.Tensor | None, guidance: float
) -> torch.Tensor:
    """eps_theta(x_t, t, y), with classifier-free guidance eps_u + w (eps_c - eps_u) at scale w = `guidance`
    (diffusers' guidance_scale): Ho & Salimans (2022) eq. 6, (1 + w') eps_c - w' eps_u, with their w' = w - 1.

    Both branches run as one batch of 2N. Without labels, the model's unconditional output.
    """
    n = x.shape[0]
    tt = torch.full((n,), t, dtype=torch.long, device=x.device)
    if y is None or guidance == 1.0:
        return model(x, tt, y).to(x.dtype)
    null = torch.full_like(y, model.cfg.null_label)  # type: ignore[attr-defined]
    if guidance == 0.0:
        return model(x, tt, null).to(x.dtype)
    out = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null])).to(x.dtype)
    eps_c, eps_u = out[:n], out[n:]
    return eps_u + guidance * (eps_c - eps_u)


class AutoGuided(torch.nn.Module):
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", eq. 2).

    The paper extrapolates the denoiser away from a guide D_0, a smaller and shorter-trained model of
    the same data and noise schedule: D_w(x; t) = w D_1(x; t) + (1 - w) D_0(x; t). At fixed x_t and t
    the denoiser x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) is affine in eps, so in eps:
        eps_w(x_t, t) = eps_0(x_t, t) + w (eps_1(x_t, t) - eps_0(x_t, t)),
    and every sampler runs unchanged on this eps model. w = 1 is the model alone (the guide is not called),
    w > 1 guides; w = 0 is the guide alone (the model is not called) and 0 < w < 1 interpolates towards
    it, which is how the app shows a visitor what the guide gets wrong. Unlike classifier-free guidance
    it needs no label: it guides unconditional sampling (our guides are trained without labels, so
    labelled calls raise). `model(x, t, None)` runs a class-conditional model on its null label.
    """

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, weight: float) -> None:
        super().__init__()
        if not math.isfinite(weight) or weight < 0.0:
            raise ValueError(f"the autoguidance weight w must be a finite number >= 0 (0 = the guide alone, "
                             f"1 = the model alone), got {weight}")
        self.model, self.guide, self.weight = model, guide, weight
        self.cfg = getattr(model, "cfg", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [N x C x H x W], t [N] -> eps_w [N x C x H x W]."""
        if y is not None:
            raise ValueError("autoguidance guides unconditional sampling only (the guide takes no label); "
                             "for a chosen digit use classifier-free guidance")
        if self.weight == 0.0:
            return self.guide(x, t, None)
        eps_1 = self.model(x, t, None)
        if self.weight == 1.0:
            return eps_1
        eps_0 = self.guide(x, t, None).to(eps_1.dtype)
        return eps_0 + self.weight * (eps_1 - eps_0)


def _plan(schedule: NoiseSchedule, config: SamplerConfig) -> list[PairCoefficients]:
    config.check_steps(schedule.num_timesteps)
    return plan_coefficients(schedule, timestep_pairs(schedule.num_timesteps, config.steps, config.spacing))


def ddpm_sample_progressive(
    model: EpsModel, schedule: NoiseSchedule, x_T: torch.Tensor, config: SamplerConfig,
    y: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> Iterator[Step]:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), yielding every step."""
    check_labels(model, y)
    plan = _plan(schedule, config)
    x = x_T
    for i, c in enumerate(plan):
        eps = guided_eps(model, x, c.t, y, config.guidance)
        noise = randn_like_cpu(x, generator) if c.t_prev >= 0 else None
        x, x0 = ddpm_update(c, x, eps, noise, config.variance, config.clip_x0)
        yield Step(i, len(plan), c.t, c.t_prev, x, x0, eps)


def ddim_sample_progressive(
    model: EpsModel, schedule: NoiseSchedule, x_T: torch.Tensor, config: SamplerConfig,
    y: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> Iterator[Step]:
    """DDIM sampling (Song et al. 2021, eq. 12), yielding every step; noise is drawn only where sigma > 0."""
    check_labels(model, y)
    plan = _plan(schedule, config)
    x = x_T
    for i, c in enumerate(plan):
        eps = guided_eps(model, x, c.t, y, config.guidance)
        noise = randn_like_cpu(x, generator) if ddim_sigma(c, config.eta) > 0.0 else None
        x, x0, eps = ddim_update(c, x, eps, noise, config.eta, config.clip_x0)
        yield Step(i, len(plan), c.t, c.t_prev, x, x0, eps)


SAMPLERS: dict[str, Callable[..., Iterator[Step]]] = {
    "ddpm": ddpm_sample_progressive,
    "ddim": ddim_sample_progressive,
}


def sample_progressive(
    model: EpsModel, schedule: NoiseSchedule, x_T: torch.Tensor, config: SamplerConfig,
    y: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> Iterator[Step]:
    """Dispatch on config.sampler. Run under torch.inference_mode() (the generators don't impose it)."""
    return SAMPLERS[config.sampler](model, schedule, x_T, config, y, generator)


def sample(
    model: EpsModel, schedule: NoiseSchedule, x_T: torch.Tensor, config: SamplerConfig,
    y: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Drain the sampler and return the final x_{-1}, i.e. the denoised samples [N x C x H x W]."""
    x = x_T
    for step in sample_progressive(model, schedule, x_T, config, y, generator):
        x = step.x
    return x
