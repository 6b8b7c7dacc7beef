"""Training: the loss falls, a resumed run continues exactly, and DDP over two CPU processes agrees."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from diffusion_core import train as train_module
from diffusion_core.checkpoints import load_checkpoint
from diffusion_core.data import make_circles
from diffusion_core.model import build_model, preset
from diffusion_core.schedules import make_schedule
from diffusion_core.cli import add_dataclass_args, dataclass_from_args
from diffusion_core.train import TrainConfig, diffusion_loss, ema_update, lr_at, main, resolve_amp, state_part

TINY = ["--dataset", "circles", "--model", "lesson", "--base-channels", "8", "--batch-size", "4", "--no-progress",
        "--log-every", "1", "--lr-decay", "none", "--warmup-steps", "2"]


@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_a_few_steps_reduce_the_loss_on_a_tiny_batch(weighting: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sched = make_schedule("linear")
    model = build_model(preset("lesson", in_channels=3, image_size=32))
    x0, _ = make_circles(8, g)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = diffusion_loss(model, sched, x0, t, noise, None, weighting)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_min_snr_weight() -> None:
    """w(t) = min(SNR, gamma) / SNR: 1 where SNR <= gamma (noisy t), gamma / SNR below."""
    sched = make_schedule("linear")
    model = lambda x, t, y: torch.zeros_like(x)  # noqa: E731 - loss = mean(noise^2) * w
    x0, noise = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    t_noisy, t_clean = torch.tensor([900, 900]), torch.tensor([5, 5])
    assert diffusion_loss(model, sched, x0, t_noisy, noise, None, "min_snr").item() == pytest.approx(1.0)
    snr = sched.snr[5].item()
    assert diffusion_loss(model, sched, x0, t_clean, noise, None, "min_snr").item() == pytest.approx(5.0 / snr, rel=1e-5)


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, lr_decay="cosine", lr_min_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 60) == pytest.approx(0.55e-3)
    assert lr_at(cfg, 110) == pytest.approx(1e-4)


def test_ema_update_with_a_device_scalar_weight_is_the_lerp() -> None:
    """The CUDA-graph step's EMA (weight a 0-dim tensor, nothing read back) matches the eager lerp."""
    g = torch.Generator().manual_seed(0)
    ema, params = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)], [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    a, b = [e.clone() for e in ema], [e.clone() for e in ema]
    ema_update(a, params, 0.05)
    ema_update(b, params, torch.tensor(0.05))
    for x, y, e, p in zip(a, b, ema, params):
        torch.testing.assert_close(x, e + 0.05 * (p - e))
        torch.testing.assert_close(y, x)


def test_cuda_graph_is_refused_off_cuda(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--cuda-graph needs one process on a CUDA device, not 1 on cpu"):
        main([*TINY, "--device", "cpu", "--cuda-graph", "--max-steps", "1", "--out", str(tmp_path / "g")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("resume_at", "amp"), [(0, "bf16"), (3, "none")])
def test_cuda_graph_step_trains_as_the_eager_step(tmp_path: Path, resume_at: int, amp: str) -> None:
    """The graphed run (from scratch, or resumed from an eager run's state) ends at the eager run's weights."""
    # The lr warms up over all 8 steps (and does not depend on --max-steps): a replay that read a stale lr would differ.
    run = [*TINY, "--dataset", "mnist", "--device", "cuda", "--max-steps", "8", "--checkpoint-every", "100",
           "--warmup-steps", "8", "--ema-decay", "0.9", "--amp", amp]
    tol = {"rtol": 3e-2, "atol": 3e-2} if amp == "bf16" else {"rtol": 1e-3, "atol": 1e-3}
    main([*run, "--out", str(tmp_path / "eager"), "--run-dir", str(tmp_path / "run-eager")])
    if resume_at:
        main([*run, "--max-steps", str(resume_at), "--out", str(tmp_path / "graph"), "--run-dir", str(tmp_path / "run-graph")])
    main([*run, "--cuda-graph", "--out", str(tmp_path / "graph"), "--run-dir", str(tmp_path / "run-graph")])
    eager, graph = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("eager", "graph"))
    assert graph["steps"] == 8 and graph["train_config"]["cuda_graph"]
    assert [e["loss"] for e in graph["loss_log"]] == pytest.approx([e["loss"] for e in eager["loss_log"]],
                                                                   rel=tol["rtol"], abs=tol["atol"])
    # Compare what the nets compute, not raw parameters: a bias in front of a GroupNorm has zero gradient
    # in exact arithmetic, so Adam turns rounding noise there into lr-sized steps that change nothing.
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(6, 1, 28, 28, generator=g), torch.tensor([0, 10, 200, 500, 800, 999]), torch.arange(6)
    ema_eager, ema_graph = load_checkpoint(tmp_path / "eager"), load_checkpoint(tmp_path / "graph")
    with torch.no_grad():
        out = ema_eager.model(x, t, y)
        torch.testing.assert_close(ema_graph.model(x, t, y), out, **tol)
        # the run state's raw weights too (a graphed run resumes like an eager one)
        for part in ("model", "ema"):
            nets = []
            for name in ("eager", "graph"):
                net = build_model(ema_eager.model_config)
                net.load_state_dict(state_part(load_file(str(tmp_path / f"run-{name}" / "state.safetensors")), part))
                nets.append(net.eval())
            torch.testing.assert_close(nets[1](x, t, y), nets[0](x, t, y), **tol)
    steps = [load_file(str(tmp_path / f"run-{n}" / "state.safetensors"))["opt.0.step"] for n in ("eager", "graph")]
    assert steps[0].item() == steps[1].item() == 8


def _run(tmp: Path, name: str, steps: int, every: int) -> dict:
    main(TINY + ["--max-steps", str(steps), "--checkpoint-every", str(every), "--out", str(tmp / name),
                 "--run-dir", str(tmp / f"run-{name}")])
    return json.loads((tmp / f"{name}.json").read_text())


def test_resume_continues_from_the_saved_step(tmp_path: Path) -> None:
    first = _run(tmp_path, "a", 6, 3)
    assert first["steps"] == 6 and first["finished"]
    state = json.loads((tmp_path / "run-a" / "state.json").read_text())
    assert state["step"] == 6
    resumed = _run(tmp_path, "a", 10, 3)  # same run dir: picks up at step 6
    assert resumed["steps"] == 10
    assert [e["step"] for e in resumed["loss_log"]] == list(range(1, 11))
    assert resumed["loss_log"][:6] == first["loss_log"]
    assert [(i["from_step"], i["to_step"]) for i in resumed["invocations"]] == [(0, 6), (6, 10)]
    straight = _run(tmp_path, "b", 10, 100)
    # Per-step seeding: the interrupted run makes the same draws, so the weights are identical.
    assert [e["loss"] for e in straight["loss_log"]] == [e["loss"] for e in resumed["loss_log"]]
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ck = load_checkpoint(tmp_path / "a")
    assert ck.card["command"].startswith("python -m diffusion_core.train --dataset circles")
    assert {"python", "torch"} <= set(ck.card["versions"]) and ck.card["hardware"]["cores"] >= 1


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_takes_bfloat16_only_where_the_cpu_computes_it(monkeypatch, recwarn, native: bool) -> None:
    monkeypatch.setattr(train_module, "native_bfloat16", lambda device: native)
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is native
    assert resolve_amp("none", cpu) is False
    assert not recwarn.list
    if native:
        assert resolve_amp("bf16", cpu) is True and not recwarn.list
    else:  # asked for explicitly, it is kept, with a warning that it is emulated here
        with pytest.warns(UserWarning, match="bfloat16 is emulated"):
            assert resolve_amp("bf16", cpu) is True


@pytest.mark.parametrize("native", [True, False])
def test_a_run_records_the_autocast_it_used(tmp_path: Path, monkeypatch, native: bool) -> None:
    monkeypatch.setattr(train_module, "native_bfloat16", lambda device: native)
    main([*TINY, "--amp", "auto", "--max-steps", "1", "--out", str(tmp_path / "a")])
    card = json.loads((tmp_path / "a.json").read_text())
    assert card["train_config"]["amp"] == "auto" and card["invocations"][-1]["autocast"] == ("bf16" if native else "none")
    assert card["hardware"]["native_bfloat16"] is native


def test_resume_refuses_a_different_model(tmp_path: Path) -> None:
    _run(tmp_path, "c", 2, 1)
    with pytest.raises(ValueError, match="was trained with base_channels=8, not 16"):
        main([*TINY, "--base-channels", "16", "--max-steps", "3", "--out", str(tmp_path / "c"),
              "--run-dir", str(tmp_path / "run-c")])


def test_bad_options_exit_with_a_message(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--dataset", "cifar"])
    assert "invalid choice: 'cifar'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "huge"])
    assert "unknown model preset 'huge'" in capsys.readouterr().err


def test_two_cpu_processes_under_torchrun_agree(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diffusion_core.train", *TINY, "--max-steps", "4", "--out", str(tmp_path / "ddp"),
           "--run-dir", str(tmp_path / "run-ddp")]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=300, capture_output=True)
    card = json.loads((tmp_path / "ddp.json").read_text())
    digests = card["ddp_rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert card["hardware"]["processes"] == 2 and card["images_seen"] == 4 * 4 * 2
    assert card["command"].startswith("torchrun --nproc_per_node=2 -m diffusion_core.train")
    # Rank 0 draws what a single process draws (the same first loss, before any update), and rank 1
    # draws other batches (seeded by rank) whose gradients, averaged in, move the weights elsewhere:
    single = _run(tmp_path, "single", 4, 100)
    assert card["loss_log"][0]["loss"] == pytest.approx(single["loss_log"][0]["loss"], rel=1e-3)
    ddp_w, single_w = load_file(str(tmp_path / "ddp.safetensors")), load_file(str(tmp_path / "single.safetensors"))
    assert ddp_w.keys() == single_w.keys()
    assert max((ddp_w[k] - single_w[k]).abs().max().item() for k in ddp_w) > 1e-4


def test_raw_weights_export_reads_the_run_that_made_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """bench/raw_weights.py: the run's raw weights as a loadable checkpoint, refused for another run's card."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from raw_weights import export_raw

    _run(tmp_path, "a", 3, 3)
    _run(tmp_path, "b", 2, 2)
    card_a = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps({**card_a, "evaluation": {"ddim-50": {"fd": 1.0}}}))  # not the raw weights'
    export_raw(tmp_path / "run-a", tmp_path / "a", tmp_path / "raw")
    state = load_file(str(tmp_path / "run-a" / "state.safetensors"))
    raw = load_checkpoint(tmp_path / "raw")  # passes the SHA-256 check
    assert raw.card["weights"].endswith("at step 3") and "evaluation" not in raw.card
    shipped = load_file(str(tmp_path / "a.safetensors"))
    for k, v in load_file(str(tmp_path / "raw.safetensors")).items():
        assert torch.equal(v, state[f"model.{k}"].float())
    assert any(not torch.equal(shipped[k], state[f"model.{k}"].float()) for k in shipped)  # EMA != raw
    with pytest.raises(SystemExit, match="not the run that made that checkpoint"):
        export_raw(tmp_path / "run-a", tmp_path / "b", tmp_path / "raw-b")


def test_weights_dtype_float16_stores_the_finished_run_in_half_the_bytes(tmp_path: Path) -> None:
    """--weights-dtype float16 on a finished run (same run dir, nothing left to train) writes the same EMA
    weights again, rounded to float16: how a finished run is stored in half the bytes."""
    full = _run(tmp_path, "a", 4, 4)
    w = tmp_path / "a.safetensors"
    want, size = load_file(str(w)), w.stat().st_size
    main(TINY + ["--max-steps", "4", "--checkpoint-every", "4", "--out", str(tmp_path / "a"),
                 "--run-dir", str(tmp_path / "run-a"), "--weights-dtype", "float16"])
    card = json.loads((tmp_path / "a.json").read_text())
    assert card["steps"] == 4 and card["loss_log"] == full["loss_log"]
    assert [(i["from_step"], i["to_step"]) for i in card["invocations"]] == [(0, 4), (4, 4)]
    assert card["train_config"]["weights_dtype"] == "float16" and w.stat().st_size < 0.55 * size
    got = load_file(str(w))
    assert all(got[k].dtype == torch.float16 and torch.equal(got[k], v.half()) for k, v in want.items())


def test_overrides_give_the_net_they_name() -> None:
    """The preset's shape overridden from the command line, e.g. bench/arch.py's `p4 128`."""
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, TrainConfig)
    args = "--model fast --base-channels 128 --channel-mults 1 --num-res-blocks 2 --patch-size 4"
    ns = parser.parse_args(args.split())
    cfg = dataclass_from_args(TrainConfig, ns).model_config()
    assert (cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks, cfg.patch_size) == (128, (1,), 2, 4)
    assert cfg.attention and cfg.num_classes == 10  # the rest from the preset and the dataset
    assert TrainConfig(model="fast").model_config().patch_size == 1
