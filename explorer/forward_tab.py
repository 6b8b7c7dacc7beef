"""View 1, the forward process: pick an image, scrub t, see x_t, its noise level and its histogram."""

from __future__ import annotations

import gradio as gr
import torch

from diffusion_core.explain import ChainJump, chain_vs_jump_steps, snr_db, strip_timesteps
from diffusion_core.forward import q_sample
from diffusion_core.samplers import make_generator

from . import figures
from .common import LIGHT, SAMPLING, FrameClock, as_int, friendly, md, seed_box
from .images import convert_image, display, examples, open_image
from .state import Registry

INTRO = r"""
### The forward process adds Gaussian noise until nothing of the image is left
Pick an image and drag **t**: the closed-form jump gives $x_t$ directly from $x_0$, without
running the $t$ steps in between. Signal shrinks as $\sqrt{\bar\alpha_t}$ while noise grows as $\sqrt{1-\bar\alpha_t}$.

$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\qquad \varepsilon \sim \mathcal N(0, I),\qquad \bar\alpha_t = \prod_{s\le t}(1-\beta_s)$$

The network is trained to recover the noise from $x_t$ (DDPM, Algorithm 1):
$\;L(\theta) = \mathbb E_{x_0,\,t,\,\varepsilon}\,\big\|\varepsilon - \varepsilon_\theta(x_t, t)\big\|^2.$
"""

CHAIN = r"""
**Markov chain vs closed-form jump.** Step by step, $x_s = \sqrt{1-\beta_s}\,x_{s-1} + \sqrt{\beta_s}\,\varepsilon_s$
for $s = 0..t$, starting from the clean image $x_0$ (t counts from 0 here, so $x_t$ has had $t + 1$ noising steps
and $t = 0$ is already faintly noisy); in one jump, the equation above. Both give $x_t \sim \mathcal N(\sqrt{\bar\alpha_t}\,x_0,\,(1-\bar\alpha_t) I)$:
draw many samples each way at the current t and compare their mean and std.
"""


def _x0(state: dict | None) -> torch.Tensor:
    """The chosen image, or a clear error for a session that has not picked one (possible through the API)."""
    if not state or "x0" not in state:
        raise ValueError("no image chosen yet: pick a dataset example or upload an image first")
    return state["x0"]


def _state_for(img_tensor: torch.Tensor, kind: str, source: str, fmt: str) -> dict:
    return {"x0": img_tensor, "kind": kind, "source": source, "format": fmt}


def build(reg: Registry) -> dict:
    formats = reg.formats()
    fmt_choices = [(f"{d}: {s}×{s} {'greyscale' if c == 1 else 'RGB'}", d) for d, (c, s) in formats.items()]
    ex = examples()
    first_fmt = fmt_choices[0][1]
    default_ex = next((n for n in ex if n.startswith(first_fmt)), next(iter(ex), None))

    def convert(kind: str, source: str, fmt: str) -> tuple[torch.Tensor, str]:
        if fmt not in formats:
            raise ValueError(f"unknown image format {fmt!r}; available: {', '.join(formats)}")
        c, s = formats[fmt]
        if kind == "example":
            if source not in ex:
                raise ValueError(f"unknown example {source!r}; available: {', '.join(ex)}")
            img = open_image(ex[source])
        else:
            img = open_image(source)
        note = (f"Converted {img.size[0]}×{img.size[1]} {img.mode} → {s}×{s} {'greyscale (L)' if c == 1 else 'RGB'}"
                f" (centre-cropped, resized, scaled to [−1, 1]).")
        return convert_image(img, c, s), note

    def pick_example(name: str, fmt: str):
        x0, note = convert("example", name, fmt)
        return _state_for(x0, "example", name, fmt), display(x0[None]), note

    def pick_upload(path: str | None, fmt: str):
        if not path:
            raise ValueError("no image uploaded")
        x0, note = convert("upload", path, fmt)
        return _state_for(x0, "upload", path, fmt), display(x0[None]), note

    def change_format(state: dict, fmt: str):
        _x0(state)
        x0, note = convert(state["kind"], state["source"], fmt)
        return _state_for(x0, state["kind"], state["source"], fmt), display(x0[None]), note

    def noise_for(x0: torch.Tensor, seed: object) -> torch.Tensor:
        return torch.randn((1, *x0.shape), generator=make_generator(as_int("noise seed", seed)))

    def scrub(state: dict, schedule: str, seed: object, t: object):
        """x_t = q_sample(x0, t, eps) for one image, with the figures that describe it."""
        if schedule not in reg.schedules:
            raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(reg.schedules)}")
        s = reg.schedules[schedule]
        t = as_int("t", t)
        if not 0 <= t < s.num_timesteps:
            raise ValueError(f"t must lie in 0..{s.num_timesteps - 1}, got {t}")
        x0 = _x0(state)[None]
        eps = noise_for(state["x0"], seed)
        x_t = q_sample(s, x0, torch.tensor([t]), eps)
        ab = s.alphas_cumprod[t].item()
        info = (f"**t = {t}** · $\\bar\\alpha_t$ = {ab:.4f} · signal $\\sqrt{{\\bar\\alpha_t}}$ = {ab ** 0.5:.3f} · "
                f"noise $\\sqrt{{1-\\bar\\alpha_t}}$ = {(1 - ab) ** 0.5:.3f} · **SNR = {snr_db(s)[t].item():+.1f} dB** "
                "(signal-to-noise ratio $\\bar\\alpha_t/(1-\\bar\\alpha_t)$)")
        return display(x_t), display(eps), info, figures.signal_noise(s, t), figures.histogram(x_t, t)

    def strip(state: dict, schedule: str, seed: object):
        if schedule not in reg.schedules:
            raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(reg.schedules)}")
        s = reg.schedules[schedule]
        eps = noise_for(_x0(state), seed)
        ts = strip_timesteps(s.num_timesteps)
        x0 = state["x0"][None].expand(len(ts), *state["x0"].shape)
        xs = q_sample(s, x0, torch.tensor(ts), eps.expand_as(x0))
        return [(display(xs[i: i + 1], 128), f"t = {t}") for i, t in enumerate(ts)]

    def chain(state: dict, schedule: str, t: object, num: object):
        if schedule not in reg.schedules:
            raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(reg.schedules)}")
        s = reg.schedules[schedule]
        _x0(state)
        t, n = as_int("t", t), as_int("samples", num)
        if not 0 <= t < s.num_timesteps:
            raise ValueError(f"t must lie in 0..{s.num_timesteps - 1}, got {t}")
        if not 2 <= n <= 1000:
            raise ValueError(f"samples must lie in 2..1000, got {n}")
        # Streamed: each yield hands the torch thread to other visitors' work, and shows progress.
        pace = FrameClock()
        for r in chain_vs_jump_steps(s, state["x0"], t, n, make_generator(0)):
            if not isinstance(r, ChainJump) and pace.due():
                yield f"Running the Markov chain on {n} samples: step {r + 1} / {t + 1} …", gr.skip()
        table = (
            f"At t = {t}, {n} samples each way:\n\n"
            "| | Markov chain ({0} steps) | closed-form jump | theory |\n|---|---|---|---|\n"
            "| mean error $\\lvert\\hat E[x_t] - \\sqrt{{\\bar\\alpha_t}}x_0\\rvert$ | {1:.4f} | {2:.4f} | 0 (→ 0 as samples grow) |\n"
            "| std of $x_t$ | {3:.4f} | {4:.4f} | {5:.4f} |\n"
        ).format(t + 1, r.chain_mean_err, r.jump_mean_err, r.chain_std, r.jump_std, r.theory_std)
        imgs = [(display(r.chain_mean_image[None], 128), "mean of x_t, chain"),
                (display(r.jump_mean_image[None], 128), "mean of x_t, jump"),
                (display(r.theory_mean_image[None], 128), "√ᾱₜ x₀ (theory)")]
        yield table, imgs

    md(INTRO)
    state = gr.State(None)
    with gr.Row():
        example = gr.Dropdown(list(ex), value=default_ex, label="Dataset example (assets/examples)")
        upload = gr.File(label="…or upload any image (PNG, JPEG, …; up to 5 MB)", file_types=["image"], type="filepath",
                         height=140)
        fmt = gr.Dropdown(fmt_choices, value=first_fmt, label="Convert to the model's size and channels")
        schedule = gr.Radio(list(reg.schedules), value="linear", label="Noise schedule")
        seed = seed_box("Noise seed (ε)")
    note = gr.Markdown()
    t = gr.Slider(0, 999, value=250, step=1, label="t (drag me)", elem_id="forward-t")
    info = md("")
    with gr.Row():
        x0_img = gr.Image(label="x₀ (converted input)", format="png", height=260, interactive=False, elem_id="forward-x0")
        xt_img = gr.Image(label="x_t", format="png", height=260, interactive=False, elem_id="forward-xt")
        eps_img = gr.Image(label="ε (the noise that is mixed in)", format="png", height=260, interactive=False)
    with gr.Row():
        sn_plot = gr.Plot(label="signal and noise scale")
        hist_plot = gr.Plot(label="histogram of x_t")
    gr.Markdown("**x_t at t = 0, 100, 250, 500, 750, 999** (same ε): the image is recognisable for a long while, "
                "then drowns in noise.")
    strip_gal = gr.Gallery(label="forward strip", columns=6, height=200, object_fit="contain", allow_preview=False)
    md(CHAIN)
    with gr.Row():
        num = gr.Slider(2, 1000, value=300, step=1, label="samples per route")
        chain_btn = gr.Button("Compare chain and jump at the current t")
    with gr.Row():
        chain_md = md("")
        chain_gal = gr.Gallery(label="means", columns=3, height=160, object_fit="contain", allow_preview=False)

    scrub_io = dict(inputs=[state, schedule, seed, t], outputs=[xt_img, eps_img, info, sn_plot, hist_plot])
    strip_io = dict(inputs=[state, schedule, seed], outputs=strip_gal)
    quiet = dict(api_visibility="private", show_progress="hidden", **LIGHT)

    def then_refresh(ev: gr.events.Dependency) -> None:
        ev.then(friendly(scrub), **scrub_io, **quiet).then(friendly(strip), **strip_io, **quiet)

    pick_out = [state, x0_img, note]
    then_refresh(example.input(friendly(pick_example), [example, fmt], pick_out, api_name="forward_example", **LIGHT))
    then_refresh(upload.upload(friendly(pick_upload), [upload, fmt], pick_out, api_name="forward_upload", **LIGHT))
    then_refresh(fmt.input(friendly(change_format), [state, fmt], pick_out, api_name="forward_format", **LIGHT))
    for comp, name in ((schedule, "forward_schedule"), (seed, "forward_seed")):
        comp.input(friendly(scrub), **scrub_io, api_name=name, show_progress="hidden", **LIGHT).then(
            friendly(strip), **strip_io, **quiet)
    # .input fires on every value the slider takes while dragging; always_last drops stale ones.
    t.input(friendly(scrub), **scrub_io, api_name="forward_scrub", trigger_mode="always_last",
            show_progress="hidden", **LIGHT)
    t.release(friendly(scrub), **scrub_io, api_name="forward_scrub_release", show_progress="hidden", **LIGHT)
    chain_btn.click(friendly(chain), [state, schedule, t, num], [chain_md, chain_gal], api_name="forward_chain",
                    show_progress="minimal", **SAMPLING)  # long: one at a time, as sampling
    return {"pick": (friendly(pick_example), [example, fmt], pick_out),
            "scrub": (friendly(scrub), scrub_io), "strip": (friendly(strip), strip_io)}
