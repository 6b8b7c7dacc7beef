"""The app through its public API: gradio_client against the app launched on localhost in this process.

Random-weight checkpoints stand in for the trained ones (the app must not depend on training
progress): `tiny` (the lesson net, fast) and `slow` (the residual "fast" preset, ~10x the work per
step), both MNIST-shaped and class-conditional, and `uncond`, an unconditional MNIST-shaped lesson net.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize
from diffusion_core.checkpoints import load_checkpoint, load_guide, read_card, save_checkpoint, write_card
from diffusion_core.forward import q_sample
from diffusion_core.inference import InferenceModel, resolve_precision
from diffusion_core.model import build_model, preset
from diffusion_core.render import to_uint8
from diffusion_core.runtime import torch_thread
from diffusion_core.samplers import AutoGuided, SamplerConfig, initial_noise, make_generator, sample
from diffusion_core.schedules import ScheduleConfig, make_schedule

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from explorer import build_app, common, launch_kwargs  # noqa: E402
from explorer.common import MAX_UI_SEED, as_int, friendly  # noqa: E402
from explorer.images import convert_image, examples  # noqa: E402
from diffusion_core.checkpoints import discover_checkpoints  # noqa: E402
from explorer.state import METRICS, load_registry  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoints(directory: Path) -> Path:
    torch.manual_seed(0)
    for name, cfg in (("tiny", preset("lesson", base_channels=8, num_classes=10)),
                      ("slow", preset("fast", num_classes=10)),
                      ("uncond", preset("lesson", base_channels=8, num_classes=0))):
        save_checkpoint(directory / name, randomize(build_model(cfg)), cfg, ScheduleConfig("linear", 1000), "mnist")
    # `tiny`'s autoguidance guide: loaded with it, never listed as a model of its own.
    cfg = preset("lesson", base_channels=8, num_classes=0)
    save_checkpoint(directory / "tiny-guide", randomize(build_model(cfg), seed=1), cfg, ScheduleConfig("linear", 1000),
                    "mnist")
    write_card(directory / "tiny", {**read_card(directory / "tiny"), "autoguidance": {"guide": "tiny-guide", "weight": 1.5}})
    # Not a diffusion checkpoint: must be skipped by discovery.
    (directory / "classifier-x.json").write_text('{"format": "something-else"}')
    return directory


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def reg(ckpt_dir: Path):
    return load_registry(ckpt_dir)


@pytest.fixture(scope="module")
def url(reg):
    demo = build_app(reg)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture()
def client(url: str) -> Client:
    return Client(url, verbose=False)


def read_png(path: str, size: int) -> np.ndarray:
    """An upscaled display PNG back at model resolution [size x size] (nearest: take every k-th pixel)."""
    a = np.asarray(Image.open(path))
    k = a.shape[0] // size
    assert a.shape[0] == k * size, (a.shape, size)
    return a[::k, ::k]


def reverse_args(ckpt="tiny", sampler="ddim", steps=10, eta=0.0, seed=0, num=2, digit="3", guidance=2.0,
                 autoguidance=1.0):
    return (ckpt, sampler, steps, eta, seed, num, digit, guidance, autoguidance)


def test_discovery_skips_non_diffusion_cards(ckpt_dir: Path) -> None:
    assert sorted(p.name for p in discover_checkpoints(ckpt_dir)) == ["slow", "tiny", "uncond"]


@pytest.mark.parametrize("t, schedule, seed", [(0, "linear", 7), (250, "linear", 7), (600, "cosine", 7),
                                               (999, "cosine", MAX_UI_SEED)])
def test_forward_scrub_matches_q_sample(client: Client, t: int, schedule: str, seed: int) -> None:
    client.predict("mnist-3", "mnist", api_name="/forward_example")
    xt_path, eps_path, info, *_ = client.predict(schedule, seed, t, api_name="/forward_scrub")
    x0 = convert_image(Image.open(examples()["mnist-3"]), 1, 28)[None]
    eps = torch.randn((1, 1, 28, 28), generator=make_generator(seed))
    expected = to_uint8(q_sample(make_schedule(schedule), x0, torch.tensor([t]), eps))[0, ..., 0]
    got = read_png(xt_path, 28)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert abs(got.mean() - expected.mean()) < 0.5 and abs(got.std() - expected.std()) < 0.5
    assert np.array_equal(read_png(eps_path, 28), to_uint8(eps)[0, ..., 0])
    assert f"t = {t}" in info


def test_forward_changes_with_t_and_schedule(client: Client) -> None:
    client.predict("mnist-0", "mnist", api_name="/forward_example")
    a = read_png(client.predict("linear", 0, 300, api_name="/forward_scrub")[0], 28)
    b = read_png(client.predict("linear", 0, 700, api_name="/forward_scrub")[0], 28)
    c = read_png(client.predict("cosine", 0, 300, api_name="/forward_scrub")[0], 28)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_upload_is_converted_and_bad_files_refused(client: Client, tmp_path: Path) -> None:
    img = tmp_path / "wide.png"
    Image.new("RGB", (120, 60), (255, 0, 0)).save(img)
    _, note = client.predict(handle_file(str(img)), "mnist", api_name="/forward_upload")
    assert "120×60 RGB → 28×28 greyscale" in note
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"hello, not a picture")
    with pytest.raises(AppError, match="could not read"):
        client.predict(handle_file(str(bad)), "mnist", api_name="/forward_upload")


def test_chain_and_jump_agree(client: Client) -> None:
    client.predict("mnist-7", "mnist", api_name="/forward_example")
    table, _ = client.predict("linear", 400, 400, api_name="/forward_chain")
    row = next(line for line in table.splitlines() if line.startswith("| std"))
    chain_std, jump_std, theory = (float(v) for v in row.strip("| ").split("|")[1:4])
    assert abs(chain_std - theory) < 0.02 and abs(jump_std - theory) < 0.02


def test_chain_streams_its_progress_before_the_table(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain can take tens of seconds: its handler yields progress (freeing the torch thread for other
    visitors between yields) and ends with the table and the three mean images."""
    monkeypatch.setattr(common, "MIN_FRAME_INTERVAL_S", 0.0)
    fns = {f.api_name: f.fn for f in build_app(reg).fns.values()}
    state, _, _ = fns["forward_example"]("mnist-7", "mnist")
    outs = list(fns["forward_chain"](state, "linear", 4, 20))
    assert [o[0] for o in outs[:-1]] == [f"Running the Markov chain on 20 samples: step {s} / 5 …" for s in range(1, 6)]
    table, imgs = outs[-1]
    assert table.startswith("At t = 4, 20 samples each way") and len(imgs) == 3


def test_sampling_streams_before_final(client: Client) -> None:
    job = client.submit(*reverse_args("slow", steps=40, num=16), api_name="/reverse_sample")
    seen_while_running = False
    while not job.done():
        if job.outputs():
            seen_while_running = seen_while_running or not job.done()
        time.sleep(0.01)
    outs = job.outputs()
    assert seen_while_running and len(outs) >= 2
    assert "step 1 / 40" in outs[0][2]
    assert "step 40 / 40" in outs[-1][2] and "→ clean x₀" in outs[-1][2]  # not the code's t_prev = -1
    assert len(outs[-1]) == 6 and str(outs[-1][5]).endswith(".gif")  # (x_t, x0, status, chart, slider, GIF)
    assert Image.open(outs[-1][5]).n_frames == 40


def test_cancel_stops_the_server_side_generator(client: Client) -> None:
    n_before = len(METRICS.runs)
    job = client.submit(*reverse_args("slow", sampler="ddpm", steps=1000, num=16, digit="any"),
                        api_name="/reverse_sample")
    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline:
        time.sleep(0.02)
    assert job.outputs(), "no frame streamed"
    job.cancel()
    rec = METRICS.runs[n_before]
    deadline = time.time() + 30
    while not rec.closed and time.time() < deadline:
        time.sleep(0.05)
    assert rec.closed, "the generator was not closed"
    done = rec.done
    time.sleep(1.0)
    assert rec.done == done < rec.planned == 1000


def test_a_stopped_run_ends_at_the_frame_last_shown(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop between two recorded frames: the status, scrub slider and GIF end at the step the visitor
    last saw, not at the last of the (evenly spread) recorded frames."""
    monkeypatch.setattr(common, "MIN_FRAME_INTERVAL_S", 0.0)  # every step is shown
    fns = {f.api_name: f.fn for f in build_app(reg).fns.values()}
    gen = fns["reverse_sample"](*reverse_args(sampler="ddpm", steps=1000, num=1))
    for _ in range(13):  # 1000 steps keep every 10th frame: steps 1 and 11 are recorded, 13 is not
        shown = next(gen)
    gen.close()
    assert shown[2].startswith("**step 13 / 1000**")
    xt, x0, note, traj, _chart, slider, _gif = fns["reverse_stop"](shown[3])
    assert note.startswith("**step 13 / 1000**") and "stopped" in note
    assert [f[0] for f in traj["frames"]] == [0, 10, 12] and slider.maximum == 2
    assert np.array_equal(xt, shown[0]) and np.array_equal(x0, shown[1])


def test_a_new_run_first_clears_the_previous_runs_results(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first streamed frame of a run clears what only the previous run's end had produced: Reverse's
    chart, scrub slider and GIF, Compare's difference image and its mean; later frames leave them be."""
    monkeypatch.setattr(common, "MIN_FRAME_INTERVAL_S", 0.0)  # every step is shown
    fns = {f.api_name: f.fn for f in build_app(reg).fns.values()}
    skip = {"__type__": "update"}
    gen = fns["reverse_sample"](*reverse_args(steps=10, num=1))
    first, second = next(gen), next(gen, None)
    gen.close()
    assert first[4] is None and first[5] == {"__type__": "update", "visible": False} and first[6] is None
    assert second is None or second[4:] == (skip,) * 3
    gen = fns["compare"]("tiny", 20, 5, 0.0, 1, 2, "any", 1.0)
    first = next(gen)
    gen.close()
    assert first[4] is None and "shown when both samplers finish" in first[5]


def test_same_seed_same_images(client: Client, ckpt_dir: Path) -> None:
    args = reverse_args(sampler="ddim", steps=10, eta=0.5, seed=123, num=4)
    a = client.predict(*args, api_name="/reverse_sample")
    b = client.predict(*args, api_name="/reverse_sample")
    c = client.predict(*reverse_args(sampler="ddim", steps=10, eta=0.5, seed=124, num=4), api_name="/reverse_sample")
    pa, pb, pc = (np.asarray(Image.open(r[0])) for r in (a, b, c))
    assert np.array_equal(pa, pb) and not np.array_equal(pa, pc)
    # ... and they are exactly what the core produces from that seed.
    ck = load_checkpoint(ckpt_dir / "tiny")
    model = InferenceModel(ck.model, resolve_precision("auto", torch.device("cpu")))  # the app's path
    g = make_generator(123)
    x_T = initial_noise((4, 1, 28, 28), g)
    with torch.inference_mode():
        x = sample(model, ck.schedule, x_T, SamplerConfig("ddim", 10, eta=0.5, guidance=2.0),
                   torch.full((4,), 3), g)
    from explorer.images import display
    assert np.array_equal(pa, display(x))


def test_autoguidance_guides_any_digit_as_the_core_does(client: Client, reg, ckpt_dir: Path) -> None:
    assert reg.guides["tiny"].name == "tiny-guide" and reg.guides["tiny"].weight == 1.5
    assert "tiny-guide" not in reg.names and set(reg.guides) == {"tiny"}
    def image(**kw) -> np.ndarray:
        return np.asarray(Image.open(client.predict(*reverse_args(steps=5, seed=4, num=2, **kw),
                                                    api_name="/reverse_sample")[0]))

    got = {w: image(digit="any", autoguidance=w) for w in (0.0, 1.0, 2.5)}
    ck, guide = load_checkpoint(ckpt_dir / "tiny"), load_guide(ckpt_dir / "tiny")
    precision = resolve_precision("auto", torch.device("cpu"))
    model, guide_model = InferenceModel(ck.model, precision), InferenceModel(guide.model, precision)
    from explorer.images import display

    for w, served in got.items():
        g = make_generator(4)
        x_T = initial_noise((2, 1, 28, 28), g)
        with torch.inference_mode():
            x = sample(AutoGuided(model, guide_model, w), ck.schedule, x_T, SamplerConfig("ddim", 5), None, g)
        assert np.array_equal(served, display(x)), w
    assert not np.array_equal(got[1.0], got[2.5])
    g = make_generator(4)
    x_T = initial_noise((2, 1, 28, 28), g)
    with torch.inference_mode():  # w = 0 shows the guide's own samples
        assert np.array_equal(got[0.0], display(sample(guide_model, ck.schedule, x_T, SamplerConfig("ddim", 5), None, g)))
    # A chosen digit is class-conditional sampling: autoguidance does not apply.
    assert np.array_equal(image(digit="3", autoguidance=1.0), image(digit="3", autoguidance=2.5))
    with pytest.raises(AppError, match="less than minimum value 0"):  # the slider refuses it
        image(digit="any", autoguidance=-0.5)
    # Choosing a model sets the slider to its card's weight; it shows only with a guide and digit "any",
    # and the classifier-free guidance scale only for a chosen digit. Choosing a digit swaps the two.
    fns = {f.api_name: f.fn for f in build_app(reg).fns.values()}
    hidden, shown = {"__type__": "update", "visible": False}, {"__type__": "update", "visible": True}
    for tab in ("reverse", "compare"):
        on_model, on_digit = fns[f"{tab}_model"], fns[f"{tab}_digit"]
        assert on_model("tiny", "any") == (shown, hidden, shown | {"value": 1.5})
        assert on_model("tiny", "3") == (shown, shown, hidden | {"value": 1.5})
        assert on_model("uncond", "3") == (hidden | {"value": "any"}, hidden, hidden | {"value": 1.0})
        assert on_digit("tiny", "any") == (hidden, shown) and on_digit("tiny", "7") == (shown, hidden)
        assert on_digit("uncond", "any") == (hidden, hidden)


def test_compare_gives_both_samplers_one_x_T(client: Client) -> None:
    ddpm_img, ddim_img, ddpm_md, ddim_md, diff_img, diff_md = client.predict(
        "tiny", 20, 5, 0.0, 1, 2, "any", 1.0, api_name="/compare")
    assert "step 20 / 20" in ddpm_md and "step 5 / 5" in ddim_md and "mean |DDPM − DDIM|" in diff_md
    assert "DDIM took 25.0% of DDPM's steps" in diff_md
    assert "t = clean x₀" in ddpm_md and "t = clean x₀" in ddim_md  # not the code's t_prev = -1
    single = client.predict(*reverse_args(sampler="ddim", steps=5, seed=1, digit="any", guidance=1.0),
                            api_name="/reverse_sample")
    assert np.array_equal(np.asarray(Image.open(ddim_img)), np.asarray(Image.open(single[0])))


def test_schedules_samples_every_mnist_model_at_each_step_count_from_one_seed(client: Client, reg) -> None:
    from explorer.schedules_tab import GRID, STEPS

    def run(seed: int, digit: str) -> list[tuple[np.ndarray, str]]:
        return [(np.asarray(Image.open(item["image"])), item["caption"])
                for item in client.predict(seed, digit, api_name="/schedules_sample")]

    a, b, c = run(3, "any"), run(3, "any"), run(4, "any")
    assert sorted(reg.names) == ["slow", "tiny", "uncond"]  # all MNIST, in the registry's order
    assert [cap for _, cap in a] == [f"{m} (linear) · DDIM {n}" for m in reg.names for n in STEPS]
    for img, _ in a:  # GRID x GRID samples of 28 px with 1 px padding, upscaled: a square grid
        assert img.shape[0] == img.shape[1] and img.shape[0] % (GRID * 29 + 1) == 0
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))  # one seed, the same images
    assert not np.array_equal(a[0][0], c[0][0])
    guided = run(3, "7")
    for (g, cap), (x, _) in zip(guided, a):  # `uncond` has no labels: it draws any digit
        assert np.array_equal(g, x) == cap.startswith("uncond"), cap


def test_bad_settings_are_clear_errors(url: str) -> None:
    client = Client(url, verbose=False)  # a fresh session: nothing recorded yet
    with pytest.raises(AppError, match="run the sampler first"):
        client.predict(0, api_name="/reverse_scrub")
    with pytest.raises(AppError, match="minimum value 1"):
        client.predict(*reverse_args(steps=0), api_name="/reverse_sample")
    with pytest.raises(AppError, match="minimum value 0"):
        client.predict(*reverse_args(seed=-1), api_name="/reverse_sample")


def test_scrub_replays_recorded_frames(client: Client) -> None:
    final = client.predict(*reverse_args(steps=12), api_name="/reverse_sample")
    first = client.predict(0, api_name="/reverse_scrub")
    last = client.predict(11, api_name="/reverse_scrub")
    assert "step 1 / 12" in first[2] and "step 12 / 12" in last[2]
    assert np.array_equal(np.asarray(Image.open(last[0])), np.asarray(Image.open(final[0])))


def test_all_torch_work_runs_on_the_torch_thread(client: Client, reg) -> None:
    """Gradio runs handlers on many worker threads; the app's forward passes must all run on one
    (diffusion_core.runtime.TorchThread: a second thread's OpenMP pool slows every forward 1.4x-1.9x)."""
    model = reg.get("tiny").model
    threads: list[int] = []
    original = model.forward

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    model.forward = recording
    try:
        for _ in range(2):
            client.predict(*reverse_args(steps=10, guidance=1.0), api_name="/reverse_sample")
        client.predict("tiny", 7, 5, 0.0, 0, 1, "3", 1.0, api_name="/compare")
    finally:
        del model.forward
    assert len(threads) == 2 * 10 + 7 + 5
    assert set(threads) == {torch_thread().ident}
    assert torch.get_num_threads() == 1  # the test's own thread was confined by load_registry
    assert torch_thread().run(torch.get_num_threads) == reg.threads


def test_the_app_leaves_a_core_to_a_browser_on_the_same_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that only this machine can reach (Gradio's default host) shares its cores with the
    visitor's browser: one torch thread fewer than the cores. A server reachable from elsewhere keeps them."""
    from explorer.state import app_threads, serving_threads

    assert [serving_threads(n, None) for n in (1, 2, 8)] == [1, 1, 7]
    assert serving_threads(2, "127.0.0.1") == serving_threads(2, "localhost") == 1
    assert serving_threads(2, "0.0.0.0") == 2 and serving_threads(8, "0.0.0.0") == 8
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setattr("explorer.state.available_cores", lambda: 4)
    assert app_threads() == 4
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    assert app_threads() == 3
    monkeypatch.setenv("EXPLORER_THREADS", "2")
    assert app_threads() == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("EXPLORER_THREADS", bad)
        with pytest.raises(ValueError, match="EXPLORER_THREADS"):
            app_threads()


def test_handlers_run_on_the_torch_thread() -> None:
    def plain() -> int:
        return threading.get_ident()

    def streaming():
        yield threading.get_ident()
        yield threading.get_ident()

    assert friendly(plain)() == torch_thread().ident
    assert set(friendly(streaming)()) == {torch_thread().ident}


def test_whole_numbers_pass_exactly_and_fractions_are_refused() -> None:
    assert as_int("seed", 2**60 + 1) == 2**60 + 1  # through a float it would come back as 2^60
    assert as_int("steps", 3.0) == 3 and as_int("steps", "12") == 12
    for bad in (2.5, True, None, "x", float("nan")):
        with pytest.raises(ValueError, match="must be a whole number"):
            as_int("steps", bad)


def test_quality_table_groups_a_settings_seeds_into_one_row() -> None:
    from types import SimpleNamespace

    from explorer.schedules_tab import quality_table

    base = {"sampler": "ddim", "steps": 50, "eta": 1.0, "spacing": "trailing", "clip_x0": True, "num": 1000,
            "labels": None, "guidance": None, "precision": "float32", "autoguidance": 1.5, "guide": "g"}
    evaluation = {
        "a": {**base, "seed": 1, "confident": 0.95},
        "b": {**base, "seed": 0, "confident": 0.97},
        "c": {**base, "seed": 0, "confident": 0.5, "autoguidance": 0.0},  # the guide alone: its own row
        "d": {**base, "seed": 0, "confident": 0.9, "spacing": "leading"},  # another setting: its own row
    }
    card = {"evaluation": evaluation, "schedule": {"name": "linear"}}
    table = quality_table(SimpleNamespace(checkpoints={"m": SimpleNamespace(card=card)}))
    rows = [r for r in table.splitlines() if r.startswith("| m ")]
    assert len(rows) == 3
    assert "DDIM-50 · η = 1 · autoguided w = 1.5 · n = 1000 · float32 · seeds 0 / 1" in rows[0]
    assert "confident ↑ 0.97 / 0.95" in rows[0]  # in seed order
    assert "the guide alone" in rows[1] and "confident ↑ 0.5 |" in rows[1]
    assert "leading spacing" in rows[2]
