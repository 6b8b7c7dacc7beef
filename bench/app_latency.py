"""Latency of the app as a visitor sees it, through gradio_client against a locally launched app (not a test).

    python bench/app_latency.py [--checkpoints checkpoints] [--model NAME] [--repeats 20]

Prints: server time of one forward scrub event (and the client round trip), time to the first
streamed frame, and full runs: DDIM-50 for 16 images and DDPM-1000 for 4 images, through gradio_client
and through a client that only blocks on the HTTP event stream (as a browser on another machine costs
the server nothing). Then where a
served run's time goes, the same two runs in the server process without HTTP, taking turns
(`--repeats-inner`, default 3, medians): the core sampling loop alone; the reverse handler called
directly (statistics, recorded frames, the streamed frames' upscaling, the final chart and GIF);
and the handler with streaming off (the first frame and the final output only), so that handler
minus core is the handler's own work, and streaming on minus off what the streamed frames cost
before Gradio encodes and sends them.

The client runs in a process of its own, as a visitor's browser does, so that its polling (every
millisecond) and message parsing never wait for the server process's GIL, which a compiled model
holds for a whole forward pass. (Measured in session 5: a thread polling every 0.5 ms beside the
sampler did not slow it beyond the noise; the separate process rules the question out.)
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradio_client import Client  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", default=None, help="checkpoint folder (default ./checkpoints)")
    ap.add_argument("--model", default=None, help="checkpoint name (default: the first loaded)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--repeats-inner", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="the app's torch threads (default: every core)")
    a = ap.parse_args()
    from explorer import build_app, launch_kwargs  # the server's side only: the client process needs neither
    from diffusion_core.runtime import available_cores
    from explorer.state import load_registry

    # All cores by default: the configuration a visitor on another machine gets (a Space); the app itself
    # leaves one to a browser on its own machine (explorer.state.serving_threads).
    reg = load_registry(a.checkpoints, threads=a.threads or available_cores())
    model = a.model or ("mnist-linear" if "mnist-linear" in reg.names else reg.names[0])
    demo = build_app(reg)
    # The scrub handler, timed in the server process itself (no HTTP, no queue).
    scrub_fn = next(d.fn for d in demo.fns.values() if d.api_name == "forward_scrub")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    print(f"device {reg.device} · {reg.threads} threads · model {model}"
          f"{' (AOTInductor package)' if model in reg.compiled else ' (eager)'}")
    fmt = reg.get(model).dataset
    state = {"x0": reg.get(model).schedule.sqrt_alphas_cumprod.new_zeros(
        (reg.get(model).model_config.in_channels,) + (reg.get(model).model_config.image_size,) * 2)}
    server = timed(lambda: scrub_fn(state, "linear", 0, 500), a.repeats)
    print(f"forward scrub event: server {statistics.median(server) * 1e3:.1f} ms (median of {a.repeats})", flush=True)
    subprocess.run([sys.executable, __file__, "--client", f"http://127.0.0.1:{port}/", model, fmt, str(a.repeats)],
                   check=False)
    inner(demo, reg, model, a.repeats_inner)
    demo.close()


def inner(demo, reg, model: str, repeats: int) -> None:
    """The served runs' parts, in this process (no HTTP, no queue), the variants taking turns."""
    import explorer.common as common
    from diffusion_core.runtime import torch_thread
    from diffusion_core.samplers import SamplerConfig, initial_noise, make_generator, sample

    run_fn = next(d.fn for d in demo.fns.values() if d.api_name == "reverse_sample")
    ckpt = reg.get(model)
    cfg = ckpt.model_config
    interval = common.MIN_FRAME_INTERVAL_S  # the handlers' FrameClock reads it

    def core(sampler: str, steps: int, n: int) -> float:
        def go() -> float:
            import torch
            g = make_generator(0)
            x_T = initial_noise((n, cfg.in_channels, cfg.image_size, cfg.image_size), g, reg.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                sample(ckpt.model, ckpt.schedule, x_T, SamplerConfig(sampler=sampler, steps=steps), None, g)
            return time.perf_counter() - t0
        return torch_thread().run(go)

    def handler(sampler: str, steps: int, n: int, stream: bool) -> tuple[float, int]:
        common.MIN_FRAME_INTERVAL_S = interval if stream else float("inf")  # only the forced first frame
        try:
            t0 = time.perf_counter()
            outs = list(run_fn(model, sampler, steps, 0.0, 0, n, "any", 1.0))
            total = time.perf_counter() - t0
        finally:
            common.MIN_FRAME_INTERVAL_S = interval
        assert outs, "the handler yielded nothing"
        return total, len(outs) - 1

    for sampler, steps, n in (("ddim", 50, 16), ("ddpm", 1000, 4)):
        rows: dict[str, list[float]] = {"core": [], "stream": [], "no stream": []}
        frames = 0
        for _ in range(repeats):
            rows["core"].append(core(sampler, steps, n))
            total, frames = handler(sampler, steps, n, True)
            rows["stream"].append(total)
            rows["no stream"].append(handler(sampler, steps, n, False)[0])
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"in process, {sampler.upper()}-{steps}, {n} images (medians of {repeats}, taking turns): "
              f"core loop {med['core']:.3f} s; handler {med['stream']:.3f} s with {frames} streamed frames, "
              f"{med['no stream']:.3f} s with streaming off", flush=True)


def client(url: str, model: str, fmt: str, repeats: int) -> None:
    """The visitor's side, in its own process. download_files=False: a visitor's browser fetches the
    images on its own machine; downloading them here would put the client's work on the server's cores."""
    c = Client(url, verbose=False, download_files=False)
    c.predict("mnist-3" if fmt == "mnist" else "circle-1", fmt, api_name="/forward_example")
    ts = iter(range(10, 1000, 37))
    rtt = timed(lambda: c.predict("linear", 0, next(ts), api_name="/forward_scrub"), repeats)
    print(f"forward scrub client round trip {statistics.median(rtt) * 1e3:.1f} ms")

    def first_frame(sampler: str, steps: int, num: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        job = c.submit(model, sampler, steps, 0.0, 0, num, "any", 1.0, api_name="/reverse_sample")
        first = None
        while not job.done():
            if first is None and job.outputs():
                first = time.perf_counter() - t0
            time.sleep(0.002)
        total = time.perf_counter() - t0
        return first if first is not None else total, total

    ff, _ = first_frame("ddim", 50, 1)
    print(f"time to first streamed frame (DDIM-50, 1 image): {ff * 1e3:.0f} ms")
    ff, total = first_frame("ddim", 50, 16)
    print(f"DDIM-50, 16 images: first frame {ff * 1e3:.0f} ms, full run {total:.2f} s")
    ff, total = first_frame("ddpm", 1000, 4)
    print(f"DDPM-1000, 4 images: first frame {ff * 1e3:.0f} ms, full run {total:.2f} s", flush=True)
    # gradio_client polls its job every few ms on these same cores; a visitor's browser on another machine
    # costs the server nothing but its own work. A client that blocks on the event stream comes closer.
    for sampler, steps, num in (("ddim", 50, 16), ("ddpm", 1000, 4)):
        runs = [light_run(url, [model, sampler, steps, 0.0, 0, num, "any", 1.0, 1.0]) for _ in range(2)]
        print(f"{sampler.upper()}-{steps}, {num} images, to a client that blocks on the event stream: full run "
              + ", ".join(f"{t:.2f} s ({n} frames)" for t, n in runs), flush=True)


def light_run(url: str, data: list) -> tuple[float, int]:
    """One Reverse run through Gradio's HTTP API (POST, then read the server-sent events until the last):
    (seconds, streamed frames)."""
    import json
    import urllib.request

    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}gradio_api/call/reverse_sample", data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        event_id = json.load(r)["event_id"]
    frames = 0
    with urllib.request.urlopen(f"{url}gradio_api/call/reverse_sample/{event_id}", timeout=300) as r:
        for line in r:
            if line.startswith(b"event: generating"):
                frames += 1
            elif line.startswith(b"event: complete") or line.startswith(b"event: error"):
                break
    return time.perf_counter() - t0, frames


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
