"""Checkpoints: exact round trip, and clear errors for missing, corrupt, tampered or mismatched files."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_core.checkpoints import (
    CheckpointError,
    autoguidance_weight,
    checkpoint_paths,
    discover_checkpoints,
    load_checkpoint,
    load_guide,
    read_card,
    save_checkpoint,
    sha256_file,
    update_card,
    write_card,
)
from diffusion_core.model import build_model, preset
from diffusion_core.schedules import ScheduleConfig


def _copy(src: Path, dst_dir: Path) -> Path:
    w, c = checkpoint_paths(src)
    shutil.copy(w, dst_dir / w.name)
    shutil.copy(c, dst_dir / c.name)
    return dst_dir / src.name


def test_round_trip_is_exact(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = load_checkpoint(tiny_checkpoint)
    out = tmp_path / "again"
    save_checkpoint(out, ck.model, ck.model_config, ck.schedule.config, ck.dataset, {"note": "x"})
    ck2 = load_checkpoint(out)
    assert ck2.model_config == ck.model_config and ck2.schedule.config == ck.schedule.config
    for (k, a), (k2, b) in zip(ck.model.state_dict().items(), ck2.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(ck.model(x, torch.tensor([3, 900])), ck2.model(x, torch.tensor([3, 900])))
    assert ck2.card["note"] == "x" and ck2.name == "again"
    for p in (out, str(out) + ".json", str(out) + ".safetensors"):  # any spelling of the path
        assert load_checkpoint(p).name == "again"


def test_float16_weights_load_as_float32(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A float16 file: half the bytes, read back as float32 holding the weights rounded to float16."""
    ck = load_checkpoint(tiny_checkpoint)
    save_checkpoint(tmp_path / "half", ck.model, ck.model_config, ck.schedule.config, ck.dataset, weights_dtype="float16")
    half = load_checkpoint(tmp_path / "half")
    size = {n: checkpoint_paths(p)[0].stat().st_size for n, p in (("full", tiny_checkpoint), ("half", tmp_path / "half"))}
    assert size["half"] < 0.55 * size["full"], size
    for (k, a), b in zip(ck.model.state_dict().items(), half.model.state_dict().values(), strict=True):
        assert b.dtype == torch.float32 and torch.equal(b, a.half().float()), k
    assert any(not torch.equal(a, b) for a, b in zip(ck.model.state_dict().values(), half.model.state_dict().values()))
    with pytest.raises(ValueError, match="weights_dtype"):
        save_checkpoint(tmp_path / "x", ck.model, ck.model_config, ck.schedule.config, ck.dataset, weights_dtype="int8")
    big = build_model(ck.model_config)
    with torch.no_grad():
        next(big.parameters())[0] = 1e5  # past float16's 65504: refused rather than written as inf
    with pytest.raises(ValueError, match="does not fit float16"):
        save_checkpoint(tmp_path / "x", big, ck.model_config, ck.schedule.config, ck.dataset, weights_dtype="float16")
    # Any other dtype in a file is refused with its name, not cast silently.
    w, _ = checkpoint_paths(tmp_path / "half")
    save_file({k: v.bfloat16() for k, v in load_file(str(w)).items()}, str(w))
    card = read_card(tmp_path / "half")
    card["weights_sha256"] = sha256_file(w)
    write_card(tmp_path / "half", card)
    with pytest.raises(CheckpointError, match="stored as.*bfloat16"):
        load_checkpoint(tmp_path / "half")


def test_loaded_model_is_frozen(tiny_checkpoint: Path) -> None:
    ck = load_checkpoint(tiny_checkpoint)
    assert not ck.model.training
    assert not any(p.requires_grad for p in ck.model.parameters())


def test_missing_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothere\.json: model card not found"):
        load_checkpoint(tmp_path / "nothere")
    p = _copy(tiny_checkpoint, tmp_path)
    checkpoint_paths(p)[0].unlink()
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: weights file not found"):
        load_checkpoint(p)


def test_truncated_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    p = _copy(tiny_checkpoint, tmp_path)
    w = checkpoint_paths(p)[0]
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: SHA-256 .* truncated, corrupt or was replaced"):
        load_checkpoint(p)


def test_tampered_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    p = _copy(tiny_checkpoint, tmp_path)
    w = checkpoint_paths(p)[0]
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(p)


def test_not_safetensors_even_with_matching_hash(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A pickle (or anything else) in place of the weights is refused without being unpickled."""
    p = _copy(tiny_checkpoint, tmp_path)
    w, c = checkpoint_paths(p)
    torch.save({"a": torch.zeros(1)}, w)  # a zip/pickle file
    card = json.loads(c.read_text())
    from diffusion_core.checkpoints import sha256_file

    card["weights_sha256"] = sha256_file(w)
    c.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: not a readable safetensors file"):
        load_checkpoint(p)


def test_config_mismatch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    p = _copy(tiny_checkpoint, tmp_path)
    c = checkpoint_paths(p)[1]
    card = json.loads(c.read_text())
    card["model"]["base_channels"] = 16
    c.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: weights do not match the model config in tiny\.json"):
        load_checkpoint(p)


def test_bad_card(tiny_checkpoint: Path, tmp_path: Path) -> None:
    p = _copy(tiny_checkpoint, tmp_path)
    c = checkpoint_paths(p)[1]
    c.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tiny\.json: not valid JSON"):
        load_checkpoint(p)
    c.write_text(json.dumps({"format": "diffusion-explorer/1"}))
    with pytest.raises(CheckpointError, match=r"tiny\.json: missing field\(s\) dataset, model, schedule, weights_sha256"):
        load_checkpoint(p)


def test_unknown_schedule_in_card(tmp_path: Path) -> None:
    cfg = preset("lesson", base_channels=8)
    save_checkpoint(tmp_path / "m", build_model(cfg), cfg, ScheduleConfig(), "mnist")
    c = checkpoint_paths(tmp_path / "m")[1]
    card = json.loads(c.read_text())
    card["schedule"]["name"] = "sigmoid"
    c.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"m\.json: invalid model or schedule config \(unknown schedule 'sigmoid'"):
        load_checkpoint(tmp_path / "m")


def _save_guide(directory: Path, name: str, schedule: str = "linear", num_classes: int = 0) -> None:
    cfg = preset("lesson", base_channels=8, num_classes=num_classes)
    save_checkpoint(directory / name, build_model(cfg), cfg, ScheduleConfig(schedule, 1000), "mnist", {})


def test_card_updates_wait_for_each_other(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Two evaluations writing one card at once (read, add, write) must not drop either result."""
    path = _copy(tiny_checkpoint, tmp_path)
    held = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another process in the middle of its update
    writer = threading.Thread(target=update_card, args=(path, lambda c: c.setdefault("evaluation", {}).update(b=2)))
    writer.start()
    time.sleep(0.3)
    assert writer.is_alive(), "update_card did not wait for the lock"
    update = read_card(path)
    update.setdefault("evaluation", {})["a"] = 1
    write_card(path, update)  # the other process's write, made while it holds the lock
    os.close(held)
    writer.join(timeout=10)
    assert read_card(path)["evaluation"] == {"a": 1, "b": 2}


def test_a_card_names_its_autoguidance_guide(tiny_checkpoint: Path, tmp_path: Path) -> None:
    main = _copy(tiny_checkpoint, tmp_path)
    with pytest.raises(CheckpointError, match="names no autoguidance guide"):
        load_guide(main)
    assert autoguidance_weight(read_card(main)) is None
    _save_guide(tmp_path, "tiny-guide")
    card = read_card(main)
    write_card(main, {**card, "autoguidance": {"guide": "tiny-guide", "weight": 1.5}})
    assert autoguidance_weight(read_card(main)) == 1.5
    guide = load_guide(main)
    assert guide.name == "tiny-guide" and not guide.model_config.conditional
    assert discover_checkpoints(tmp_path) == [main]  # the guide belongs to the model that names it


def test_a_guide_outside_the_folder_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    main = _copy(tiny_checkpoint, tmp_path / "sub")
    _save_guide(tmp_path, "tiny-guide")  # beside the folder, not in it
    write_card(main, {**read_card(main), "autoguidance": {"guide": "../tiny-guide", "weight": 2.0}})
    with pytest.raises(CheckpointError, match="must be a checkpoint name in the same folder"):
        load_guide(main)


@pytest.mark.parametrize("schedule,num_classes,message", [
    ("cosine", 0, "same data, image format and noise schedule"),
    ("linear", 10, "guide tiny-guide is class-conditional"),
])
def test_a_guide_that_does_not_fit_is_refused(tiny_checkpoint: Path, tmp_path: Path, schedule: str,
                                              num_classes: int, message: str) -> None:
    main = _copy(tiny_checkpoint, tmp_path)
    _save_guide(tmp_path, "tiny-guide", schedule, num_classes)
    write_card(main, {**read_card(main), "autoguidance": {"guide": "tiny-guide", "weight": 2.0}})
    with pytest.raises(CheckpointError, match=message):
        load_guide(main)


def test_shipped_checkpoints_load_with_their_cards_and_guides() -> None:
    """What the README promises of checkpoints/: every model loads, is small, and says how it was made."""
    directory = Path(__file__).resolve().parents[1] / "checkpoints"
    found = discover_checkpoints(directory)
    assert {p.name for p in found} == {"mnist-linear", "mnist-cosine", "circles", "circles-lesson"}
    for path in found:
        ckpt = load_checkpoint(path)
        weights, _ = checkpoint_paths(path)
        assert weights.stat().st_size <= 10 * 2**20
        for key in ("command", "seed", "versions", "hardware", "wall_time_s", "loss_log"):
            assert ckpt.card.get(key) not in (None, "", [], {}), f"{path.name}: card lacks {key}"
        if ckpt.dataset == "mnist":  # the MNIST models ship an autoguidance guide for unconditional sampling
            guide = load_guide(path)
            assert guide.card["command"] and guide.card["finished"]
            assert autoguidance_weight(ckpt.card) >= 1.0
