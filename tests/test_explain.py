"""diffusion_core.explain: the numbers the app shows."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FakeEps
from diffusion_core.explain import ChainJump, chain_vs_jump, chain_vs_jump_steps, frame_indices, interleave_by_timestep, normal_pdf, snr_db, step_stats, strip_timesteps
from diffusion_core.samplers import SamplerConfig, initial_noise, make_generator, sample, sample_progressive
from diffusion_core.schedules import make_schedule


def test_snr_db_is_decibels_of_alpha_bar_ratio() -> None:
    s = make_schedule("linear")
    ab = s.alphas_cumprod.double()
    assert torch.allclose(snr_db(s), 10 * torch.log10(ab / (1 - ab)))
    assert snr_db(s)[0] > 30 and snr_db(s)[-1] < -30  # almost clean at t = 0, almost pure noise at T-1


def test_strip_timesteps() -> None:
    assert strip_timesteps(1000) == [0, 100, 250, 500, 750, 999]
    assert strip_timesteps(4) == [0, 1, 2, 3]


def test_normal_pdf() -> None:
    assert normal_pdf(torch.tensor([0.0])).item() == pytest.approx(1 / math.sqrt(2 * math.pi))


@pytest.mark.parametrize("t", [0, 50, 300])
def test_chain_and_jump_have_the_same_moments(t: int) -> None:
    s = make_schedule("cosine")
    x0 = torch.linspace(-1, 1, 64).reshape(1, 8, 8)
    r = chain_vs_jump(s, x0, t, 2000, make_generator(0))
    assert r.chain_std == pytest.approx(r.theory_std, rel=0.04)
    assert r.jump_std == pytest.approx(r.theory_std, rel=0.04)
    assert r.chain_mean_err < 0.03 and r.jump_mean_err < 0.03
    assert torch.allclose(r.theory_mean_image, s.sqrt_alphas_cumprod[t] * x0)


def test_chain_vs_jump_steps_streams_each_chain_step_then_the_same_result() -> None:
    s, x0 = make_schedule("linear"), torch.linspace(-1, 1, 16).reshape(1, 4, 4)
    items = list(chain_vs_jump_steps(s, x0, 9, 50, make_generator(3)))
    assert items[:-1] == list(range(10)) and isinstance(items[-1], ChainJump)
    r = chain_vs_jump(s, x0, 9, 50, make_generator(3))
    assert (items[-1].chain_std, items[-1].jump_mean_err) == (r.chain_std, r.jump_mean_err)
    assert torch.equal(items[-1].chain_mean_image, r.chain_mean_image)


def test_chain_vs_jump_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="t must lie"):
        chain_vs_jump(make_schedule(), torch.zeros(1, 2, 2), 1000, 10, make_generator(0))


def test_frame_indices() -> None:
    assert frame_indices(5, 100) == set(range(5))
    f = frame_indices(1000, 100)
    assert len(f) == 100 and 0 in f and 999 in f
    assert frame_indices(7, 1) == {6}


def test_step_stats_of_pure_noise() -> None:
    s = make_schedule()
    x_T = initial_noise((8, 1, 16, 16), make_generator(0))
    step = next(sample_progressive(FakeEps(), s, x_T, SamplerConfig("ddim", 10), None, make_generator(1)))
    st = step_stats(step)
    assert st.index == 0 and st.t == 999
    assert st.x_std == pytest.approx(step.x.std().item())
    assert st.eps_rms == pytest.approx((step.eps_pred.flatten(1).norm(dim=1) / 16).mean().item())


def test_interleave_runs_both_to_the_end_in_order_of_t() -> None:
    s = make_schedule()
    eps = FakeEps()
    x_T = initial_noise((2, 1, 8, 8), make_generator(0))
    a = sample_progressive(eps, s, x_T, SamplerConfig("ddpm", 100), None, make_generator(1))
    b = sample_progressive(eps, s, x_T, SamplerConfig("ddim", 10), None, make_generator(2))
    seen = list(interleave_by_timestep(a, b))
    assert [k for k, *_ in seen].count(0) == 100 and [k for k, *_ in seen].count(1) == 10
    _, _, ca, cb = seen[-1]
    assert (ca.steps, cb.steps) == (100, 10) and ca.seconds > 0 and cb.seconds > 0
    last = {k: st.x for k, st, *_ in seen}
    # Interleaving does not change either result.
    assert torch.equal(last[1], sample(eps, s, x_T, SamplerConfig("ddim", 10), None, make_generator(2)))
    assert torch.equal(last[0], sample(eps, s, x_T, SamplerConfig("ddpm", 100), None, make_generator(1)))
    # The sampler whose x is at the larger t always moves next.
    pos = [1000, 1000]
    for k, st, *_ in seen:
        assert st.t <= max(pos) and pos[k] >= pos[1 - k] or pos[1 - k] == -1
        pos[k] = st.t_prev


def test_closing_interleave_closes_both() -> None:
    s = make_schedule()
    x_T = initial_noise((1, 1, 4, 4), make_generator(0))
    a = sample_progressive(FakeEps(), s, x_T, SamplerConfig("ddpm", 50), None, make_generator(1))
    b = sample_progressive(FakeEps(), s, x_T, SamplerConfig("ddim", 5), None, make_generator(2))
    it = interleave_by_timestep(a, b)
    next(it)
    it.close()
    assert next(a, None) is None and next(b, None) is None
