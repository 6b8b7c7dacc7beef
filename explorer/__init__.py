"""The Gradio explainer over diffusion_core: one module per tab (layout + thin handlers).

    build_app(registry)  -> gr.Blocks     (app.py calls it with the checkpoints in ./checkpoints)
    launch_kwargs()      -> dict          the settings app.py and the tests launch with
"""

from __future__ import annotations

import os
from functools import partial

import gradio as gr

from . import compare_tab, forward_tab, reverse_tab, schedules_tab
from .state import Registry, load_registry

MAX_FILE_SIZE = "5mb"  # uploads are images to be shrunk to 28x28 or 32x32
QUEUE_MAX_SIZE = 32  # waiting events beyond this are refused with "queue full"
DELETE_CACHE = (1800, 3600)  # every 30 min, delete files Gradio cached for this app that are over an hour old
CSS = ".gradio-container {max-width: 1400px !important} footer {display: none !important}"


def header(reg: Registry) -> str:
    models = ", ".join(
        f"`{n}` ({c.dataset}, {c.schedule.config.name}, {'conditional' if c.model_config.num_classes else 'unconditional'})"
        for n, c in reg.checkpoints.items()
    )
    skipped = "".join(f"\n\n⚠ Checkpoint `{n}` was not loaded: {why}" for n, why in reg.skipped.items())
    if reg.compiled:
        models += f" · compiled ahead of time (AOTInductor): {', '.join(f'`{n}`' for n in reg.compiled)}"
    if reg.cuda_graphs:
        models += f" · replayed from CUDA graphs: {', '.join(f'`{n}`' for n in reg.cuda_graphs)}"
    return (f"# Diffusion Explorer\nHow DDPM and DDIM turn noise into images, on small U-Nets trained for this app. "
            f"**Device: {reg.device.type.upper()}** ({reg.precision}) · {reg.threads} CPU thread{'s' if reg.threads != 1 else ''} · models: {models}"
            + skipped)


def build_app(reg: Registry | None = None) -> gr.Blocks:
    reg = reg or load_registry()
    with gr.Blocks(title="Diffusion Explorer", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        head = gr.Markdown(header(reg), elem_id="header")
        with gr.Tabs():
            with gr.Tab("1 · Forward process", id="forward"):
                fwd = forward_tab.build(reg)
            with gr.Tab("2 · Reverse process", id="reverse"):
                reverse_tab.build(reg)
            with gr.Tab("3 · DDPM vs DDIM", id="compare"):
                compare_tab.build(reg)
            with gr.Tab("4 · Schedules", id="schedules"):
                schedules_tab.build(reg)
        pick_fn, pick_in, pick_out = fwd["pick"]
        scrub_fn, scrub_io = fwd["scrub"]
        strip_fn, strip_io = fwd["strip"]
        # Rendered again on every page load: the background build switches checkpoints to their
        # compiled packages after start-up, and a visitor should see the path that will run.
        demo.load(partial(header, reg), None, head, api_visibility="private", show_progress="hidden", queue=False)
        demo.load(pick_fn, pick_in, pick_out, api_visibility="private", show_progress="hidden").then(
            scrub_fn, **scrub_io, api_visibility="private", show_progress="hidden").then(
            strip_fn, **strip_io, api_visibility="private", show_progress="hidden")
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=2)
    return demo


def launch_kwargs() -> dict:
    """Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio reads them itself).

    share=False: never open a public *.gradio.live tunnel unless someone edits this on purpose.
    """
    return dict(share=False, max_file_size=MAX_FILE_SIZE, css=CSS, ssr_mode=False, show_error=True,
                footer_links=["api"], theme=gr.themes.Soft())


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
