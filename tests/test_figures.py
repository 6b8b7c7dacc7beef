"""The app's figures: Plotly JSON written by hand must be what plotly itself accepts, and show the right numbers."""

from __future__ import annotations

import math

import plotly.io as pio
import pytest
import torch

from diffusion_core.explain import StepStats
from diffusion_core.schedules import make_schedule
from explorer import figures


def valid(p) -> dict:
    """plotly.py validates every property on the way in: an unknown or misspelt one raises."""
    pio.from_json(p.plot)
    return figures.spec(p)


@pytest.mark.parametrize("name, t", [("linear", 0), ("linear", 500), ("cosine", 999)])
def test_signal_noise_marks_t(name: str, t: int) -> None:
    s = make_schedule(name)
    f = valid(figures.signal_noise(s, t))
    marker = f["data"][2]
    assert marker["x"] == [t, t]
    assert marker["y"] == pytest.approx([math.sqrt(s.alphas_cumprod[t]), math.sqrt(1 - s.alphas_cumprod[t])], abs=1e-6)
    assert f["layout"]["shapes"][0]["x0"] == t
    assert f["data"][0]["x"][-1] == s.num_timesteps - 1  # the curve reaches T-1


def test_histogram_is_a_density() -> None:
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    f = valid(figures.histogram(x, 10))
    bars = f["data"][0]
    assert sum(bars["y"]) * bars["width"] == pytest.approx(1.0, abs=1e-3)  # all values lie within [-4, 4]
    assert "x_10" in f["layout"]["title"]["text"]


def test_schedules_overview_has_two_panels() -> None:
    f = valid(figures.schedules_overview({n: make_schedule(n) for n in ("linear", "cosine")}))
    assert [d.get("xaxis", "x") for d in f["data"]] == ["x", "x2", "x", "x2"]
    assert f["data"][0]["y"][0] == pytest.approx(float(make_schedule("linear").alphas_cumprod[0]))


def test_step_chart() -> None:
    stats = [StepStats(index=i, t=999 - i, x_std=1.0 - i / 10, eps_rms=0.5) for i in range(3)]
    f = valid(figures.step_chart(stats, "run"))
    assert f["data"][0]["x"] == [1, 2, 3] and f["data"][0]["y"] == [1.0, 0.9, 0.8]
