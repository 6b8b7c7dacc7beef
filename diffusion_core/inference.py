"""The execution path for sampling: precision and memory format, chosen once at the edge.

`InferenceModel` wraps a trained eps-model with the same call signature and `.cfg`, so the
samplers need not know about it. Paths (measured by bench/sampling.py):
- "float32": plain eager float32.
- "bfloat16": the whole net in bfloat16 (a copy of the weights cast once; output back in float32),
  used by "auto" only on an x86 CPU that computes bfloat16 natively (AVX-512 BF16 or AMX). Where
  it is emulated it is slower, and on a GPU these small nets gain nothing from it (see
  `resolve_precision`), so there "auto" stays float32. `autocast=True` runs the float32 weights
  under torch.autocast instead, which re-casts every weight on every call; bench/sampling.py
  measures both.
The sampler's own arithmetic (x_t, x_0, eps updates) always runs in float32.

On the CPU a net that sees (t, y) only through its conditioning c(t, y) (model.Conditioned) does not
recompute it per call: `ConditioningTable` holds c for every integer t < T and every label, computed
once in float32, and the call looks its rows up and runs `denoise(x, c)` (bench/sampling.py, `mnist-linear`
in bfloat16 at batch 1 / 4 / 16: eager 7.64 / 10.89 / 18.44 ms a call against 8.24 / 12.12 / 20.47 with c
computed, the package 3.98 / 5.75 / 10.40 against 4.22 / 6.27 / 10.61 with c computed inside).
"""

from __future__ import annotations

import copy
import functools
from typing import Literal, get_args

import torch

from .model import Conditioned
from .schedules import check_choice

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bfloat16(device: torch.device) -> bool:
    """Does this device compute bfloat16 matmuls/convs natively (not emulated)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bfloat16" on a CPU that computes it natively, else "float32"; explicit choices are kept.

    On a GPU "auto" is float32: these U-Nets are too small to keep one busy, so a model call costs its
    kernel launches, and bfloat16 only adds casts (H200, batch 16: float32 3.9 ms, bfloat16 weights
    4.4 ms, autocast 5.7 ms; bench/results/gpu-2026-11-27-run1/sampling.txt).
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return "bfloat16" if device.type == "cpu" and native_bfloat16(device) else "float32"
    return precision


class ConditioningTable:
    """c(t, y) of a `Conditioned` net for t = 0..T-1, looked up rather than computed: `table(t, y) -> [N x D]`.

    c(t, y) = c_time[t] + c_label[y] (model.Conditioned.conditioning_tables), both computed once in float32
    from the float32 weights, summed in float32 and cast to `dtype` per call. Returns None where the table
    does not hold the answer (fractional t, t outside 0..T-1, a label outside 0..classes, another device),
    and the caller computes it (the net's own checks then raise for a bad label).
    """

    def __init__(self, model: Conditioned, num_timesteps: int, dtype: torch.dtype) -> None:
        with torch.no_grad():
            c_time, c_label = model.conditioning_tables(num_timesteps)
        self.c_time, self.c_label = c_time.float(), None if c_label is None else c_label.float()
        self.null_label = model.cfg.null_label if c_label is not None else None
        self.num_timesteps = num_timesteps
        self.dtype = dtype

    def __call__(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
        """t [N] integer, y [N] integer or None -> c [N x D] in `dtype`, or None."""
        if t.is_floating_point() or t.ndim != 1 or t.device != self.c_time.device or not len(t):
            return None
        if not _within(t, self.num_timesteps):
            return None
        c = self.c_time[t]  # [N x D]
        if self.c_label is not None:
            if y is not None and (y.is_floating_point() or not _within(y, len(self.c_label))):
                return None
            c = c + (self.c_label[self.null_label] if y is None else self.c_label[y])
        return c.to(self.dtype)


def _within(i: torch.Tensor, n: int) -> bool:
    """Do the integer indices i all lie in 0..n-1 (a negative one would index from the end)?"""
    lo, hi = torch.aminmax(i)
    return lo.item() >= 0 and hi.item() < n


class InferenceModel(torch.nn.Module):
    """eps_theta under the chosen precision: `InferenceModel(model, "bfloat16")(x, t, y) -> float32 eps`.

    float32 wraps `model` itself; bfloat16 (without autocast) and channels-last work on a copy, so the
    caller's model is never changed. `num_timesteps` T: a `Conditioned` net on the CPU looks c(t, y) up
    for t < T (`table`, built from `model`'s weights as they are now) instead of computing it per call.
    """

    def __init__(self, model: torch.nn.Module, precision: str = "float32", channels_last: bool = False,
                 autocast: bool = False, num_timesteps: int = 1000) -> None:
        super().__init__()
        check_choice("precision", precision, PRECISIONS[1:])
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        # Built before the bfloat16 cast: the table holds c as float32 computes it, rounded once to
        # bfloat16 (under autocast too, where the embedding's linears return bfloat16).
        self.table = (ConditioningTable(model, num_timesteps, torch.bfloat16 if precision == "bfloat16" else torch.float32)
                      if isinstance(model, Conditioned) and on_cpu else None)
        self.precision = precision
        self.autocast = autocast and precision == "bfloat16"
        self.dtype = torch.bfloat16 if precision == "bfloat16" and not self.autocast else torch.float32
        self.channels_last = channels_last
        if self.dtype != torch.float32 or channels_last:
            model = copy.deepcopy(model).to(dtype=self.dtype)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.cfg = getattr(model, "cfg", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        c = self.table(t, y) if self.table is not None else None
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(x, t, y) if c is None else self.model.denoise(x, c)
        return out.float().contiguous()


class CUDAGraphModel(torch.nn.Module):
    """eps_theta replayed from CUDA graphs: `CUDAGraphModel(InferenceModel(model))(x, t, y)`, same outputs.

    A model this small leaves a GPU idle between its few hundred kernel launches; a graph captured once
    per call signature (input shape and dtype, with or without labels) replays them all with one launch.
    Inputs are copied into the graph's own buffers and the output is cloned out, so callers see an
    ordinary function. At most `max_graphs` graphs are kept (least recently used dropped). CUDA only;
    every call runs under torch.inference_mode and must come from one thread (the app's torch thread).
    """

    def __init__(self, model: torch.nn.Module, max_graphs: int = 16) -> None:
        super().__init__()
        self.model = model
        self.cfg = getattr(model, "cfg", None)
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple] = {}  # key -> (graph, static x, t, y, output); insertion order = LRU

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(f"CUDAGraphModel runs on a CUDA device, got inputs on {x.device}")
        key = (tuple(x.shape), x.dtype, t.dtype, None if y is None else y.dtype)
        with torch.inference_mode():
            entry = self._graphs.pop(key, None) or self._capture(x, t, y)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                del self._graphs[next(iter(self._graphs))]
            graph, sx, st, sy, out = entry
            sx.copy_(x)
            st.copy_(t)
            if y is not None:
                sy.copy_(y)
            graph.replay()
            return out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple:
        sx, st = x.clone(), t.clone()
        sy = None if y is None else y.clone()
        side = torch.cuda.Stream(x.device)  # warm-up off the default stream, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model(sx, st, sy)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(sx, st, sy)
        return graph, sx, st, sy, out
