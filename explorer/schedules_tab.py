"""View 4, schedules: linear vs cosine alpha_bar and log-SNR, and the two MNIST models at 10/20/50 DDIM steps."""

from __future__ import annotations

import gradio as gr

from diffusion_core.samplers import SamplerConfig

from . import figures
from .common import ANY_DIGIT, GPU, SAMPLING, friendly, md, seed_box, start
from .images import display
from .state import Registry

INTRO = r"""
### The schedule decides how fast the signal is destroyed
The linear schedule ($\beta_t$ from $10^{-4}$ to $0.02$) drives $\bar\alpha_t$ to almost 0 by about two thirds
of the way, so the last third of the steps see nearly pure noise; the cosine schedule (Nichol & Dhariwal 2021)
spends its steps more evenly in log-SNR.

$$\bar\alpha_t^{\text{linear}} = \prod_{s\le t}(1-\beta_s),\qquad
\bar\alpha_t^{\text{cosine}} = \frac{f(t)}{f(0)},\; f(t) = \cos^2\!\Big(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\Big),\qquad
\log\mathrm{SNR}_t = \log\frac{\bar\alpha_t}{1-\bar\alpha_t}$$
"""

STEPS = (10, 20, 50)
GRID = 3  # each sample grid is GRID x GRID images: square, like the gallery's tiles
ROW_PX = 470  # the gallery's height per row of square tiles: they are about 450 px wide in the 1,400 px page
METRIC_NAMES = {"fd": "Fréchet dist. ↓", "fd_real_floor": "real-data floor", "confident": "confident ↑",
                "coverage": "class coverage ↑", "coverage_real_floor": "real-data coverage",
                "label_accuracy": "label acc. ↑", "clean_disc": "clean discs ↑"}

METRIC_LEGEND = ("*Fréchet dist.*: how far the generated digits' features (from a digit classifier) lie from real "
                 "ones, lower is better; the *real-data floor* is what as many real digits score. *confident*: the "
                 "share of samples the classifier assigns to one digit with p ≥ 0.9. *class coverage*: 1 when the ten "
                 "digits appear in equal shares; *real-data coverage* is what as many real digits score, short of 1 "
                 "by chance. *clean discs*: the share of circles samples that are one clean disc on a plain ground.")


def setting(r: dict) -> str:
    """An evaluation result's sampling setting in words (its seed left out), e.g.
    "DDIM-50 · η = 1 · autoguided w = 1.5 · n = 1000 · float32"."""
    parts = [f"{str(r.get('sampler', '?')).upper()}-{r.get('steps', '?')}"]
    if r.get("sampler") == "ddim" and r.get("eta"):
        parts.append(f"η = {r['eta']:g}")
    if r.get("labels") is not None:
        parts.append("every digit, " + ("no guidance" if r.get("guidance") == 1.0 else f"guided w = {r.get('guidance')}"))
    if r.get("guide"):
        parts.append("the guide alone" if r.get("autoguidance") == 0 else f"autoguided w = {r.get('autoguidance')}")
    if r.get("spacing", "trailing") != "trailing":
        parts.append(f"{r['spacing']} spacing")
    if r.get("clip_x0") is False:
        parts.append("x₀ not clipped")
    parts += [f"n = {r.get('num')}", str(r.get("precision", "")), "compiled" if r.get("compiled") else ""]
    return " · ".join(p for p in parts if p)


def quality_table(reg: Registry) -> str:
    """The measured figures filed under "evaluation" in each model card, one row per setting: a setting
    measured from several seeds shows each figure per seed, "a / b / c"."""
    rows = []
    for name, c in reg.checkpoints.items():
        groups: dict[str, list[dict]] = {}
        for r in (c.card.get("evaluation") or {}).values():
            if isinstance(r, dict):
                groups.setdefault(setting(r), []).append(r)
        for what, rs in groups.items():
            rs.sort(key=lambda r: r.get("seed") or 0)
            vals = " · ".join(f"{label} {' / '.join(str(r.get(m, '-')) for r in rs)}"
                              for m, label in METRIC_NAMES.items() if any(r.get(m) is not None for r in rs))
            if len(rs) > 1:
                what += f" · seeds {' / '.join(str(r.get('seed')) for r in rs)}"
            rows.append(f"| {name} ({c.card['schedule']['name']}) | {what} | {vals} |")
    if not rows:
        return ("*No evaluation results in the model cards yet* (run `python -m diffusion_core.evaluate "
                "--write-card` on a checkpoint to file them).")
    return ("**Measured quality (from the model cards):** " + METRIC_LEGEND
            + "\n\n| model | setting | figures |\n|---|---|---|\n" + "\n".join(rows))


def build(reg: Registry) -> dict:
    mnist = [n for n, c in reg.checkpoints.items() if c.dataset == "mnist"]
    kind = "MNIST models" if mnist else "models"  # without an MNIST model, whatever models there are
    mnist = mnist or reg.names

    def run(seed: object, digit: str):
        """DDIM at 10, 20 and 50 steps for every MNIST model, from one seed (streamed as each finishes)."""
        out = []
        for name in mnist:
            ckpt = reg.get(name)
            d = digit if ckpt.model_config.num_classes else ANY_DIGIT  # unconditional models draw any digit
            for n in STEPS:
                steps = start(ckpt, SamplerConfig("ddim", steps=n, guidance=2.0), seed, GRID * GRID, d, reg.device)
                x = None
                for step in steps:
                    x = step.x
                out.append((display(x, 256, nrow=GRID), f"{name} ({ckpt.schedule.config.name}) · DDIM {n}"))
                yield out

    md(INTRO)
    gr.Plot(figures.schedules_overview(reg.schedules), label="linear vs cosine")
    gr.Markdown(f"**Samples from one seed** of the {kind} ({', '.join(mnist)}) at {', '.join(map(str, STEPS))} "
                f"DDIM steps (η = 0, {GRID * GRID} images each; digit \"any\" is the plain model, without the "
                "autoguidance the other tabs apply, as in the README's cosine-vs-linear table). Same seed, same x_T: "
                "differences come from the model and the number of steps."
                + ("" if len(mnist) > 1 else f" *(Only one {kind[:-1]} is installed so far.)*"))
    with gr.Row():
        seed = seed_box("Seed")
        digit = gr.Dropdown([ANY_DIGIT] + [str(d) for d in range(10)], value=ANY_DIGIT,
                            label="Digit (a digit: classifier-free guidance w = 2)")
        go = gr.Button("▶ Sample", variant="primary", elem_id="schedules-play")
    # One row of square tiles per MNIST model, ROW_PX each at the page's usual width ("auto" stopped at about
    # 500 px and scrolled the second row inside the gallery).
    gal = gr.Gallery(label="DDIM samples (hover for the model and step count)", columns=len(STEPS),
                     height=ROW_PX * len(mnist),
                     object_fit="contain", preview=False)
    md(quality_table(reg))
    go.click(GPU(friendly(run)), [seed, digit], gal, api_name="schedules_sample", show_progress="minimal", **SAMPLING)
    return {}
