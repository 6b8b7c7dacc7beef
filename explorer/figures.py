"""Small plotly figures, written as Plotly JSON (a few hundred points each, so that a scrub event stays fast).

Each function returns the `PlotData` that gr.Plot sends to the browser's plotly.js as it is. Building
`plotly.graph_objects.Figure`s instead validates every property in Python: that cost 15-20 ms per
figure, most of a forward-scrub event (bench/app_latency.py), for the same JSON.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from gradio.components.plot import PlotData

from diffusion_core.explain import StepStats, normal_pdf, snr_db
from diffusion_core.schedules import NoiseSchedule

HEIGHT = 260
MARGIN = dict(l=40, r=10, t=30, b=60)  # b: tick labels, the x title, and the legend at the bottom
_AXIS = dict(gridcolor="#EBF0F8", linecolor="#EBF0F8", ticks="", zerolinecolor="#EBF0F8", zerolinewidth=2,
             automargin=True, title=dict(standoff=15))
# The parts of plotly's "plotly_white" template that these 2-D figures use.
TEMPLATE = dict(layout=dict(
    font=dict(color="#2a3f5f"), hovermode="closest", paper_bgcolor="white", plot_bgcolor="white",
    colorway=["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880"],
    xaxis=_AXIS, yaxis=_AXIS, title=dict(x=0.05), shapedefaults=dict(line=dict(color="#2a3f5f")),
))


def plot(data: list[dict[str, Any]], layout: dict[str, Any]) -> PlotData:
    """Plotly JSON ({"data": traces, "layout": layout}) for gr.Plot."""
    return PlotData(type="plotly", plot=json.dumps({"data": data, "layout": {"template": TEMPLATE, **layout}}))


def spec(p: PlotData) -> dict[str, Any]:
    """The figure as a dict (for tests and for readers)."""
    return json.loads(p.plot)


def _layout(title: str, xaxis: str, yaxis: str = "", **extra: Any) -> dict[str, Any]:
    return dict(title=dict(text=title, font=dict(size=13)), height=HEIGHT, margin=MARGIN,
                legend=dict(orientation="h", yref="container", yanchor="bottom", y=0, x=0), xaxis=dict(title=dict(text=xaxis)),
                yaxis=dict(title=dict(text=yaxis)), **extra)


def _line(x: list, y: list, name: str, color: str, **extra: Any) -> dict[str, Any]:
    return dict(type="scatter", mode="lines", x=x, y=y, name=name, line=dict(color=color), **extra)


def _every(n: int, points: int = 200) -> slice:
    return slice(None, None, max(1, n // points))


def _curve_ts(T: int) -> list[int]:
    return list(range(T))[_every(T)] + [T - 1]


def signal_noise(schedule: NoiseSchedule, t: int) -> PlotData:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) over t, with the current t marked."""
    ts = _curve_ts(schedule.num_timesteps)
    sig = schedule.sqrt_alphas_cumprod.cpu().tolist()
    noi = schedule.sqrt_one_minus_alphas_cumprod.cpu().tolist()
    data = [
        _line(ts, [sig[i] for i in ts], "signal √ᾱₜ", "#1f77b4"),
        _line(ts, [noi[i] for i in ts], "noise √(1−ᾱₜ)", "#d62728"),
        dict(type="scatter", mode="markers", x=[t, t], y=[sig[t], noi[t]], name=f"t = {t}",
             marker=dict(size=10, color="black")),
    ]
    vline = dict(type="line", xref="x", x0=t, x1=t, yref="y domain", y0=0, y1=1, line=dict(color="gray", dash="dot"))
    layout = _layout(f"{schedule.config.name} schedule: signal and noise scale", "t", shapes=[vline])
    layout["yaxis"]["range"] = [0, 1.02]
    return plot(data, layout)


def histogram(x_t: torch.Tensor, t: int) -> PlotData:
    """Pixel values of x_t against the N(0, 1) density."""
    v = x_t.flatten().float()
    edges = torch.linspace(-4, 4, 41)
    counts = torch.histc(v.clamp(-4, 4), bins=40, min=-4, max=4)
    width = float(edges[1] - edges[0])
    density = (counts / (v.numel() * width)).tolist()
    centers = ((edges[:-1] + edges[1:]) / 2).tolist()
    grid = torch.linspace(-4, 4, 81)
    data = [
        dict(type="bar", x=centers, y=density, width=width, name=f"pixels of x_{t}", marker=dict(color="#7f7f7f"),
             opacity=0.7),
        _line(grid.tolist(), normal_pdf(grid).tolist(), "N(0, 1)", "#d62728"),
    ]
    layout = _layout(f"histogram of x_{t} (mean {v.mean():.2f}, std {v.std():.2f})", "pixel value", "density")
    layout["xaxis"]["range"] = [-4, 4]
    return plot(data, layout)


def schedules_overview(schedules: dict[str, NoiseSchedule]) -> PlotData:
    """alpha_bar_t and log-SNR for each schedule, in two panels side by side."""
    colors = {"linear": "#1f77b4", "cosine": "#ff7f0e"}
    data = []
    for name, s in schedules.items():
        ts = _curve_ts(s.num_timesteps)
        ab = s.alphas_cumprod.double().cpu().tolist()
        logsnr = (snr_db(s) / 10.0 * torch.log(torch.tensor(10.0, dtype=torch.float64))).tolist()
        c = colors.get(name, "#2ca02c")
        data.append(_line(ts, [ab[i] for i in ts], name, c, legendgroup=name))
        data.append(_line(ts, [logsnr[i] for i in ts], name, c, legendgroup=name, showlegend=False,
                          xaxis="x2", yaxis="y2"))
    titles = ("ᾱₜ (share of signal variance)", "log SNR = log(ᾱₜ / (1 − ᾱₜ))")
    domains = ([0.0, 0.45], [0.55, 1.0])
    layout = dict(
        height=300, margin=dict(l=40, r=10, t=40, b=35), legend=dict(orientation="h", y=-0.2, x=0),
        xaxis=dict(domain=domains[0], anchor="y", title=dict(text="t")), yaxis=dict(anchor="x"),
        xaxis2=dict(domain=domains[1], anchor="y2", title=dict(text="t")), yaxis2=dict(anchor="x2"),
        annotations=[dict(text=text, x=sum(d) / 2, y=1.0, xref="paper", yref="paper", xanchor="center",
                          yanchor="bottom", showarrow=False, font=dict(size=14)) for text, d in zip(titles, domains)],
    )
    return plot(data, layout)


def step_chart(stats: list[StepStats], title: str = "per-step statistics") -> PlotData:
    """std of x_t and RMS of the predicted noise against the step index."""
    idx = [s.index + 1 for s in stats]
    data = [
        _line(idx, [s.x_std for s in stats], "std of x_t", "#1f77b4"),
        _line(idx, [s.eps_rms for s in stats], "‖ε̂‖/√d (RMS of predicted noise)", "#d62728"),
    ]
    return plot(data, _layout(title, "step"))
