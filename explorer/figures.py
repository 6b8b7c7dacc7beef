"""Small plotly figures (a few hundred points each, so that a scrub event stays fast)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from diffusion_core.explain import StepStats, normal_pdf, snr_db
from diffusion_core.schedules import NoiseSchedule

HEIGHT = 260
MARGIN = dict(l=40, r=10, t=30, b=35)


def _layout(fig: go.Figure, title: str, xaxis: str, yaxis: str = "") -> go.Figure:
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)), height=HEIGHT, margin=MARGIN, template="plotly_white",
        legend=dict(orientation="h", y=-0.25, x=0), xaxis_title=xaxis, yaxis_title=yaxis,
    )
    return fig


def _every(n: int, points: int = 200) -> slice:
    return slice(None, None, max(1, n // points))


def signal_noise(schedule: NoiseSchedule, t: int) -> go.Figure:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) over t, with the current t marked."""
    T = schedule.num_timesteps
    s = _every(T)
    ts = list(range(T))[s] + [T - 1]
    sig = schedule.sqrt_alphas_cumprod.cpu().tolist()
    noi = schedule.sqrt_one_minus_alphas_cumprod.cpu().tolist()
    fig = go.Figure()
    fig.add_scatter(x=ts, y=[sig[i] for i in ts], name="signal √ᾱₜ", line=dict(color="#1f77b4"))
    fig.add_scatter(x=ts, y=[noi[i] for i in ts], name="noise √(1−ᾱₜ)", line=dict(color="#d62728"))
    fig.add_scatter(x=[t, t], y=[sig[t], noi[t]], mode="markers", name=f"t = {t}",
                    marker=dict(size=10, color="black"))
    fig.add_vline(x=t, line=dict(color="gray", dash="dot"))
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, f"{schedule.config.name} schedule: signal and noise scale", "t")


def histogram(x_t: torch.Tensor, t: int) -> go.Figure:
    """Pixel values of x_t against the N(0, 1) density."""
    v = x_t.flatten().float()
    edges = torch.linspace(-4, 4, 41)
    counts = torch.histc(v.clamp(-4, 4), bins=40, min=-4, max=4)
    width = float(edges[1] - edges[0])
    density = (counts / (v.numel() * width)).tolist()
    centers = ((edges[:-1] + edges[1:]) / 2).tolist()
    grid = torch.linspace(-4, 4, 81)
    fig = go.Figure()
    fig.add_bar(x=centers, y=density, width=width, name=f"pixels of x_{t}", marker_color="#7f7f7f", opacity=0.7)
    fig.add_scatter(x=grid.tolist(), y=normal_pdf(grid).tolist(), name="N(0, 1)", line=dict(color="#d62728"))
    fig.update_xaxes(range=[-4, 4])
    return _layout(fig, f"histogram of x_{t} (mean {v.mean():.2f}, std {v.std():.2f})", "pixel value", "density")


def schedules_overview(schedules: dict[str, NoiseSchedule]) -> go.Figure:
    """alpha_bar_t and log-SNR for each schedule, in two panels."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("ᾱₜ (share of signal variance)", "log SNR = log(ᾱₜ / (1 − ᾱₜ))"))
    colors = {"linear": "#1f77b4", "cosine": "#ff7f0e"}
    for name, s in schedules.items():
        T = s.num_timesteps
        ts = list(range(T))[_every(T)] + [T - 1]
        ab = s.alphas_cumprod.double().cpu()
        logsnr = (snr_db(s) / 10.0 * torch.log(torch.tensor(10.0, dtype=torch.float64))).tolist()
        c = colors.get(name)
        fig.add_scatter(x=ts, y=[ab[i].item() for i in ts], name=name, line=dict(color=c), row=1, col=1)
        fig.add_scatter(x=ts, y=[logsnr[i] for i in ts], name=name, line=dict(color=c), showlegend=False, row=1, col=2)
    fig.update_xaxes(title_text="t")
    fig.update_layout(height=300, margin=dict(l=40, r=10, t=40, b=35), template="plotly_white",
                      legend=dict(orientation="h", y=-0.2, x=0))
    return fig


def step_chart(stats: list[StepStats], title: str = "per-step statistics") -> go.Figure:
    """std of x_t and RMS of the predicted noise against the step index."""
    idx = [s.index + 1 for s in stats]
    fig = go.Figure()
    fig.add_scatter(x=idx, y=[s.x_std for s in stats], name="std of x_t", line=dict(color="#1f77b4"))
    fig.add_scatter(x=idx, y=[s.eps_rms for s in stats], name="‖ε̂‖/√d (RMS of predicted noise)",
                    line=dict(color="#d62728"))
    return _layout(fig, title, "step")
