"""The U-Nets: shapes for every preset, conditioning on t and y, config validation."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize
from diffusion_core.model import PRESET_NAMES, ModelConfig, build_model, count_parameters, preset, timestep_embedding


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 32, 0)])
def test_output_shape_equals_input_shape(name: str, channels: int, size: int, classes: int) -> None:
    cfg = preset(name, in_channels=channels, image_size=size, num_classes=classes)
    model = build_model(cfg).eval()
    x = torch.randn(3, channels, size, size)
    y = torch.tensor([0, 5, classes]) if classes else None  # includes the null label
    with torch.no_grad():
        assert model(x, torch.tensor([0, 500, 999]), y).shape == x.shape


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_time_and_label_change_the_output(name: str) -> None:
    torch.manual_seed(0)
    model = randomize(build_model(preset(name, num_classes=10))).eval()
    x = torch.randn(2, 1, 28, 28)
    t = torch.tensor([100, 100])
    with torch.no_grad():
        base = model(x, t, torch.tensor([3, 3]))
        assert (model(x, torch.tensor([700, 700]), torch.tensor([3, 3])) - base).abs().max() > 1e-4
        assert (model(x, t, torch.tensor([8, 8])) - base).abs().max() > 1e-4
        assert (model(x, t, None) - base).abs().max() > 1e-4  # None = the null label
        torch.testing.assert_close(model(x, t, None), model(x, t, torch.tensor([10, 10])))


def test_fresh_model_predicts_zero() -> None:
    """Zero-initialised output layer (improved-diffusion): training starts from eps = 0."""
    model = build_model(preset("small"))
    assert model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2])).abs().max() == 0


def test_timestep_embedding() -> None:
    e = timestep_embedding(torch.tensor([0, 1, 999]), 32)
    assert e.shape == (3, 32)
    torch.testing.assert_close(e[0], torch.cat([torch.ones(16), torch.zeros(16)]))
    assert not torch.allclose(e[1], e[2])


def test_config_validation_and_round_trip() -> None:
    cfg = preset("base", num_classes=10)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.null_label == 10 and cfg.conditional
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        ModelConfig(arch="vit")
    with pytest.raises(ValueError, match="divisible by 8"):
        ModelConfig(image_size=28, channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="norm_groups"):
        ModelConfig(base_channels=12)


def test_presets_grow() -> None:
    sizes = [count_parameters(build_model(preset(n))) for n in ("lesson", "fast", "small", "base", "large")]
    assert sizes == sorted(sizes)


def test_patch_size_folds_pixels_into_channels_around_the_same_net() -> None:
    """patch_size=2 is pixel_unshuffle -> the U-Net of a 4-channel 14x14 image -> pixel_shuffle, same weights."""
    cfg = ModelConfig(in_channels=1, image_size=28, base_channels=16, channel_mults=(1, 2), attention=True,
                      num_classes=10, patch_size=2)
    inner_cfg = ModelConfig(**{**cfg.to_dict(), "in_channels": 4, "image_size": 14, "patch_size": 1})
    torch.manual_seed(0)
    patched = randomize(build_model(cfg)).eval()
    inner = build_model(inner_cfg).eval()
    inner.load_state_dict(patched.state_dict())  # the same parameters, name for name
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999]), torch.tensor([1, 7, 10])
    with torch.no_grad():
        want = torch.nn.functional.pixel_shuffle(inner(torch.nn.functional.pixel_unshuffle(x, 2), t, y), 2)
        torch.testing.assert_close(patched(x, t, y), want)
    assert patched.conv_in.in_channels == 4 and patched.conv_out.out_channels == 4
    old_card = {k: v for k, v in cfg.to_dict().items() if k != "patch_size"}  # cards written before the field
    assert ModelConfig.from_dict(old_card).patch_size == 1
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible by 8"):
        ModelConfig(image_size=28, channel_mults=(1, 2, 4), patch_size=2)
    with pytest.raises(ValueError, match="invalid model config"):
        ModelConfig(arch="lesson", patch_size=2)
    with pytest.raises(ValueError, match="invalid model config"):
        ModelConfig(patch_size=0)
