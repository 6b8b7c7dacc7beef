"""AOTInductor packages: built once, keyed to the weights and the machine, checked against eager at load."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import randomize

from diffusion_core.checkpoints import load_checkpoint, read_card, save_checkpoint, write_card
import diffusion_core.compiled as aoti
from diffusion_core.compiled import (
    MAX_BATCH,
    CompiledModel,
    compile_package,
    group_norm_from_channel_sums,
    load_compiled,
    package_path,
)
from diffusion_core.inference import InferenceModel
from diffusion_core.model import build_model, preset
from diffusion_core.runtime import available_cores
from diffusion_core.samplers import SamplerConfig, initial_noise, make_generator, sample
from diffusion_core.schedules import ScheduleConfig, make_schedule

if shutil.which("c++") is None and not os.environ.get("CI"):
    pytest.skip("no C++ compiler: Inductor cannot build packages here", allow_module_level=True)

# A package is built for one thread count (see package_path). Other tests' apps confine this thread
# to one intra-op thread, so every call here names the count the app's torch thread uses.
THREADS = available_cores()


def tiny(directory: Path, name: str, num_classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    cfg = preset("lesson", base_channels=8, num_classes=num_classes)
    save_checkpoint(directory / name, randomize(build_model(cfg)), cfg, ScheduleConfig("linear", 1000), "mnist")
    return load_checkpoint(directory / name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A conditional tiny checkpoint, its bfloat16 InferenceModel and a package for it in a fresh cache."""
    d = tmp_path_factory.mktemp("compiled")
    ckpt = tiny(d, "tiny")
    model = InferenceModel(ckpt.model, "bfloat16")
    rewritten = []  # the GroupNorms that export handed to the channel-sums rewrite
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aoti, "group_norm_from_channel_sums",
                   lambda *a, **k: rewritten.append(a[0].shape[1]) or group_norm_from_channel_sums(*a, **k))
        compile_package(model, package_path(ckpt, "bfloat16", d / "cache", THREADS), THREADS)
    assert rewritten[:3] == [8, 16, 8]  # the lesson net's GroupNorms (enc1, enc2, dec1); export traces twice
    return d, ckpt, model


def test_the_package_runs_like_eager_at_any_batch(built) -> None:
    d, ckpt, model = built
    compiled = load_compiled(ckpt, model, d / "cache", THREADS)
    assert isinstance(compiled, CompiledModel) and compiled.cfg is model.cfg
    g = torch.Generator().manual_seed(3)
    for n in (1, 5, 32):
        x, t = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 1000, (n,), generator=g)
        for y in (torch.randint(0, 10, (n,), generator=g), None):  # None = the null label
            with torch.inference_mode():
                want, got = model(x, t, y), compiled(x, t, y)
            assert got.dtype == torch.float32 and got.shape == want.shape
            # bfloat16 rounding in a different order: close, not equal
            assert (got - want).abs().max() <= 0.05 * want.abs().max(), (n, y is None)


def test_batches_over_the_package_range_run_eagerly(built) -> None:
    d, ckpt, model = built
    compiled = load_compiled(ckpt, model, d / "cache", THREADS)
    calls = []
    runner = compiled.runner
    compiled.runner = lambda *a: calls.append(a[0].shape[0]) or runner(*a)
    x, t = torch.randn(MAX_BATCH + 1, 1, 28, 28), torch.zeros(MAX_BATCH + 1, dtype=torch.long)
    with torch.inference_mode():
        assert torch.equal(compiled(x, t), model(x, t))  # eager, so bit-identical
        compiled(x[:2], t[:2])
    assert calls == [2]


def test_images_of_another_shape_run_eagerly(built) -> None:
    """A package reads its input as the shape it was exported for without checking it (a 32 x 32 image
    came back as 28 x 28 numbers, a 20 x 20 one as NaNs read past its end), so the call routes every
    other image size or channel count to eager: the same result as eager, or eager's error."""
    d, ckpt, model = built
    compiled = load_compiled(ckpt, model, d / "cache", THREADS)
    calls = []
    runner = compiled.runner
    compiled.runner = lambda *a: calls.append(tuple(a[0].shape)) or runner(*a)
    t = torch.full((2,), 500)
    with torch.inference_mode():
        for size in (32, 20):
            x = torch.randn(2, 1, size, size)
            assert torch.equal(compiled(x, t), model(x, t))  # eager, so bit-identical
        with pytest.raises(RuntimeError, match="channels"):
            compiled(torch.randn(2, 2, 28, 28), t)
        compiled(torch.randn(2, 1, 28, 28), t)
    assert calls == [(2, 1, 28, 28)]


def test_a_batch_with_its_own_package_runs_it(built) -> None:
    """A package built for batch 2 serves calls of 2 images (and passes the probe at load); other batches
    go to the package for any batch; both agree with eager."""
    d, ckpt, model = built
    path = package_path(ckpt, "bfloat16", d / "cache", THREADS, batch=2)
    assert path != package_path(ckpt, "bfloat16", d / "cache", THREADS)
    compile_package(model, path, THREADS, batch=2)
    compiled = load_compiled(ckpt, model, d / "cache", THREADS, batches=(2, 4))  # no package for 4: skipped
    assert compiled.batches == (2,)
    assert load_compiled(ckpt, model, d / "cache", THREADS, batches=()).batches == ()
    calls = []
    for key, runner in (("any", compiled.runner), (2, compiled.static[2])):
        def spy(*a, key=key, runner=runner):
            calls.append((key, a[0].shape[0]))
            return runner(*a)
        if key == "any":
            compiled.runner = spy
        else:
            compiled.static[2] = spy
    g = torch.Generator().manual_seed(5)
    for n in (2, 3, 2, 1):
        x, t, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 1000, (n,), generator=g), None
        with torch.inference_mode():
            want, got = model(x, t, y), compiled(x, t, y)
        assert (got - want).abs().max() <= 0.05 * want.abs().max(), n
    assert calls == [(2, 2), ("any", 3), (2, 2), ("any", 1)]


def test_compiled_sampling_gives_the_same_digits(built) -> None:
    d, ckpt, model = built
    compiled = load_compiled(ckpt, model, d / "cache", THREADS)
    sched = make_schedule("linear", 1000)
    cfg = SamplerConfig(sampler="ddim", steps=10, guidance=2.0)
    y = torch.tensor([3, 7])
    out = []
    for m in (model, compiled):
        x_T = initial_noise((2, 1, 28, 28), make_generator(0))
        with torch.inference_mode():
            out.append(sample(m, sched, x_T, cfg, y=y, generator=make_generator(1)))
    assert (out[0] - out[1]).abs().mean() < 0.02  # pixel range [-1, 1]


def test_a_package_is_used_only_for_its_own_weights(built, tmp_path: Path, caplog) -> None:
    d, ckpt, model = built
    cache = d / "cache"
    # Other weights under the same name: another key, so no package.
    other = tiny(tmp_path, "tiny", seed=1)
    other_model = InferenceModel(other.model, "bfloat16")
    assert package_path(other, "bfloat16", cache, THREADS) != package_path(ckpt, "bfloat16", cache, THREADS)
    assert load_compiled(other, other_model, cache, THREADS) is None
    # The first package copied under the other weights' key: the probe against eager refuses it.
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copy(package_path(ckpt, "bfloat16", cache, THREADS), package_path(other, "bfloat16", fake, THREADS))
    assert load_compiled(other, other_model, fake, THREADS) is None
    assert "differs from eager" in caplog.text
    # A truncated package: ignored with a warning, eager goes on.
    p = package_path(ckpt, "bfloat16", tmp_path / "broken", THREADS)
    p.parent.mkdir()
    p.write_bytes(package_path(ckpt, "bfloat16", cache, THREADS).read_bytes()[:1000])
    assert load_compiled(ckpt, model, tmp_path / "broken", THREADS) is None
    # Another precision, or another thread count, has its own key.
    assert load_compiled(ckpt, InferenceModel(ckpt.model, "float32"), cache, THREADS) is None
    assert load_compiled(ckpt, model, cache, THREADS + 1) is None


def test_an_unconditional_model_compiles(tmp_path: Path) -> None:
    ckpt = tiny(tmp_path, "uncond", num_classes=0)
    model = InferenceModel(ckpt.model, "float32")
    compile_package(model, package_path(ckpt, "float32", tmp_path / "cache", THREADS), THREADS)
    compiled = load_compiled(ckpt, model, tmp_path / "cache", THREADS)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    with torch.inference_mode():
        assert torch.allclose(compiled(x, t), model(x, t), atol=1e-4, rtol=1e-3)


def test_the_app_runs_compiled_checkpoints(built, monkeypatch: pytest.MonkeyPatch) -> None:
    from explorer import header
    from explorer.state import load_registry

    d, ckpt, _ = built
    monkeypatch.setattr("diffusion_core.compiled.default_cache_dir", lambda: d / "cache")
    reg = load_registry(d, device="cpu", precision="bfloat16", compiled=True, threads=THREADS)
    assert reg.compiled == ("tiny",) and isinstance(reg.get("tiny").model, CompiledModel)
    assert "compiled ahead of time (AOTInductor): `tiny`" in header(reg)
    off = load_registry(d, device="cpu", precision="bfloat16", compiled=False, threads=THREADS)
    assert off.compiled == () and not isinstance(off.get("tiny").model, CompiledModel)


def test_sample_and_evaluate_run_the_package_when_asked(built, monkeypatch: pytest.MonkeyPatch,
                                                        request: pytest.FixtureRequest) -> None:
    from diffusion_core.evaluate import evaluation_key
    from diffusion_core.sample import generate, sampler_config

    d, ckpt, _ = built
    monkeypatch.setattr("diffusion_core.compiled.default_cache_dir", lambda: d / "cache")
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # generate looks up the package for the calling thread's count
    request.addfinalizer(lambda: torch.set_num_threads(before))
    cfg = sampler_config("ddim", 5, 1000, guidance=2.0)
    labels = torch.tensor([1, 2, 3])
    eager = generate(ckpt, cfg, 3, 0, labels, batch_size=2, precision="bfloat16")
    compiled = generate(ckpt, cfg, 3, 0, labels, batch_size=2, precision="bfloat16", compiled=True)
    assert 0 < (eager - compiled).abs().mean() < 0.02
    with pytest.raises(ValueError, match="at most 64 images per call"):  # guidance doubles each call's batch
        generate(ckpt, cfg, 40, 0, torch.zeros(40, dtype=torch.long), batch_size=40, precision="bfloat16",
                 compiled=True)
    with pytest.raises(ValueError, match="no compiled package"):
        generate(ckpt, cfg, 3, 0, labels, batch_size=2, precision="float32", compiled=True)
    r = dict(sampler="ddim", steps=5, eta=0.0, spacing="trailing", clip_x0=True, labels=None, num=3,
             precision="bfloat16", seed=0)
    assert evaluation_key({**r, "compiled": True}) != evaluation_key(r)  # its own entry in a card


def test_the_app_builds_missing_packages_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's start: eager at once, a low-priority child builds the package, then new runs use it."""
    from explorer.common import start
    from explorer.state import compile_in_background, load_registry

    tiny(tmp_path / "ckpts", "tiny")
    tiny(tmp_path / "ckpts", "tiny-guide", num_classes=0, seed=1)  # tiny's autoguidance guide: built too
    card = read_card(tmp_path / "ckpts" / "tiny")
    write_card(tmp_path / "ckpts" / "tiny", {**card, "autoguidance": {"guide": "tiny-guide", "weight": 2.0}})
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))  # read by the child and by this process
    monkeypatch.setenv("DIFFUSION_STATIC_BATCHES", "2")  # one fixed-batch package per net, after the others
    reg = load_registry(tmp_path / "ckpts", device="cpu", precision="bfloat16")
    assert reg.compiled == () and isinstance(reg.get("tiny").model, InferenceModel)
    assert isinstance(reg.guides["tiny"].model, InferenceModel)
    running = start(reg.get("tiny"), SamplerConfig(sampler="ddim", steps=3), 0, 1, "any", reg.device,
                    reg.guides["tiny"].model, 2.0)
    thread = compile_in_background(reg)
    thread.join(timeout=240)
    assert not thread.is_alive()
    assert isinstance(reg.get("tiny").model, CompiledModel) and isinstance(reg.guides["tiny"].model, CompiledModel)
    assert reg.get("tiny").model.batches == reg.guides["tiny"].model.batches == (2,)
    assert len(list(running)) == 3  # the run that started eagerly finishes
    assert compile_in_background(reg) is None  # nothing left to build
    # The next start: eager at first, then the packages that exist, with nothing to build.
    again = load_registry(tmp_path / "ckpts", device="cpu", precision="bfloat16", compiled=False)
    assert isinstance(again.get("tiny").model, InferenceModel)
    compile_in_background(again, build=False).join(timeout=60)
    assert isinstance(again.get("tiny").model, CompiledModel) and isinstance(again.guides["tiny"].model, CompiledModel)
    assert again.get("tiny").model.batches == (2,)
    # ... and a start with packages at hand runs both from them at once.
    third = load_registry(tmp_path / "ckpts", device="cpu", precision="bfloat16")
    assert isinstance(third.guides["tiny"].model, CompiledModel) and compile_in_background(third) is None
