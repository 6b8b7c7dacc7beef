"""The sampling execution paths: float32 is the model itself, bfloat16 stays close, bad names raise."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import randomize
from diffusion_core.inference import (CUDAGraphModel, ConditioningTable, InferenceModel, native_bfloat16,
                                      resolve_precision)
from diffusion_core.model import build_model, preset


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(build_model(preset("fast", num_classes=10))).eval()


def test_float32_path_is_the_model(net) -> None:
    """The float32 path is the model's own math; c(t, y) is looked up, not recomputed, so it rounds once
    differently (W(e_t + E_y) + b against (W e_t + b) + W E_y)."""
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 200, 600, 999]), torch.tensor([0, 3, 10, 9])
    with torch.inference_mode():
        for labels in (y, None):
            ref = net(x, t, labels)
            torch.testing.assert_close(InferenceModel(net, "float32")(x, t, labels), ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(InferenceModel(net, "float32", channels_last=True)(x, t, labels), ref,
                                       atol=1e-5, rtol=1e-5)
    assert InferenceModel(net).cfg is net.cfg


@pytest.mark.parametrize("name", ["fast", "lesson"])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_the_conditioning_table_holds_c(name: str, num_classes: int) -> None:
    """c_time[t] + c_label[y] is the net's c(t, y) = [W_k e(t, y) + b_k]_k for every t and label, and
    denoise(x, c(t, y)) is the net."""
    torch.manual_seed(1)
    net = randomize(build_model(preset(name, num_classes=num_classes))).eval()
    table = ConditioningTable(net, 1000, torch.float32)
    t = torch.arange(1000)
    labels = [None] + ([torch.full((1000,), k) for k in range(num_classes + 1)] if num_classes else [])
    with torch.no_grad():
        for y in labels:
            want = net.conditioning(t, y)  # [T x D]
            assert want.shape == (1000, sum(w.out_features for w in net.projections()))
            torch.testing.assert_close(table(t, y), want, atol=1e-5, rtol=1e-5)
        x = torch.randn(3, 1, 28, 28)
        tt, yy = torch.tensor([0, 499, 999]), (torch.tensor([2, 0, num_classes]) if num_classes else None)
        torch.testing.assert_close(net.denoise(x, table(tt, yy)), net(x, tt, yy), atol=1e-5, rtol=1e-5)


def test_the_table_is_used_and_falls_back_outside_it(net) -> None:
    """Inside 0..T-1 the call reads the table (a changed row changes the output); fractional t and t
    outside the table are computed, as the net computes them."""
    m = InferenceModel(net, "float32", num_timesteps=1000)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        t = torch.tensor([10, 20])
        before = m(x, t)
        m.table.c_time[10] += 1.0
        after = m(x, t)
        assert not torch.allclose(after[0], before[0]) and torch.equal(after[1], before[1])
        m.table.c_time[10] -= 1.0
        for t in (torch.tensor([10.5, 20.0]), torch.tensor([1000, 5]), torch.tensor([-1, 5])):
            assert m.table(t, None) is None
            assert torch.equal(m(x, t), net(x, t)), t
        t = torch.tensor([10, 20])
        for y in (torch.tensor([-1, 3]), torch.tensor([11, 3])):  # a bad label raises as the net does
            assert m.table(t, y) is None
            with pytest.raises(IndexError):
                m(x, t, y)


def test_bfloat16_path_is_close(net) -> None:
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([1, 200, 600, 999])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.inference_mode():
        ref = net(x, t)
        for kw in (dict(), dict(autocast=True), dict(channels_last=True)):
            m = InferenceModel(net, "bfloat16", **kw)
            out = m(x, t)
            assert out.dtype == torch.float32 and out.is_contiguous()
            rel = (out - ref).norm() / ref.norm()
            assert 0 < rel < 0.03, kw  # bfloat16 has 8 bits of mantissa: about 0.4% per op
            assert next(m.model.parameters()).dtype == (torch.float32 if kw.get("autocast") else torch.bfloat16)
    for k, v in net.state_dict().items():  # the caller's model is untouched
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    assert next(net.parameters()).is_contiguous()


def test_precision_choice() -> None:
    assert resolve_precision("float32", torch.device("cpu")) == "float32"
    assert resolve_precision("bfloat16", torch.device("cpu")) == "bfloat16"
    auto = resolve_precision("auto", torch.device("cpu"))
    assert auto == ("bfloat16" if native_bfloat16(torch.device("cpu")) else "float32")
    assert resolve_precision("auto", torch.device("mps")) == "float32"
    assert resolve_precision("auto", torch.device("cuda")) == "float32"  # launch-bound there: see its docstring
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))


def test_cuda_graphs_refuse_cpu_inputs(net) -> None:
    with pytest.raises(ValueError, match="runs on a CUDA device"):
        CUDAGraphModel(InferenceModel(net))(torch.randn(2, 1, 28, 28), torch.tensor([5, 9]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (bench/gpu.sh runs this on a GPU)")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cuda_graphs_replay_the_model(net, precision) -> None:
    """Each replay computes on the inputs it is given (not the captured ones), per shape and labelling."""
    eager = InferenceModel(copy.deepcopy(net).cuda(), precision)
    graphed = CUDAGraphModel(eager, max_graphs=2)
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for n, labelled in ((4, False), (4, True), (4, False), (7, True), (4, False)):
            for _ in range(2):  # fresh inputs on every call, into the same graph
                x = torch.randn(n, 1, 28, 28, generator=g).cuda()
                t = torch.randint(0, 1000, (n,), generator=g).cuda()
                y = torch.randint(0, 11, (n,), generator=g).cuda() if labelled else None
                out = graphed(x, t, y)
                torch.testing.assert_close(out, eager(x, t, y), atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == 2  # the least recently used of three signatures was dropped
    assert graphed.cfg is eager.cfg is not None


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_the_compiled_group_norm_is_group_norm(groups: int) -> None:
    """The GroupNorm that packages are built with (compiled.group_norm_from_channel_sums) against torch's."""
    from diffusion_core.compiled import group_norm_from_channel_sums

    g = torch.Generator().manual_seed(groups)
    # an offset and a spread per channel, as conv activations have (the variance is E[x^2] - mu^2 there)
    x = torch.randn(3, 16, 7, 5, generator=g) * torch.rand(1, 16, 1, 1, generator=g) * 3 + 4 * torch.randn(
        1, 16, 1, 1, generator=g)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(group_norm_from_channel_sums(inp, groups, w, b, 1e-5),
                                   torch.nn.functional.group_norm(inp, groups, w, b, 1e-5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(group_norm_from_channel_sums(x, groups), torch.nn.functional.group_norm(x, groups),
                               atol=1e-5, rtol=1e-5)
    got = group_norm_from_channel_sums(x.bfloat16(), groups, w.bfloat16(), b.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), torch.nn.functional.group_norm(x.bfloat16(), groups, w.bfloat16(),
                                                                           b.bfloat16()).float(), atol=0.05, rtol=0.02)


def test_the_compiled_group_norm_with_one_channel_per_group() -> None:
    """As above with G = C (as in the guide's first GroupNorm, 8 channels in 8 groups), on values of
    order 1 as conv activations have: with an offset of 4 standard deviations over 35 values per group,
    E[x^2] - mu^2 in float32 loses about 3 digits (as the matmul form of aoti-4 did)."""
    from diffusion_core.compiled import group_norm_from_channel_sums

    g = torch.Generator().manual_seed(16)
    x = torch.randn(3, 16, 7, 5, generator=g) * (0.5 + torch.rand(1, 16, 1, 1, generator=g))
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(group_norm_from_channel_sums(inp, 16, w, b),
                                   torch.nn.functional.group_norm(inp, 16, w, b), atol=1e-5, rtol=1e-5)
