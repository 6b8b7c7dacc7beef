"""Forward process: closed form, Markov chain, posterior; empirical moments against the formulas."""

from __future__ import annotations

import pytest
import torch

from diffusion_core.forward import (
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_chain,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    q_step,
)
from diffusion_core.schedules import make_schedule


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_zero_noise_is_scaled_x0(name: str) -> None:
    s = make_schedule(name)
    x0 = torch.rand(5, 1, 6, 6) * 2 - 1
    t = torch.tensor([0, 10, 300, 700, 999])
    out = q_sample(s, x0, t, torch.zeros_like(x0))
    torch.testing.assert_close(out, s.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1) * x0)


def test_q_sample_moments() -> None:
    s = make_schedule("linear")
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    t = torch.full((200_000,), 300)
    x = q_sample(s, x0, t, torch.randn(x0.shape, generator=g))
    mean, var = q_mean_variance(s, x0[:1], t[:1])
    assert x.mean().item() == pytest.approx(mean.item(), abs=0.01)
    assert x.var().item() == pytest.approx(var.item(), rel=0.01)


@pytest.mark.parametrize("name,t_end", [("linear", 60), ("cosine", 250)])
def test_markov_chain_matches_closed_form(name: str, t_end: int) -> None:
    """Running q(x_t | x_{t-1}) step by step gives N(sqrt(ab_t) x0, 1 - ab_t), as the closed form does."""
    s = make_schedule(name)
    n = 40_000
    x0 = torch.linspace(-1, 1, 4).repeat(n // 4).reshape(n, 1)  # four distinct pixel values
    g = torch.Generator().manual_seed(1)
    chain = dict(q_chain(s, x0, t_end, g))
    assert sorted(chain) == list(range(t_end + 1))
    for t in (0, t_end // 2, t_end):
        x = chain[t]
        for v in (-1.0, 1.0):
            sel = x[(x0 == v).flatten()]
            ab = s.alphas_cumprod[t].item()
            assert sel.mean().item() == pytest.approx(ab**0.5 * v, abs=0.02)
            assert sel.std().item() == pytest.approx((1 - ab) ** 0.5, rel=0.03, abs=0.002)


def test_q_step_is_one_markov_step() -> None:
    s = make_schedule("linear", 100)
    x = torch.randn(3, 2)
    z = torch.randn(3, 2)
    t = torch.tensor([5, 5, 5])
    torch.testing.assert_close(q_step(s, x, t, z), (1 - s.betas[5]).sqrt() * x + s.betas[5].sqrt() * z)


def test_chain_rejects_bad_t() -> None:
    s = make_schedule("linear", 100)
    with pytest.raises(ValueError, match=r"t_end must lie in 0..99, got 100"):
        list(q_chain(s, torch.zeros(1, 1), 100))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_x0_eps_round_trip(name: str) -> None:
    s = make_schedule(name)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 5, 5, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 100, 500, 900])
    x_t = q_sample(s, x0.double(), t, eps.double())
    torch.testing.assert_close(predict_x0_from_eps(s, x_t, t, eps.double()), x0.double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(predict_eps_from_x0(s, x_t, t, x0.double()), eps.double(), atol=1e-4, rtol=0)


def test_posterior_is_bayes_rule() -> None:
    """q(x_{t-1} | x_t, x_0) from Bayes: precision-weighted product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0)."""
    s = make_schedule("cosine", 1000)
    x0, x_t = torch.tensor([[0.3]]), torch.tensor([[-0.8]])
    for t in (1, 10, 500, 998):
        b = s.betas[t].double()
        a = 1 - b
        abp = torch.prod(1 - s.betas[:t].double())  # alpha_bar_{t-1} in float64
        # N(x_t; sqrt(a) x, b) * N(x; sqrt(abp) x0, 1 - abp), as a density in x:
        prec = a / b + 1 / (1 - abp)
        mean = (a.sqrt() * x_t.double() / b + abp.sqrt() * x0.double() / (1 - abp)) / prec
        m, v, _ = q_posterior_mean_variance(s, x0, x_t, torch.tensor([t]))
        assert m.item() == pytest.approx(mean.item(), rel=1e-4, abs=1e-6)
        assert v.item() == pytest.approx((1 / prec).item(), rel=1e-4)
