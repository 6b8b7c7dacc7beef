"""The execution path for sampling: precision and memory format, chosen once at the edge.

`InferenceModel` wraps a trained eps-model with the same call signature and `.cfg`, so the
samplers need not know about it. Paths (measured by bench/sampling.py):
- "float32": plain eager float32.
- "bfloat16": the whole net in bfloat16 (a copy of the weights cast once; output back in float32),
  used by "auto" only where the hardware computes bfloat16 natively: CUDA with bf16 support, or an
  x86 CPU with AVX-512 BF16 or AMX. Elsewhere bfloat16 is emulated and slower, so "auto" stays
  float32. `autocast=True` runs the float32 weights under torch.autocast instead, which re-casts
  every weight on every call; bench/sampling.py measures both.
The sampler's own arithmetic (x_t, x_0, eps updates) always runs in float32.
"""

from __future__ import annotations

import copy
import functools
from typing import Literal, get_args

import torch

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
    """"auto" -> "bfloat16" where native, else "float32"; explicit choices are kept."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


class InferenceModel(torch.nn.Module):
    """eps_theta under the chosen precision: `InferenceModel(model, "bfloat16")(x, t, y) -> float32 eps`.

    float32 wraps `model` itself; bfloat16 (without autocast) and channels-last work on a copy, so the
    caller's model is never changed.
    """

    def __init__(self, model: torch.nn.Module, precision: str = "float32", channels_last: bool = False,
                 autocast: bool = False) -> None:
        super().__init__()
        check_choice("precision", precision, PRECISIONS[1:])
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
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(x, t, y)
        return out.float().contiguous()
