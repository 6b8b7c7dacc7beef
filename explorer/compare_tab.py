"""View 3, DDPM vs DDIM from one x_T: both stream side by side, with wall time and step counts."""

from __future__ import annotations

from functools import partial

import gradio as gr

from diffusion_core.explain import interleave_by_timestep
from diffusion_core.samplers import SamplerConfig

from .common import (GPU, LIGHT, MAX_GUIDANCE, SAMPLING, FrameClock, as_float, as_int, autoguidance_slider,
                     default_digit, digit_dropdown, friendly, guidance_slider, md, on_digit_controls,
                     on_model_controls, seed_box, start, timestep)
from .images import display
from .state import METRICS, Registry

INTRO = r"""
### Same noise, two samplers: DDPM needs every one of the T steps, DDIM gets close in a few
One seed gives one $x_T$ to both panels; they advance together in $t$ (DDIM jumps $t \to t'$ over many DDPM steps).

**What to observe.** With $\eta = 0$ DDIM is deterministic: $x_T$ alone decides the image, so rerunning
gives the same bytes, while another seed draws another $x_T$ and so an unrelated image. As $\eta \to 1$ DDIM adds DDPM's amount of fresh
noise at each step and behaves like DDPM (with all T steps and $\eta = 1$ it *is* DDPM). About 50 DDIM
steps come close to 1000 DDPM steps in quality, at 1/20 of the model calls; the two will not be the same
image when DDPM's random steps lead elsewhere, which the difference image shows.

$$\text{DDPM: } x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sigma_t z \qquad
\text{DDIM: } x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma_t^2}\,\hat\varepsilon + \sigma_t z$$
"""


DIFF_PENDING = "**|DDPM − DDIM|** (black = identical; shown when both samplers finish)"


def panel(name: str, clock, step, total: int) -> str:
    return (f"**{name}** · step {clock.steps} / {total} · t = {timestep(step.t_prev)} · "
            f"**{clock.seconds:.2f} s**")


def build(reg: Registry) -> dict:
    names = reg.names

    def run(name: str, ddpm_steps: object, ddim_steps: object, eta: float, seed: object, num: object,
            digit: str, guidance: float, autoguidance: float = 1.0):
        ckpt = reg.get(name)
        guide = reg.guides.get(name)
        g = as_float("guidance scale", guidance, 0, MAX_GUIDANCE)
        c_ddpm = SamplerConfig(sampler="ddpm", steps=as_int("DDPM steps", ddpm_steps), guidance=g)
        c_ddim = SamplerConfig(sampler="ddim", steps=as_int("DDIM steps", ddim_steps), eta=as_float("eta", eta, 0, 1),
                               guidance=g)
        # Each sampler gets its own generator seeded alike: both draw the same x_T first.
        a = start(ckpt, c_ddpm, seed, num, digit, reg.device, guide.model if guide else None, autoguidance)
        b = start(ckpt, c_ddim, seed, num, digit, reg.device, guide.model if guide else None, autoguidance)
        rec = METRICS.start("compare", c_ddpm.steps + c_ddim.steps)
        both = interleave_by_timestep(a, b)
        x = [None, None]
        md_ = ["", ""]
        pace = FrameClock()
        try:
            for k, step, ca, cb in both:
                rec.done += 1
                x[k] = step.x
                md_[k] = panel(("DDPM", "DDIM")[k], (ca, cb)[k], step, (c_ddpm.steps, c_ddim.steps)[k])
                if x[0] is not None and x[1] is not None and pace.due():
                    rec.frames.append(rec.done)
                    # The first frame clears the previous run's difference image and its mean.
                    diff_out = (None, DIFF_PENDING) if len(rec.frames) == 1 else (gr.skip(), gr.skip())
                    yield display(x[0]), display(x[1]), md_[0], md_[1], *diff_out
            diff = (x[0] - x[1]).abs().float().cpu()
            diff_md = (f"mean |DDPM − DDIM| = **{diff.mean().item():.4f}** (pixel range [−1, 1], so the largest "
                       f"possible is 2) · DDIM took {c_ddim.steps / c_ddpm.steps:.1%} of DDPM's steps, and so of its "
                       "network evaluations")
            yield display(x[0]), display(x[1]), md_[0], md_[1], display(diff - 1.0), diff_md
        finally:
            rec.closed = True
            both.close()

    md(INTRO)
    cond = reg.get(names[0]).model_config.num_classes > 0
    with gr.Row():
        ckpt = gr.Dropdown(names, value=names[0], label="Checkpoint")
        ddpm_steps = gr.Slider(1, 1000, value=1000, step=1, label="DDPM steps (1000 = true DDPM)",
                               elem_id="compare-ddpm-steps")
        ddim_steps = gr.Slider(1, 1000, value=50, step=1, label="DDIM steps N")
        eta = gr.Slider(0, 1, value=0, step=0.05, label="DDIM η")
    with gr.Row():
        seed = seed_box("Seed (one x_T for both)")
        num = gr.Slider(1, 16, value=4, step=1, label="Number of images")
        digit = digit_dropdown(cond)
        guidance = guidance_slider(cond, default_digit(cond))
        autoguidance = autoguidance_slider(reg, names[0], default_digit(cond))
    with gr.Row():
        go = gr.Button("▶ Run both", variant="primary", elem_id="compare-play")
        stop = gr.Button("■ Stop", variant="stop")
    with gr.Row():
        with gr.Column():
            a_md = gr.Markdown("**DDPM**")
            a_img = gr.Image(label="DDPM", format="png", height=280, interactive=False)
        with gr.Column():
            b_md = gr.Markdown("**DDIM**")
            b_img = gr.Image(label="DDIM", format="png", height=280, interactive=False)
        with gr.Column():
            d_md = gr.Markdown(DIFF_PENDING)
            d_img = gr.Image(label="absolute difference", format="png", height=280, interactive=False)

    ev = go.click(GPU(friendly(run)), [ckpt, ddpm_steps, ddim_steps, eta, seed, num, digit, guidance, autoguidance],
                  [a_img, b_img, a_md, b_md, d_img, d_md], api_name="compare", show_progress="minimal", **SAMPLING)
    stop.click(None, None, None, cancels=[ev], api_name="compare_stop", **LIGHT)
    ckpt.input(friendly(partial(on_model_controls, reg)), [ckpt, digit], [digit, guidance, autoguidance],
               api_name="compare_model", **LIGHT)
    digit.input(friendly(partial(on_digit_controls, reg)), [ckpt, digit], [guidance, autoguidance],
                api_name="compare_digit", **LIGHT)
    return {}
