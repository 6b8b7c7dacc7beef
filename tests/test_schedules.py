"""Noise schedules: definitions, invariants, and agreement with diffusers' betas and alpha_bar."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_core.schedules import NoiseSchedule, ScheduleConfig, extract, make_schedule


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 200, 10])
def test_alpha_bar_strictly_decreasing_and_in_range(name: str, T: int) -> None:
    s = make_schedule(name, T)
    ab = s.alphas_cumprod
    assert ab.shape == (T,) and ab.dtype == torch.float32
    assert bool((ab[1:] < ab[:-1]).all())
    assert 0 < ab[-1] < ab[0] < 1
    assert bool(((s.betas > 0) & (s.betas <= 0.999)).all())


def test_linear_definition() -> None:
    s = make_schedule("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    torch.testing.assert_close(s.betas.double(), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(s.alphas_cumprod.double(), ab, rtol=1e-6, atol=0)


def test_cosine_definition() -> None:
    """alpha_bar_t = f(t+1)/f(0) with f(u) = cos^2(((u/T + s)/(1 + s)) pi/2) (our t is the paper's t - 1)."""
    T, s = 1000, 0.008
    sched = make_schedule("cosine", T)
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 100, 500, 900, 990):
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    assert sched.betas.max().item() == pytest.approx(0.999, rel=1e-6)  # clipped at the end
    assert sched.betas[-1].item() == pytest.approx(0.999, rel=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_derived_coefficients(name: str) -> None:
    s = make_schedule(name)
    # Reference in float64 from the (float32) betas: 1 - ab from float32 ab would lose 4 digits at small t.
    b = s.betas.double()
    ab = torch.cumprod(1 - b, 0)
    abp = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    assert s.alphas_cumprod_prev[0] == 1.0
    torch.testing.assert_close(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    torch.testing.assert_close(s.posterior_variance.double(), b * (1 - abp) / (1 - ab), rtol=1e-5, atol=1e-12)
    assert s.posterior_variance[0] == 0
    # (at t = T-1 of cosine, alpha_999 = 1 - 0.999 inherits the float32 rounding of beta: 6e-5 relative)
    torch.testing.assert_close(s.snr.double(), ab / (1 - ab), rtol=1e-4, atol=0)
    torch.testing.assert_close(s.sqrt_alphas_cumprod ** 2, s.alphas_cumprod, rtol=1e-6, atol=0)
    torch.testing.assert_close(s.posterior_mean_coef1.double(), b * abp.sqrt() / (1 - ab), rtol=1e-5, atol=0)
    torch.testing.assert_close(s.posterior_mean_coef2.double(), (1 - b).sqrt() * (1 - abp) / (1 - ab), rtol=1e-5, atol=0)
    assert torch.isfinite(s.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("name,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_agrees_with_diffusers(name: str, theirs: str) -> None:
    import diffusers  # the independent reference, pinned in requirements-test.txt: never skipped
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs)
    s = make_schedule(name)
    torch.testing.assert_close(s.betas, ref.betas, atol=1e-7, rtol=1e-6)
    # diffusers accumulates its cumprod in float32: allow its rounding (ours is built in float64).
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, atol=0, rtol=2e-5)


def test_schedule_is_an_immutable_value() -> None:
    s = make_schedule("linear", 50)
    with pytest.raises(Exception):
        s.betas = torch.zeros(50)  # frozen dataclass
    t = s.to("cpu")
    assert t is not s and t.config == s.config and torch.equal(t.alphas_cumprod, s.alphas_cumprod)
    assert s.num_timesteps == 50


def test_alpha_bar_lookup_includes_minus_one() -> None:
    s = make_schedule("cosine", 100)
    out = s.alpha_bar(torch.tensor([-1, 0, 99]))
    assert out[0] == 1.0 and out[1] == s.alphas_cumprod[0] and out[2] == s.alphas_cumprod[99]


def test_extract_broadcasts() -> None:
    s = make_schedule("linear", 100)
    out = extract(s.sqrt_alphas_cumprod, torch.tensor([0, 50, 99]), (3, 1, 8, 8))
    assert out.shape == (3, 1, 1, 1)
    assert out[1, 0, 0, 0] == s.sqrt_alphas_cumprod[50]


def test_bad_config_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'; allowed: 'linear', 'cosine'"):
        ScheduleConfig(name="quadratic")
    with pytest.raises(ValueError, match="num_timesteps must be a positive integer, got 0"):
        ScheduleConfig(num_timesteps=0)
    with pytest.raises(ValueError, match="beta_start"):
        ScheduleConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="strictly decreasing"):
        NoiseSchedule.from_betas(ScheduleConfig(num_timesteps=3), torch.tensor([0.1, 0.0, 0.1], dtype=torch.float64))
