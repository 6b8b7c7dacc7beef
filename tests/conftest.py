"""Shared fixtures: small schedules, a deterministic stand-in for eps_theta, and a tiny checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from diffusion_core.checkpoints import save_checkpoint  # noqa: E402
from diffusion_core.model import build_model, preset  # noqa: E402
from diffusion_core.schedules import ScheduleConfig  # noqa: E402


class FakeEps(torch.nn.Module):
    """A smooth, t-dependent eps(x_t, t) with no parameters, so samplers can be compared exactly."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        s = (t.float() / 1000.0).reshape(-1, *([1] * (x.ndim - 1)))
        return 0.8 * torch.tanh(x) * (1 - s) + 0.3 * torch.sin(3 * x) * s


@pytest.fixture
def fake_eps() -> FakeEps:
    return FakeEps()


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the zero-initialised layers so that the output depends on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST-shaped, class-conditional 'lesson' net with random weights, saved as a checkpoint."""
    torch.manual_seed(0)
    cfg = preset("lesson", base_channels=8, num_classes=10)
    model = randomize(build_model(cfg))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, model, cfg, ScheduleConfig("linear", 1000), "mnist", {"note": "test"})
    return path
