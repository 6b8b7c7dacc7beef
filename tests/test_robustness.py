"""Robustness (issue 6): bad input, cancellation and disconnects, determinism across processes, safe loading.

One app is launched on localhost over the random-weight checkpoints of test_app.make_checkpoints plus
four broken ones (tampered, truncated, a pickle renamed .safetensors with and without a matching hash);
the app must skip those with a message naming the file, and serve the others. Load (many visitors
at once) is measured by bench/load.py, not here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_app import free_port, make_checkpoints, reverse_args

gradio_client = pytest.importorskip("gradio_client")
import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from diffusion_core.samplers import initial_noise, make_generator  # noqa: E402
from explorer import build_app, header, launch_kwargs  # noqa: E402
from explorer.images import MAX_PIXELS, convert_image, open_image, write_gif  # noqa: E402
from explorer.state import METRICS, load_registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKER = Path("/tmp") / f"diffusion-explorer-unpickled-{os.getpid()}"  # created only if a pickle is ever loaded


class Evil:
    """Unpickling this creates MARKER: proof that something unpickled a file."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def add_broken_checkpoints(d: Path) -> None:
    good_w, good_card = (d / "tiny.safetensors").read_bytes(), json.loads((d / "tiny.json").read_text())
    for name in ("tampered", "truncated", "pickled", "pickled-hashed"):
        (d / f"{name}.json").write_text(json.dumps(good_card))
    tampered = bytearray(good_w)
    tampered[-100] ^= 0xFF  # one flipped byte in the weights
    (d / "tampered.safetensors").write_bytes(bytes(tampered))
    (d / "truncated.safetensors").write_bytes(good_w[: len(good_w) // 2])
    for name in ("pickled", "pickled-hashed"):
        torch.save({"weights": torch.zeros(3), "payload": Evil()}, d / f"{name}.safetensors")
    # A card whose hash matches the pickle: the hash check passes, the safetensors parser must refuse it.
    card = dict(good_card, weights_sha256=hashlib.sha256((d / "pickled-hashed.safetensors").read_bytes()).hexdigest())
    assert "weights_sha256" in good_card
    (d / "pickled-hashed.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    add_broken_checkpoints(d)
    return d


@pytest.fixture(scope="module")
def registry(ckpt_dir: Path):
    return load_registry(ckpt_dir)


@pytest.fixture(scope="module")
def app(registry):
    demo = build_app(registry)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def url(app) -> str:
    return app[1]


@pytest.fixture(scope="module")
def session(url: str) -> Client:
    """One visitor who has picked an image (the forward endpoints need one)."""
    c = Client(url, verbose=False)
    c.predict("mnist-3", "mnist", api_name="/forward_example")
    return c


# ---------------------------------------------------------------- safe loading


def test_broken_checkpoints_are_refused_by_name_and_the_app_serves_the_rest(registry) -> None:
    assert sorted(registry.checkpoints) == ["slow", "tiny", "uncond"]
    assert sorted(registry.skipped) == ["pickled", "pickled-hashed", "tampered", "truncated"]
    for name, why in registry.skipped.items():
        assert f"{name}.safetensors" in why, why  # the message names the file
    assert "does not match" in registry.skipped["tampered"] and "does not match" in registry.skipped["truncated"]
    assert "not a readable safetensors file" in registry.skipped["pickled-hashed"]
    assert not MARKER.exists(), "a pickle was unpickled"
    assert "`tampered` was not loaded" in header(registry)  # shown to visitors, not only logged


def test_the_header_is_rendered_again_on_every_page_load(registry) -> None:
    # The background build switches checkpoints to compiled packages after start-up: a page
    # opened later must name the path that runs now, not the one at build time.
    demo = build_app(registry)
    head = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "header")
    (dep,) = [f for f in demo.fns.values() if f.outputs == [head] and any(e == "load" for _, e in f.targets)]
    assert dep.fn() == header(registry)
    registry.skipped["late"] = "late.safetensors: refused after the page was built"
    try:
        assert "`late` was not loaded" in dep.fn()
    finally:
        del registry.skipped["late"]


def test_nothing_unpickles() -> None:
    banned = re.compile(r"torch\.load\(|pickle\.loads?\(|Unpickler|weights_only\s*=\s*False|"
                        r"(?:np|numpy)\.load\(.*allow_pickle\s*=\s*True")
    for bad in ("torch.load(f)", "pickle.loads(b)", "np.load(f, allow_pickle=True)", "numpy.load(f, allow_pickle = True)"):
        assert banned.search(bad), bad  # the pattern itself catches each spelling
    sources = [ROOT / "app.py", *sorted((ROOT / "explorer").rglob("*.py")), *sorted((ROOT / "diffusion_core").rglob("*.py"))]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1)
            if banned.search(line)]
    assert len(sources) > 10 and not hits, hits


# ---------------------------------------------------------------- bad input

BIG = 8000  # an 8000x8000 upload: 64 megapixels, above MAX_PIXELS


def make_file(kind: str, d: Path) -> Path:
    p = d / {"empty": "empty.png", "corrupt": "corrupt.png", "text": "notes.png", "huge": "huge.png",
             "truncated": "half.jpg"}[kind]
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "corrupt":
        Image.new("RGB", (40, 40), (9, 9, 9)).save(p)
        b = bytearray(p.read_bytes())
        b[41:] = os.urandom(len(b) - 41)  # valid signature and IHDR (8 + 25 bytes), garbage pixel data
        p.write_bytes(bytes(b))
    elif kind == "text":
        p.write_text("name,value\nnot,an image\n")
    elif kind == "huge":
        Image.new("L", (BIG, BIG), 0).save(p, optimize=False, compress_level=1)  # small file, huge image
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p, quality=90)
        p.write_bytes(p.read_bytes()[:300])
    return p


R = reverse_args  # ("tiny", "ddim", 10 steps, eta 0, seed 0, 2 images, digit "3", guidance 2)
BAD_CALLS = [
    # (id, api name, args or a file kind for /forward_upload, a regex the message must match)
    ("upload-empty", "/forward_upload", "empty", r"empty\.png is empty \(0 bytes\)"),
    ("upload-corrupt", "/forward_upload", "corrupt", r"could not read corrupt\.png as an image: the image data is damaged"),
    ("upload-truncated-jpeg", "/forward_upload", "truncated", r"could not read half\.jpg as an image"),
    ("upload-non-image", "/forward_upload", "text", r"could not read notes\.png as an image: not a recognised image format"),
    ("upload-8000x8000", "/forward_upload", "huge", rf"huge\.png is {BIG}×{BIG} pixels \(64\.0 megapixels\).*shrink it"),
    ("scrub-t-negative", "/forward_scrub", ("linear", 0, -1), r"-1 is less than minimum value 0"),
    ("scrub-t-equals-T", "/forward_scrub", ("linear", 0, 1000), r"1000 is greater than maximum value 999"),
    ("scrub-unknown-schedule", "/forward_scrub", ("quadratic", 0, 10), r"'quadratic'.*not in the list of choices"),
    ("scrub-huge-seed", "/forward_scrub", ("linear", 2**64, 10), r"greater than maximum value 9007199254740991"),
    ("scrub-seed-2^53", "/forward_scrub", ("linear", 2**53, 10), r"9007199254740992 is greater than maximum value 9007199254740991"),
    ("scrub-negative-seed", "/forward_scrub", ("linear", -5, 10), r"less than minimum value 0"),
    ("steps-0", "/reverse_sample", R(steps=0), r"0 is less than minimum value 1"),
    ("steps-above-T", "/reverse_sample", R(steps=1001), r"1001 is greater than maximum value 1000"),
    ("eta-negative", "/reverse_sample", R(eta=-0.1), r"-0\.1 is less than minimum value 0"),
    ("eta-above-1", "/reverse_sample", R(eta=1.5), r"1\.5 is greater than maximum value 1"),
    ("seed-negative", "/reverse_sample", R(seed=-1), r"less than minimum value 0"),
    ("seed-huge", "/reverse_sample", R(seed=2**64), r"18446744073709551616 is greater than maximum value 9007199254740991"),
    ("images-0", "/reverse_sample", R(num=0), r"0 is less than minimum value 1"),
    ("images-17", "/reverse_sample", R(num=17), r"17 is greater than maximum value 16"),
    ("digit-on-unconditional", "/reverse_sample", R("uncond", digit="3"), r"'uncond' is unconditional.*digit '3'"),
    ("digit-unknown", "/reverse_sample", R(digit="11"), r"11 is not in the list of choices"),
    ("unknown-checkpoint", "/reverse_sample", R("nope"), r"nope is not in the list of choices: \['slow', 'tiny', 'uncond'\]"),
    ("unknown-sampler", "/reverse_sample", R(sampler="euler"), r"'euler'.*not in the list of choices: \['ddim', 'ddpm'\]"),
    ("guidance-negative", "/reverse_sample", R(guidance=-1), r"-1 is less than minimum value 0"),
    ("compare-digit-on-unconditional", "/compare", ("uncond", 10, 5, 0.0, 0, 2, "7", 1.0), r"unconditional"),
    ("compare-ddim-steps-0", "/compare", ("tiny", 10, 0, 0.0, 0, 2, "any", 1.0), r"less than minimum value 1"),
    ("chain-t-out-of-range", "/forward_chain", ("linear", 1000, 100), r"greater than maximum value 999"),
    ("format-unknown", "/forward_format", ("cifar",), r"cifar is not in the list of choices"),
]


@pytest.mark.parametrize("api, args, message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(session: Client, tmp_path: Path, api: str, args,
                                                              message: str) -> None:
    if api == "/forward_upload":
        args = (handle_file(str(make_file(args, tmp_path))), "mnist")
    with pytest.raises(AppError, match=message):
        session.predict(*args, api_name=api)
    xt, *_ = session.predict("linear", 0, 500, api_name="/forward_scrub")  # still serving this visitor
    assert Path(xt).stat().st_size > 0


def test_api_only_mistakes_are_clear(url: str, tmp_path: Path) -> None:
    fresh = Client(url, verbose=False)  # has not picked an image, has not run the sampler
    with pytest.raises(AppError, match="no image chosen yet"):
        fresh.predict("linear", 0, 10, api_name="/forward_scrub")
    with pytest.raises(AppError, match="run the sampler first"):
        fresh.predict(0, api_name="/reverse_scrub")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 6_000_000)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # refused before uploading
        fresh.predict(handle_file(str(big)), "mnist", api_name="/forward_upload")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(AppError, match="Invalid file type"):
        fresh.predict(handle_file(str(txt)), "mnist", api_name="/forward_upload")


def test_switching_to_an_unconditional_model_resets_the_digit(session: Client) -> None:
    digit, _, autoguidance = session.predict("uncond", "3", api_name="/reverse_model")
    assert digit["value"] == "any" and digit["visible"] is False and autoguidance["visible"] is False
    digit, _, autoguidance = session.predict("tiny", "any", api_name="/reverse_model")
    assert digit["visible"] is True and autoguidance["visible"] is True  # tiny has a guide
    out = session.predict(*R("uncond", digit="any", num=1, steps=3), api_name="/reverse_sample")
    assert "step 3 / 3" in out[2]


# ---------------------------------------------------------------- valid but unusual images


def _img(mode: str) -> Image.Image:
    ramp = np.tile(np.linspace(0, 1, 64), (48, 1))  # 48 x 64, dark left, bright right
    if mode == "RGBA":
        a = np.zeros((48, 64, 4), np.uint8)
        a[..., 0] = 255
        a[..., 3] = (ramp * 255).astype(np.uint8)  # red, transparent on the left
        return Image.fromarray(a, "RGBA")
    if mode == "P":
        return Image.fromarray((ramp * 255).astype(np.uint8), "L").convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "I;16":
        return Image.fromarray((ramp * 65535).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((ramp * 65535).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32), "F")
    base = Image.fromarray((ramp * 255).astype(np.uint8), "L")
    return base if mode == "L" else base.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "I", "F", "L", "LA", "1", "CMYK", "RGB"])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_every_image_mode_converts(mode: str, channels: int, size: int, tmp_path: Path) -> None:
    img = _img(mode)
    assert img.mode == mode
    if mode not in ("F", "CMYK"):  # round trip through a file like an upload
        path = tmp_path / "x.png"
        img.save(path)
        img = open_image(path)
    x = convert_image(img, channels, size)
    assert x.shape == (channels, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    left, right = x[..., 2].mean().item(), x[..., -3].mean().item()
    if mode == "RGBA":  # transparent parts black, (nearly) opaque red: greyscale 0.299 * red
        assert left < -0.8 and right > left + 0.3
        if channels == 3:
            assert x[0, :, -3].mean() > 0.6 and x[1:].max() <= -0.99  # red only
    elif mode != "CMYK":  # the ramp survives: dark left, bright right (16-bit scaled, not clipped at 255)
        assert left < -0.5 and right > 0.5, (left, right)


def test_huge_jpeg_is_decoded_small_and_huge_png_refused_before_decoding(tmp_path: Path) -> None:
    jpg = tmp_path / "big.jpg"
    Image.new("RGB", (BIG, BIG // 2), (200, 30, 30)).save(jpg, quality=70)
    img = open_image(jpg)  # draft mode: decoded at 1/8 scale
    assert img.size[0] * img.size[1] <= MAX_PIXELS and img.size == (BIG // 8, BIG // 16)
    assert convert_image(img, 3, 32).shape == (3, 32, 32)
    png = tmp_path / "big.png"
    Image.new("L", (BIG, BIG), 0).save(png, compress_level=1)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="megapixels"):
        open_image(png)
    assert time.perf_counter() - t0 < 0.2  # refused from the header, nothing decoded


def test_gifs_on_disk_are_bounded(tmp_path: Path) -> None:
    frames = [np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)]
    paths = [Path(write_gif(frames, keep=5)) for _ in range(12)]
    kept = sorted(paths[0].parent.glob("diffusion-*.gif"))
    assert len(kept) == 5 and kept == sorted(paths[-5:])


# ---------------------------------------------------------------- cancellation, disconnects, concurrency

LONG = R("slow", sampler="ddpm", steps=1000, num=16, digit="any")  # seconds of work per second of wall time


def wait_for_run(n_before: int, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(METRICS.runs) > n_before and METRICS.runs[n_before].done >= 2:
            return METRICS.runs[n_before]
        time.sleep(0.01)
    raise AssertionError("the sampling run did not start")


def wait_closed(rec, timeout: float = 10.0) -> float:
    t0 = time.perf_counter()
    while not rec.closed and time.perf_counter() - t0 < timeout:
        time.sleep(0.005)
    assert rec.closed, "the server-side generator was not closed (its cleanup did not run)"
    return time.perf_counter() - t0


def frames_after(rec, done: int) -> list[int]:
    """The frames a run streamed after it had computed `done` steps (each as the step count it was at)."""
    return [f for f in rec.frames if f > done]


def first_frame_s(client: Client, args) -> float:
    t0 = time.perf_counter()
    job = client.submit(*args, api_name="/reverse_sample")
    while not job.outputs() and not job.done():
        time.sleep(0.005)
    dt = time.perf_counter() - t0
    job.result(timeout=60)
    return dt


def test_stop_closes_the_generator_within_a_frame_and_scrubs_never_wait(url: str, session: Client,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    visitor = Client(url, verbose=False)
    n = len(METRICS.runs)
    job = visitor.submit(*LONG, api_name="/reverse_sample")
    rec = wait_for_run(n)
    # While the 1000-step job holds the sampling slot, another visitor's scrubs are answered at once.
    lat = []
    for t in range(100, 1000, 100):
        t0 = time.perf_counter()
        session.predict("linear", 0, t, api_name="/forward_scrub")
        lat.append(time.perf_counter() - t0)
    assert not rec.closed and rec.done < rec.planned, "the long job should still be running"
    assert max(lat) < 2.0, f"scrub latencies while sampling: {lat}"
    # Note the step count when the server receives the cancel (the client's request may take a while
    # to be sent; that is gradio_client's business, not the server's).
    import gradio.routes
    received: list[int] = []
    original = gradio.routes.cancel_tasks

    async def cancel_tasks(ids):
        received.append(rec.done)
        return await original(ids)

    monkeypatch.setattr(gradio.routes, "cancel_tasks", cancel_tasks)
    job.cancel()
    wait_closed(rec)
    assert received, "the server never received the cancel"
    after = rec.done - received[0]
    time.sleep(0.3)
    assert rec.done - received[0] == after, "steps ran after the generator was closed"
    # Gradio can close a generator only where it yields: the step in flight and the steps up to the next
    # frame (at most MIN_FRAME_INTERVAL_S of them) still run, and the run ends at that frame.
    # Stated in frames, not seconds: step times on a shared machine vary too much for a time bound.
    assert len(frames_after(rec, received[0])) <= 1, f"frames {rec.frames} streamed after Stop at step {received[0]}"
    assert rec.frames[-1] == rec.done, f"the run ended at step {rec.done}, not at a frame ({rec.frames[-3:]})"
    # The sampling slot is free at once: the next job's first frame comes without waiting for the old one.
    assert first_frame_s(visitor, R(steps=5, num=1)) < 3.0


def test_closing_the_page_closes_the_generator(url: str) -> None:
    """A browser tab that goes away drops its SSE stream; Gradio must clean the event up and close the generator."""
    c = Client(url, verbose=False)
    fn_index = c._infer_fn_index("/reverse_sample", None)
    session_hash = uuid.uuid4().hex[:11]
    n = len(METRICS.runs)
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("gradio_api/queue/join", json={"data": list(LONG), "fn_index": fn_index,
                                                     "session_hash": session_hash, "event_data": None,
                                                     "trigger_id": None})
        r.raise_for_status()
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if "process_generating" in line:
                    break
            rec = METRICS.runs[n]
            assert not rec.closed
            done_at_close = rec.done
        # leaving the `with` closes the connection: the page is gone
    wait_closed(rec)
    assert rec.done < rec.planned
    # The server notices the drop when its next message to the tab fails: the run ends at the first or
    # second frame after the close.
    late = frames_after(rec, done_at_close)
    assert len(late) <= 2, f"frames {rec.frames} streamed after the tab closed at step {done_at_close}"
    assert rec.frames[-1] == rec.done, f"the run ended at step {rec.done}, not at a frame ({rec.frames[-3:]})"
    assert first_frame_s(c, R(steps=5, num=1)) < 3.0


# ---------------------------------------------------------------- determinism

DETERMINISM_SCRIPT = r"""
import hashlib, sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from explorer import build_app
from explorer.state import load_registry
demo = build_app(load_registry({ckpts!r}))
run = next(d.fn for d in demo.fns.values() if d.api_name == "reverse_sample")
for args in {cases!r}:
    out = list(run(*args))[-1]
    print(hashlib.sha256(out[0].tobytes() + out[1].tobytes()).hexdigest())
"""


def test_same_seed_same_bytes_in_two_processes(ckpt_dir: Path, tmp_path: Path) -> None:
    # Only the good checkpoints: each process loads what the app would load.
    good = tmp_path / "ckpts"
    good.mkdir()
    for name in ("tiny", "uncond"):
        for ext in (".json", ".safetensors"):
            shutil.copy(ckpt_dir / f"{name}{ext}", good / f"{name}{ext}")
    cases = [R(sampler="ddpm", steps=20, seed=7, num=3, digit="any"), R(sampler="ddim", steps=10, eta=0.5, seed=7),
             R(sampler="ddim", steps=10, eta=0.5, seed=8), R("uncond", steps=8, seed=7, digit="any")]
    script = DETERMINISM_SCRIPT.format(root=str(ROOT), ckpts=str(good), cases=cases)
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(out.split())
    a, b = outs
    assert len(a) == len(cases) and a == b  # identical bytes across processes
    assert a[1] != a[2]  # and the seed matters


def test_initial_noise_is_drawn_on_the_cpu() -> None:
    shape = (4, 1, 28, 28)
    x = initial_noise(shape, make_generator(11), "cpu")
    assert torch.equal(x, torch.randn(shape, generator=torch.Generator().manual_seed(11)))
    assert not torch.equal(x, initial_noise(shape, make_generator(12), "cpu"))
    if torch.cuda.is_available():  # the same x_T on the GPU
        assert torch.equal(initial_noise(shape, make_generator(11), "cuda").cpu(), x)


# ---------------------------------------------------------------- launch settings


def test_no_public_share_link_and_limits(app) -> None:
    demo, _ = app
    kw = launch_kwargs()
    assert kw["share"] is False and demo.share is False
    assert kw["max_file_size"] == "5mb" and demo.max_file_size == 5 * 1024 * 1024
    assert demo._queue.max_size == 32


def test_gradio_carries_the_advisory_fixes() -> None:
    from packaging.version import Version
    import gradio
    assert Version(gradio.__version__) >= Version("6.16.0"), gradio.__version__  # the latest fix we rely on
