"""View 2, the reverse process: stream x_t and the predicted x_0 while a sampler runs; scrub the result."""

from __future__ import annotations

from functools import partial

import gradio as gr
import numpy as np

from diffusion_core.explain import frame_indices, step_stats
from diffusion_core.samplers import SamplerConfig

from . import figures
from .common import (GPU, LIGHT, MAX_GUIDANCE, MAX_RECORDED_FRAMES, SAMPLING, FrameClock, as_float, as_int,
                     autoguidance_slider, default_digit, digit_dropdown, friendly, guidance_slider, md,
                     on_digit_controls, on_model_controls, seed_box, start, timestep)
from .images import display_grid, raw_grid, write_gif
from .state import METRICS, Registry

INTRO = r"""
### The reverse process turns pure noise into an image, one denoising step at a time
Press **Play**: at each step the network predicts the noise $\hat\varepsilon = \varepsilon_\theta(x_t, t)$, which
also gives a guess of the clean image, $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$
(right). Early guesses are blurry averages; they sharpen as t falls.

**DDPM** (Ho et al. 2020, Algorithm 2), a random step:
$$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\hat\varepsilon\Big) + \sigma_t z,\qquad z\sim\mathcal N(0, I)$$
**DDIM** (Song et al. 2021, eq. 12), which may skip timesteps ($t \to t'$) and is deterministic for $\eta = 0$:
$$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma_t^2}\;\hat\varepsilon + \sigma_t z,\qquad
\sigma_t = \eta\sqrt{\tfrac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}}\sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_{t'}}}$$
Classifier-free guidance mixes the conditional and unconditional predictions:
$\hat\varepsilon = \varepsilon_\theta(x_t, \varnothing) + w\,\big(\varepsilon_\theta(x_t, y) - \varepsilon_\theta(x_t, \varnothing)\big)$.
With digit *any*, **autoguidance** (Karras et al. 2024) pushes the prediction away from a guide, a smaller
and briefly trained version of the same model, whose mistakes are exaggerated versions of the model's own:
$\hat\varepsilon = \varepsilon_{\text{guide}}(x_t) + w_{\text{auto}}\,\big(\varepsilon_\theta(x_t) - \varepsilon_{\text{guide}}(x_t)\big)$
($w_{\text{auto}} = 1$: the model alone; $w_{\text{auto}} = 0$: the guide alone, to see the mistakes it pushes away from).
The best unconditional digits we measured come from autoguidance together with $\eta = 1$: as many or more of them are
recognisable, and as a whole they are closer to real digits (Fréchet distance), than with either alone.
"""


TRAJECTORY_TTL_S = 3600  # a recorded trajectory is dropped an hour after its last update (or when the tab closes)


def status(step_index: int, num_steps: int, t: int, t_prev: int, note: str = "") -> str:
    return f"**step {step_index + 1} / {num_steps}** · t = {t} → {timestep(t_prev)}{note}"


def pair_frame(a: np.ndarray, b: np.ndarray, target: int = 256) -> np.ndarray:
    """Two upscaled grids side by side with a white gap (one GIF frame)."""
    a, b = display_grid(a, target), display_grid(b, target)
    gap = np.full((a.shape[0], 8, *a.shape[2:]), 255, dtype=np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def build(reg: Registry) -> dict:
    names = reg.names

    def conditional(name: str) -> bool:
        return reg.get(name).model_config.num_classes > 0

    def run(name: str, sampler: str, steps: object, eta: float, seed: object, num: object, digit: str,
            guidance: float, autoguidance: float = 1.0):
        """Stream (x_t, predicted x_0, status) while sampling; finally the chart, scrub slider and GIF."""
        ckpt = reg.get(name)
        cfg = SamplerConfig(sampler=sampler, steps=as_int("steps", steps), eta=as_float("eta", eta, 0, 1),
                            guidance=as_float("guidance scale", guidance, 0, MAX_GUIDANCE))
        guide = reg.guides.get(name)
        steps_iter = start(ckpt, cfg, seed, num, digit, reg.device, guide.model if guide else None, autoguidance)
        keep = frame_indices(cfg.steps, MAX_RECORDED_FRAMES)  # bounded: the trajectory lives in gr.State
        traj: dict = {"frames": [], "stats": [], "title": f"{name} · {sampler.upper()} · {cfg.steps} steps"}
        rec = METRICS.start("reverse", cfg.steps)
        pace = FrameClock()
        try:
            for step in steps_iter:
                rec.done += 1
                traj["stats"].append(step_stats(step))
                final = step.index == step.num_steps - 1
                show = not final and pace.due(force=step.index == 0)
                f = None
                if step.index in keep:  # at most MAX_RECORDED_FRAMES, evenly spread, first and last included
                    f = (step.index, step.num_steps, step.t, step.t_prev, raw_grid(step.x), raw_grid(step.x0_pred))
                    traj["frames"].append(f)
                if show:
                    rec.frames.append(rec.done)
                    f = f or (step.index, step.num_steps, step.t, step.t_prev, raw_grid(step.x),
                              raw_grid(step.x0_pred))
                    traj["last"] = f  # the newest frame shown: a stopped run ends here, not at a recorded frame
                    # The first frame clears the previous run's chart, scrub slider and GIF.
                    rest = (None, gr.update(visible=False), None) if len(rec.frames) == 1 else (gr.skip(),) * 3
                    yield (display_grid(f[4]), display_grid(f[5]), status(*f[:4]), traj, *rest)
            yield finish(traj)
        finally:
            rec.closed = True  # runs on normal end and when Gradio closes the generator (Stop)
            steps_iter.close()

    def finish(traj: dict, note: str = ""):
        """Final outputs of a (possibly stopped) run: last frame, chart, scrub slider, GIF."""
        frames = traj.get("frames") if traj else None
        last = traj.get("last") if traj else None
        if frames and last is not None and last[0] > frames[-1][0]:
            frames.append(last)  # stopped between recorded frames: keep the step the visitor last saw
        if not frames:
            return gr.skip(), gr.skip(), "No steps were computed." + note, traj, gr.skip(), gr.skip(), gr.skip()
        f = frames[-1]
        chart = figures.step_chart(traj["stats"], "per-step statistics · " + traj["title"])
        keep = sorted(frame_indices(len(frames), MAX_RECORDED_FRAMES))
        gif = write_gif([pair_frame(frames[i][4], frames[i][5]) for i in keep])
        slider = gr.Slider(0, len(frames) - 1, value=len(frames) - 1, step=1, visible=True, interactive=True,
                           label=f"scrub the recorded trajectory ({len(frames)} frames, no recomputation)")
        return (display_grid(f[4]), display_grid(f[5]), status(*f[:4], note), traj, chart, slider, gif)

    def stopped(traj: dict):
        return finish(traj, " · **stopped**")

    def show_frame(traj: dict, k: object):
        frames = (traj or {}).get("frames") or []
        if not frames:
            raise ValueError("run the sampler first (Play), then scrub")
        k = min(max(as_int("frame", k), 0), len(frames) - 1)
        f = frames[k]
        return display_grid(f[4]), display_grid(f[5]), status(*f[:4], f" · recorded frame {k + 1}/{len(frames)}")

    def on_sampler(sampler: str):
        return gr.update(value=1000 if sampler == "ddpm" else 50), gr.update(interactive=sampler == "ddim")

    md(INTRO)
    traj = gr.State(None, time_to_live=TRAJECTORY_TTL_S)
    with gr.Row():
        ckpt = gr.Dropdown(names, value=names[0], label="Checkpoint")
        sampler = gr.Radio(["ddim", "ddpm"], value="ddim", label="Sampler")
        steps = gr.Slider(1, 1000, value=50, step=1, label="Steps (denoiser evaluations)")
        eta = gr.Slider(0, 1, value=0, step=0.05, label="η (DDIM noise: 0 deterministic, 1 DDPM-like)")
    with gr.Row():
        seed = seed_box("Seed (x_T and every draw)")
        num = gr.Slider(1, 16, value=4, step=1, label="Number of images")
        cond = conditional(names[0])
        digit = digit_dropdown(cond)
        guidance = guidance_slider(cond, default_digit(cond))
        autoguidance = autoguidance_slider(reg, names[0], default_digit(cond))
    with gr.Row():
        play = gr.Button("▶ Play", variant="primary", elem_id="reverse-play")
        stop = gr.Button("■ Stop", variant="stop", elem_id="reverse-stop")
    info = md("Press Play.", elem_id="reverse-status")
    with gr.Row():
        xt = gr.Image(label="x_t (the sample being denoised)", format="png", height=300, interactive=False,
                      elem_id="reverse-xt")
        x0 = gr.Image(label="predicted x̂₀ (the network's current guess)", format="png", height=300,
                      interactive=False, elem_id="reverse-x0")
    scrub = gr.Slider(0, 1, value=0, step=1, label="scrub the recorded trajectory", visible=False,
                      elem_id="reverse-scrub")
    with gr.Row():
        chart = gr.Plot(label="per-step statistics")
        gif = gr.File(label="animation (GIF)", interactive=False)
    md("The chart: the std of $x_t$ falls from about 1 (pure noise) towards the data's spread, and the "
       "RMS of the predicted noise $\\lVert\\hat\\varepsilon\\rVert/\\sqrt d$ stays near 1 until the last steps.")

    outs = [xt, x0, info, traj, chart, scrub, gif]
    ev = play.click(GPU(friendly(run)), [ckpt, sampler, steps, eta, seed, num, digit, guidance, autoguidance], outs,
                    api_name="reverse_sample", show_progress="minimal", **SAMPLING)
    # Cancel first, then render the stopped run: Gradio's front end drops the outputs of an event
    # that itself cancels the event writing the same components (seen in Chromium on a quiet machine).
    stop.click(None, None, None, cancels=[ev], api_visibility="private", **LIGHT).then(
        friendly(stopped), [traj], outs, api_name="reverse_stop", **LIGHT)
    scrub.input(friendly(show_frame), [traj, scrub], [xt, x0, info], api_name="reverse_scrub",
                trigger_mode="always_last", show_progress="hidden", **LIGHT)
    ckpt.input(friendly(partial(on_model_controls, reg)), [ckpt, digit], [digit, guidance, autoguidance],
               api_name="reverse_model", **LIGHT)
    digit.input(friendly(partial(on_digit_controls, reg)), [ckpt, digit], [guidance, autoguidance],
                api_name="reverse_digit", **LIGHT)
    sampler.input(on_sampler, sampler, [steps, eta], api_name="reverse_sampler", **LIGHT)
    return {}
