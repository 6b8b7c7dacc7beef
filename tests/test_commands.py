"""The sample and evaluate command lines, run as a user runs them (separate processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, randomize
from diffusion_core.data import make_circles
from diffusion_core.checkpoints import checkpoint_paths, read_card, save_checkpoint, write_card
from diffusion_core.evaluate import (class_coverage, copying_check, evaluation_key, frechet_distance, is_clean_disc,
                                     real_floors)
from diffusion_core.model import build_model, preset
from diffusion_core.schedules import ScheduleConfig

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300, check=check)


def test_sample_writes_png_and_npz_deterministically(tiny_checkpoint: Path, tmp_path: Path) -> None:
    common = ["diffusion_core.sample", "--checkpoint", str(tiny_checkpoint), "--steps", "5", "--num", "6",
              "--seed", "3", "--device", "cpu"]
    run(*common, "--out", str(tmp_path / "a.png"))
    run(*common, "--out", str(tmp_path / "b.png"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    img = Image.open(tmp_path / "a.png")
    assert img.size == (2 + 3 * 30, 2 + 2 * 30)  # 3 x 2 grid of 28 px images with 2 px padding
    run(*common, "--out", str(tmp_path / "s.npz"), "--sampler", "ddim", "--eta", "0.5")
    run(*common, "--out", str(tmp_path / "t.npz"), "--sampler", "ddim", "--eta", "0.5")
    a, b = np.load(tmp_path / "s.npz")["images"], np.load(tmp_path / "t.npz")["images"]
    assert a.dtype == np.uint8 and a.shape == (6, 28, 28, 1)
    assert np.array_equal(a, b)
    run(*common, "--out", str(tmp_path / "u.npz"), "--seed", "4")
    assert not np.array_equal(a, np.load(tmp_path / "u.npz")["images"])


def test_sample_with_label_and_guidance_and_ddpm(tiny_checkpoint: Path, tmp_path: Path) -> None:
    run("diffusion_core.sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "ddpm", "--steps", "20",
        "--num", "2", "--label", "3", "--guidance", "3", "--out", str(tmp_path / "g.npz"))
    assert np.load(tmp_path / "g.npz")["images"].shape == (2, 28, 28, 1)


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--steps", "1001"], "steps must lie in 1..1000"),
    (["--eta", "1.5"], "eta must lie in [0, 1], got 1.5"),
    (["--label", "10"], "label 10 is outside the model's classes 0..9"),
    (["--seed", "-1"], "seed must be an integer"),
    (["--out", "x.jpg"], "--out must end in .png or .npz"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--num", "0"], "error:"),
])
def test_sample_bad_input(tiny_checkpoint: Path, args: list[str], message: str) -> None:
    r = run("diffusion_core.sample", "--checkpoint", str(tiny_checkpoint), "--num", "1", *args, check=False)
    assert r.returncode == 2 and message in r.stderr


def test_sample_unknown_sampler_and_missing_checkpoint(tmp_path: Path) -> None:
    r = run("diffusion_core.sample", "--sampler", "euler", check=False)
    assert r.returncode == 2 and "invalid choice: 'euler'" in r.stderr
    r = run("diffusion_core.sample", "--checkpoint", str(tmp_path / "none"), check=False)
    assert r.returncode == 2 and "none.json: model card not found" in r.stderr


def test_evaluate_prints_json(tiny_checkpoint: Path) -> None:
    r = run("diffusion_core.evaluate", "--checkpoint", str(tiny_checkpoint), "--steps", "3", "--num", "40",
            "--all-labels", "--guidance", "2")
    out = json.loads(r.stdout)
    for key in ("fd", "fd_real_floor", "confident", "coverage", "coverage_real_floor", "label_accuracy", "nn_ratio",
                "copy_share"):
        assert key in out
    assert out["fd"] > out["fd_real_floor"] > 0  # random weights are far from the data
    assert out["num"] == 40 and out["labels"] == "all"


def test_autoguidance_from_the_command_lines(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for src in checkpoint_paths(tiny_checkpoint):
        shutil.copy(src, tmp_path / src.name)
    main = tmp_path / tiny_checkpoint.name
    cfg = preset("lesson", base_channels=8)  # unconditional
    save_checkpoint(tmp_path / "tiny-guide", randomize(build_model(cfg), seed=1), cfg, ScheduleConfig("linear", 1000),
                    "mnist", {})
    write_card(main, {**read_card(main), "autoguidance": {"guide": "tiny-guide", "weight": 2.0}})
    common = ["diffusion_core.sample", "--checkpoint", str(main), "--steps", "5", "--num", "4", "--device", "cpu"]
    run(*common, "--out", str(tmp_path / "plain.npz"))
    run(*common, "--autoguidance", "1", "--out", str(tmp_path / "w1.npz"))
    run(*common, "--autoguidance", "3", "--out", str(tmp_path / "w3.npz"))
    plain, w1, w3 = (np.load(tmp_path / f"{n}.npz")["images"] for n in ("plain", "w1", "w3"))
    assert np.array_equal(plain, w1) and not np.array_equal(plain, w3)
    r = run(*common, "--autoguidance", "3", "--label", "3", "--out", str(tmp_path / "x.npz"), check=False)
    assert r.returncode == 2 and "unconditional sampling only" in r.stderr
    r = run("diffusion_core.sample", "--checkpoint", str(tiny_checkpoint), "--autoguidance", "2", "--num", "1",
            "--out", str(tmp_path / "y.npz"), check=False)
    assert r.returncode == 2 and "names no autoguidance guide" in r.stderr
    out = json.loads(run("diffusion_core.evaluate", "--checkpoint", str(main), "--steps", "3", "--num", "20",
                         "--autoguidance", "2").stdout)
    assert out["autoguidance"] == 2.0 and out["guide"] == "tiny-guide" and out["labels"] is None
    assert "autoguided w=2.0 by tiny-guide" in evaluation_key(out)
    # w = 0 (the guide alone) is filed under its own key, not as the plain model's result.
    assert "autoguided w=0.0 by tiny-guide" in evaluation_key({**out, "autoguidance": 0.0})


# --- the metrics themselves ----------------------------------------------------------------

def test_frechet_distance_against_closed_form() -> None:
    g = np.random.default_rng(0)
    a = g.normal(size=(20000, 3))
    b = g.normal(size=(20000, 3)) * 2 + 1  # N(1, 4 I): FD = 3 * 1 + 3 * (1 + 4 - 2 * 2) = 6
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = np.random.default_rng(1)
    a = g.normal(size=(500, 8)) @ g.normal(size=(8, 8))
    b = g.normal(size=(400, 8)) @ g.normal(size=(8, 8)) + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_real_floors_show_the_sampling_noise_of_coverage() -> None:
    """Draws from perfectly balanced classes cover them fully only when all are drawn: at n = 1000 of
    5,000, chance alone leaves coverage near 0.95, which is why the evaluation reports that floor."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5000, 4)).astype(np.float32)
    pred = np.arange(5000) % 10
    fd_all, cov_all = real_floors(feats, pred, 5000)
    assert cov_all == pytest.approx(1.0) and fd_all == pytest.approx(0.0, abs=1e-6)
    fd_1k, cov_1k = real_floors(feats, pred, 1000)
    assert 0.92 < cov_1k < 0.985 and fd_1k > 0
    assert real_floors(feats, pred, 1000, seed=0) == (fd_1k, cov_1k)  # seeded


def test_coverage() -> None:
    assert class_coverage(np.arange(1000) % 10) == pytest.approx(1.0)
    assert class_coverage(np.zeros(100, dtype=int)) == pytest.approx(0.1)
    assert class_coverage(np.array([0] * 60 + list(range(1, 10)) * 4 + [1] * 4)) < 0.6


def test_copying_check_flags_copies() -> None:
    train, _ = make_circles(300, torch.Generator().manual_seed(0))
    fresh, _ = make_circles(100, torch.Generator().manual_seed(1))
    copies = copying_check(train[:100], train)
    assert copies["copy_share"] == 1.0 and copies["nn_ratio"] == 0.0
    honest = copying_check(fresh, train)
    assert honest["copy_share"] < 0.1 and honest["nn_ratio"] > 0.5


def test_clean_disc_detector() -> None:
    x, _ = make_circles(200, torch.Generator().manual_seed(2))
    imgs = ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.mean([is_clean_disc(i) for i in imgs]) == 1.0
    two = imgs.copy()
    two[:, 1:5, 1:5] = 255 - two[:, 1:5, 1:5]  # a second blob in the corner
    assert np.mean([is_clean_disc(i) for i in two]) < 0.05
    noisy = np.clip(imgs.astype(int) + np.random.default_rng(0).integers(-40, 40, imgs.shape), 0, 255).astype(np.uint8)
    assert np.mean([is_clean_disc(i) for i in noisy]) < 0.05
    blank = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert not is_clean_disc(blank)


def test_quality_bench_keeps_each_run_for_a_rerun(tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """bench/quality.py keeps every run's result and samples as it ends; a rerun of the same arguments on
    the same weights reads them back instead of sampling, and other arguments or weights sample afresh."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import quality
    from diffusion_core.evaluate import EvalArgs

    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_checkpoint.with_suffix(suffix), tmp_path / f"tiny{suffix}")
    ea = EvalArgs(checkpoint=str(tmp_path / "tiny"), sampler="ddim", steps=2, num=4, seed=0)
    cache = tmp_path / "cache"
    r, x, kept = quality.cached_run(ea, cache)
    assert not kept and len(list(cache.glob("tiny-*.pt"))) == 1 and not list(cache.glob("*.tmp"))

    calls = []
    real = quality.evaluate_samples
    monkeypatch.setattr(quality, "evaluate_samples", lambda a: calls.append(a) or real(a))
    r2, x2, kept = quality.cached_run(ea, cache)
    assert kept and not calls and r2 == r and torch.equal(x2, x)

    _, x3, kept = quality.cached_run(EvalArgs(**{**ea.__dict__, "seed": 1}), cache)
    assert not kept and len(calls) == 1 and not torch.equal(x3, x)
    # retrained weights under the same name: the kept runs are not theirs
    cfg = preset("lesson", base_channels=8, num_classes=10)
    save_checkpoint(tmp_path / "tiny", randomize(build_model(cfg), seed=1), cfg, ScheduleConfig("linear", 1000), "mnist", {})
    _, _, kept = quality.cached_run(ea, cache)
    assert not kept and len(calls) == 2
    _, _, kept = quality.cached_run(ea, None)  # no cache: always sampled
    assert not kept and len(calls) == 3
    # autoguided runs are keyed by the guide's weights as well
    guide_cfg = preset("lesson", base_channels=8, num_classes=0)
    save_checkpoint(tmp_path / "tiny-guide", build_model(guide_cfg), guide_cfg, ScheduleConfig("linear", 1000), "mnist", {})
    write_card(tmp_path / "tiny", {**read_card(tmp_path / "tiny"), "autoguidance": {"guide": "tiny-guide", "weight": 1.5}})
    auto = EvalArgs(**{**ea.__dict__, "autoguidance": 1.5})
    assert [quality.cached_run(auto, cache)[2] for _ in range(2)] == [False, True] and len(calls) == 4
    save_checkpoint(tmp_path / "tiny-guide", randomize(build_model(guide_cfg), seed=2), guide_cfg,
                    ScheduleConfig("linear", 1000), "mnist", {})
    assert not quality.cached_run(auto, cache)[2] and len(calls) == 5
