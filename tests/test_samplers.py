"""Samplers: agreement with diffusers' DDPMScheduler/DDIMScheduler, and the properties of the paper."""

from __future__ import annotations

import math

import diffusers  # the independent reference; pinned in requirements-test.txt, so never skipped
import pytest
import torch

from diffusion_core.samplers import (
    AutoGuided,
    SamplerConfig,
    ddim_timesteps,
    ddim_update,
    ddpm_update,
    guided_eps,
    initial_noise,
    make_generator,
    plan_coefficients,
    randn_like_cpu,
    sample,
    sample_progressive,
    timestep_pairs,
)
from diffusion_core.schedules import make_schedule

DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
SHAPE = (4, 1, 8, 8)
TOL = 1e-5


def ddim_scheduler(name: str, spacing: str = "leading", clip: bool = False):
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[name],
                                   clip_sample=clip, set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing)


def ddpm_scheduler(name: str, variance: str = "fixed_small", clip: bool = False):
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[name],
                                   clip_sample=clip, variance_type=variance)


# --- timestep plans ---------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 333, 999, 1000])
def test_timesteps_match_diffusers_set_timesteps(spacing: str, steps: int) -> None:
    s = ddim_scheduler("linear", spacing)
    s.set_timesteps(steps)
    assert ddim_timesteps(1000, steps, spacing) == s.timesteps.tolist()


def test_timesteps_follow_their_definitions() -> None:
    assert ddim_timesteps(1000, 10, "leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ddim_timesteps(1000, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(1000, 10, "linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert ddim_timesteps(1000, 1000, "leading") == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 1000, "trailing") == list(range(999, -1, -1))
    for spacing in ("linspace", "leading", "trailing"):
        for n in (1, 3, 20, 64, 1000):
            ts = ddim_timesteps(1000, n, spacing)
            assert len(ts) == n and len(set(ts)) == n and all(0 <= t < 1000 for t in ts)
            assert ts == sorted(ts, reverse=True)


def test_pairs_end_fully_denoised() -> None:
    for spacing in ("linspace", "leading", "trailing"):
        pairs = timestep_pairs(1000, 25, spacing)
        assert pairs[-1][1] == -1
        assert all(a[1] == b[0] for a, b in zip(pairs, pairs[1:]))


# --- single updates against diffusers ---------------------------------------------------------

def exact_alphas_cumprod(name: str) -> torch.Tensor:
    """alpha_bar_t in float64, from the betas as our plan computes it (diffusers keeps a float32 cumprod)."""
    return torch.log1p(-make_schedule(name).betas.double()).cumsum(0).exp()


@pytest.fixture
def same_draws(monkeypatch):
    """Make diffusers draw its noise as we do (float32 on the CPU from the generator, then cast), so that
    float64 runs of both see the same random numbers."""
    from diffusers.schedulers import scheduling_ddim, scheduling_ddpm

    def randn_tensor(shape, generator=None, device=None, dtype=None, **_):
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", randn_tensor)
    monkeypatch.setattr(scheduling_ddim, "randn_tensor", randn_tensor)


def realistic_inputs(sched, t: int, g: torch.Generator, dtype=torch.float32):
    """x_t = q_sample(x_0, t, eps) for x_0 in [-1, 1], and a noise prediction that is off by a little."""
    x0 = torch.rand(SHAPE, generator=g) * 2 - 1
    eps = torch.randn(SHAPE, generator=g)
    ab = sched.alphas_cumprod[t].double()
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    eps_pred = eps + 0.05 * torch.randn(SHAPE, generator=g)
    return x_t.to(dtype), eps_pred.to(dtype), torch.randn(SHAPE, generator=g).to(dtype)


# Two kinds of comparison:
# - float32, diffusers with its own float32 schedule, realistic inputs: what a user sees, to <= 1e-5.
# - float64, both given the same alpha_bar: the math itself, to <= 1e-8 (relative where x is large). This covers the cases that
#   are ill-conditioned in float32 whoever computes them (clipped x_0, whose eps is recomputed by
#   dividing by sqrt(1 - ab_t) ~ 0.01 at small t; the unclipped x_0 = x_t / sqrt(ab_t) with
#   ab_999 ~ 1e-9 for cosine), where a 1-ulp difference in alpha_bar moves x by more than 1e-5.


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_update_matches_diffusers_float32(name: str, eta: float, clip: bool) -> None:
    """Same x_t, eps and noise: our update equals DDIMScheduler.step at every (t, t - T//N) of 50 'leading' steps.

    x_{t'} agrees to 1e-5. The predicted x_0 agrees to the float32 rounding of its formula, which grows as
    1 / sqrt(alpha_bar_t) (x0_tolerance): near t = T, x_t - sqrt(1 - ab_t) eps cancels almost to zero, and
    the last bits depend on the CPU and torch build: on a Xeon with torch 2.11 (bench/gpu.sh's machine)
    x_0 differed by 2.6e-5 at t = 960 (linear) and 1.6e-5 at t = 980 (cosine), over a flat 1e-5 but an
    eighth of this bound; on an EPYC with torch 2.13 by under 6e-6.
    """
    sched = make_schedule(name)
    ref = ddim_scheduler(name, "leading", clip)
    ref.set_timesteps(50)  # 'leading' spacing: the only one where diffusers' prev_t = t - T//N is right
    g = torch.Generator().manual_seed(0)
    for c in plan_coefficients(sched, timestep_pairs(1000, 50, "leading")):
        x, eps, z = realistic_inputs(sched, c.t, g)
        ours, x0, _ = ddim_update(c, x, eps, z, eta, clip)
        theirs = ref.step(eps, c.t, x, eta=eta, use_clipped_model_output=True, variance_noise=z)
        torch.testing.assert_close(ours, theirs.prev_sample, atol=TOL, rtol=0)
        err = (x0 - theirs.pred_original_sample).abs()
        bound = x0_tolerance(x, eps, c.alpha_bar)
        assert (err <= bound).all(), f"t={c.t}: |x0 diff| {err.max():.2e} over its float32 bound {bound.min():.2e}"


def x0_tolerance(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Elementwise float32 error allowance for x_0 = (x - sqrt(1 - ab) eps) / sqrt(ab): 1e-5, plus 4 ulps
    of |x| + |eps| (the operands of the subtraction) magnified by the division by sqrt(ab)."""
    return TOL + 4 * torch.finfo(torch.float32).eps * (x.abs() + eps.abs()) / math.sqrt(alpha_bar)


def test_x0_tolerance_is_tight_where_the_formula_is_well_conditioned() -> None:
    x, eps = torch.ones(3), torch.ones(3)
    assert x0_tolerance(x, eps, 0.9999).max() < 1.2e-5  # small t: barely over the flat 1e-5
    assert x0_tolerance(x, eps, 4.4e-5).max() > 1e-4  # t = 980, linear: x_t is almost all noise


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_update_matches_diffusers_float32(name: str, variance: str, clip: bool, same_draws) -> None:
    """Our float32 DDPM step is within 1e-5 of DDPMScheduler.step computed exactly (float64, same alpha_bar).

    diffusers' own float32 step is not: at t = 1, 2 it forms 1 - alpha_bar_{t-1} = 1 - 0.9999 by float32
    subtraction (relative error ~6e-4) and lands up to 8e-5 away; we use expm1 in float64. Elsewhere
    the two float32 steps agree to 1e-5, which the loop below also checks.
    """
    sched = make_schedule(name)
    ref32 = ddpm_scheduler(name, variance, clip)
    ref64 = ddpm_scheduler(name, variance, clip)
    ref64.alphas_cumprod = exact_alphas_cumprod(name)
    ref32.set_timesteps(1000)
    ref64.set_timesteps(1000)
    g = torch.Generator().manual_seed(1)
    plan = plan_coefficients(sched, timestep_pairs(1000, 1000, "leading"))
    for c in plan[::37] + plan[-3:]:
        x, eps, _ = realistic_inputs(sched, c.t, g)
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
        ours, _ = ddpm_update(c, x, eps, z if c.t_prev >= 0 else None, variance, clip)
        exact = ref64.step(eps.double(), c.t, x.double(), generator=torch.Generator().manual_seed(seed)).prev_sample
        torch.testing.assert_close(ours.double(), exact, atol=TOL, rtol=0)
        if c.t > 2:
            theirs = ref32.step(eps, c.t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
            torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


def _diffusers_loop(ref, model, x, seed: int, **step_kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    for t in ref.timesteps:
        eps = model(x, torch.full((x.shape[0],), int(t)))
        x = ref.step(eps, t, x, generator=g, **step_kw).prev_sample
    return x


def _x_T(seed: int) -> torch.Tensor:
    return initial_noise(SHAPE, make_generator(seed)).double()


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("leading", 1000), ("trailing", 1000)])
@pytest.mark.parametrize("eta,clip", [(0.0, False), (0.0, True), (0.6, True), (1.0, False)])
def test_ddim_loop_matches_diffusers_float64(name, spacing, steps, eta, clip, fake_eps, same_draws) -> None:
    ref = ddim_scheduler(name, spacing, clip)
    ref.alphas_cumprod = exact_alphas_cumprod(name)
    ref.set_timesteps(steps)
    x_T = _x_T(3)
    theirs = _diffusers_loop(ref, fake_eps, x_T, seed=7, eta=eta, use_clipped_model_output=True)
    cfg = SamplerConfig("ddim", steps=steps, eta=eta, spacing=spacing, clip_x0=clip)
    ours = sample(fake_eps, make_schedule(name), x_T, cfg, generator=make_generator(7))
    torch.testing.assert_close(ours, theirs, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1000, 100])
@pytest.mark.parametrize("variance,clip", [("fixed_small", False), ("fixed_large", False), ("fixed_small", True)])
def test_ddpm_loop_matches_diffusers_float64(name, steps, variance, clip, fake_eps, same_draws) -> None:
    """DDPM over all T steps, and over 100 'leading' steps with the posterior between visited timesteps."""
    ref = ddpm_scheduler(name, variance, clip)
    ref.alphas_cumprod = exact_alphas_cumprod(name)
    ref.set_timesteps(steps)
    x_T = _x_T(4)
    theirs = _diffusers_loop(ref, fake_eps, x_T, seed=9)
    cfg = SamplerConfig("ddpm", steps=steps, spacing="leading", variance=variance, clip_x0=clip)
    ours = sample(fake_eps, make_schedule(name), x_T, cfg, generator=make_generator(9))
    torch.testing.assert_close(ours, theirs, atol=1e-8, rtol=1e-8)


# --- properties ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_eta1_over_all_steps_is_ddpm(name: str, fake_eps) -> None:
    """sigma(eta=1) is the posterior std and the means coincide: same draws, same trajectory."""
    sched = make_schedule(name)
    x_T = _x_T(0)  # float64: DDIM and DDPM order their float operations differently
    ddim = sample_progressive(fake_eps, sched, x_T, SamplerConfig("ddim", 1000, eta=1.0, clip_x0=False), None,
                              make_generator(1))
    ddpm = sample_progressive(fake_eps, sched, x_T, SamplerConfig("ddpm", 1000, clip_x0=False), None, make_generator(1))
    n = 0
    for a, b in zip(ddim, ddpm, strict=True):
        assert (a.t, a.t_prev) == (b.t, b.t_prev)
        torch.testing.assert_close(a.x, b.x, atol=1e-9, rtol=0)
        torch.testing.assert_close(a.x0_pred, b.x0_pred, atol=1e-9, rtol=1e-12)
        n += 1
    assert n == 1000


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_ddim_eta0_is_deterministic_and_lands_on_x0(spacing: str, fake_eps) -> None:
    sched = make_schedule("linear")
    x_T = initial_noise(SHAPE, make_generator(0))
    cfg = SamplerConfig("ddim", 20, eta=0.0, spacing=spacing)
    steps_a = list(sample_progressive(fake_eps, sched, x_T, cfg, None, make_generator(1)))
    steps_b = list(sample_progressive(fake_eps, sched, x_T, cfg, None, make_generator(999)))
    assert torch.equal(steps_a[-1].x, steps_b[-1].x)
    last = steps_a[-1]
    assert last.t_prev == -1 and last.index == 19 and last.num_steps == 20
    plan = plan_coefficients(sched, timestep_pairs(1000, 20, spacing))
    assert plan[-1].alpha_bar_prev == 1.0
    torch.testing.assert_close(last.x, last.x0_pred, atol=1e-6, rtol=0)  # alpha_bar = 1: x equals the x_0 estimate


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 100, 0.0), ("ddim", 20, 0.7)])
def test_same_seed_same_bytes_other_seed_differs(sampler: str, steps: int, eta: float, fake_eps) -> None:
    sched = make_schedule("cosine")
    cfg = SamplerConfig(sampler, steps, eta=eta)

    def run(seed: int) -> torch.Tensor:
        g = make_generator(seed)
        return sample(fake_eps, sched, initial_noise(SHAPE, g), cfg, None, g)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_steps_are_records_of_each_model_call(fake_eps) -> None:
    sched = make_schedule("linear")
    calls = []

    def model(x, t, y=None):
        calls.append(int(t[0]))
        return fake_eps(x, t)

    steps = list(sample_progressive(model, sched, initial_noise(SHAPE, make_generator(0)),
                                    SamplerConfig("ddim", 10), None, make_generator(0)))
    assert calls == [s.t for s in steps] == ddim_timesteps(1000, 10, "trailing")
    assert [s.index for s in steps] == list(range(10))
    with pytest.raises(Exception):
        steps[0].x = None  # frozen record


def test_sampler_stops_when_closed(fake_eps) -> None:
    calls = []

    def model(x, t, y=None):
        calls.append(1)
        return fake_eps(x, t)

    gen = sample_progressive(model, make_schedule("linear"), initial_noise(SHAPE, make_generator(0)),
                             SamplerConfig("ddpm", 1000), None, make_generator(0))
    for i, _ in enumerate(gen):
        if i == 4:
            break
    gen.close()
    assert len(calls) == 5


class CondModel(torch.nn.Module):
    """eps depends on the label: label k adds k/10; the null label (10) adds -1."""

    class cfg:  # noqa: N801 - mimics ModelConfig's fields that the samplers read
        num_classes = 10
        null_label = 10

    def forward(self, x, t, y=None):
        y = torch.full((x.shape[0],), 10) if y is None else y
        shift = torch.where(y == 10, -1.0, y.float() / 10).reshape(-1, 1, 1, 1)
        return 0.5 * x + shift


def test_classifier_free_guidance_formula() -> None:
    m = CondModel()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 7, 9])
    eps_c, eps_u = m(x, None, y), m(x, None, None)
    for w in (0.0, 1.0, 3.0, 7.5):
        torch.testing.assert_close(guided_eps(m, x, 10, y, w), eps_u + w * (eps_c - eps_u))
    torch.testing.assert_close(guided_eps(m, x, 10, None, 3.0), eps_u)


class Counted(torch.nn.Module):
    """An unconditional eps model k tanh(x) + t / T that counts its calls."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return self.k * torch.tanh(x) + (t.float() / 100).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_autoguidance_in_eps_is_karras_extrapolation_of_the_denoiser(name: str) -> None:
    """Karras et al. (2024) eq. 2 guides the denoiser, D_w = w D_1 + (1 - w) D_0; AutoGuided does it in eps."""
    sched = make_schedule(name, 100)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0, 30, 70, 99])
    model, guide = Counted(0.8), Counted(0.3)
    ab = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1).double()

    def denoise(eps: torch.Tensor) -> torch.Tensor:  # x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)
        return (x - (1 - ab).sqrt() * eps) / ab.sqrt()

    for w in (1.5, 2.0, 4.0):
        eps_w = AutoGuided(model, guide, w)(x, t)
        torch.testing.assert_close(denoise(eps_w), w * denoise(model(x, t)) + (1 - w) * denoise(guide(x, t)))
    calls = guide.calls
    torch.testing.assert_close(AutoGuided(model, guide, 1.0)(x, t), model(x, t))
    assert guide.calls == calls  # w = 1 is the model alone: the guide is not run
    calls = model.calls
    torch.testing.assert_close(AutoGuided(model, guide, 0.0)(x, t), guide(x, t))
    assert model.calls == calls  # w = 0 is the guide alone: the model is not run
    eps_half = AutoGuided(model, guide, 0.5)(x, t)  # 0 < w < 1: between the two
    torch.testing.assert_close(denoise(eps_half), 0.5 * denoise(model(x, t)) + 0.5 * denoise(guide(x, t)))


def test_autoguidance_moves_samples_and_refuses_labels_and_negative_weights() -> None:
    sched = make_schedule("linear", 100)
    x_T = initial_noise(SHAPE, make_generator(0))
    cfg = SamplerConfig("ddim", 10)
    plain = sample(Counted(0.8), sched, x_T, cfg)
    assert torch.equal(sample(AutoGuided(Counted(0.8), Counted(0.3), 1.0), sched, x_T, cfg), plain)
    guided = sample(AutoGuided(Counted(0.8), Counted(0.3), 2.0), sched, x_T, cfg)
    assert (guided - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="unconditional sampling only"):
        AutoGuided(CondModel(), Counted(0.3), 2.0)(x_T, torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 4]))
    for w in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight w must be a finite number >= 0"):
            AutoGuided(Counted(0.8), Counted(0.3), w)


def test_bad_input_raises_with_clear_message(fake_eps) -> None:
    sched = make_schedule("linear", 100)
    x = initial_noise(SHAPE, make_generator(0))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        SamplerConfig("euler")
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        SamplerConfig("ddim", 0)
    with pytest.raises(ValueError, match=r"steps must lie in 1..100 .* got 101"):
        sample(fake_eps, sched, x, SamplerConfig("ddim", 101))
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\], got 1.5"):
        SamplerConfig("ddim", 10, eta=1.5)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\], got -0.1"):
        SamplerConfig("ddim", 10, eta=-0.1)
    with pytest.raises(ValueError, match="unknown timestep spacing 'uniform'"):
        SamplerConfig("ddim", 10, spacing="uniform")
    with pytest.raises(ValueError, match="unknown DDPM variance"):
        SamplerConfig("ddpm", 10, variance="learned")
    with pytest.raises(ValueError, match="guidance scale"):
        SamplerConfig("ddim", 10, guidance=float("nan"))
    with pytest.raises(ValueError, match="unconditional"):
        sample(fake_eps, sched, x, SamplerConfig("ddim", 10), y=torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"label 10 is outside the model's classes 0..9"):
        sample(CondModel(), sched, x, SamplerConfig("ddim", 10), y=torch.tensor([1, 2, 3, 10]))
    with pytest.raises(ValueError, match="seed must be an integer"):
        make_generator(-1)
    with pytest.raises(ValueError, match="seed must be an integer"):
        make_generator(2**63)


def test_initial_noise_is_drawn_on_cpu() -> None:
    a = initial_noise(SHAPE, make_generator(42), "cpu")
    b = torch.randn(SHAPE, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    if torch.cuda.is_available():  # pragma: no cover - only where a GPU is present
        assert torch.equal(initial_noise(SHAPE, make_generator(42), "cuda").cpu(), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the CPU half is checked above")
def test_cpu_and_gpu_start_from_the_same_noise() -> None:
    g1, g2 = make_generator(3), make_generator(3)
    a = randn_like_cpu(torch.empty(2, 3, 8, 8), g1)
    b = randn_like_cpu(torch.empty(2, 3, 8, 8, device="cuda"), g2)
    assert b.device.type == "cuda" and torch.equal(a, b.cpu())
