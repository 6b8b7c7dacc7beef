"""Process-level choices made once, at the edge: the device and the number of CPU threads."""

from __future__ import annotations

import os
from typing import Literal, get_args

import torch

from .schedules import check_choice

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DEVICE_NAMES: tuple[str, ...] = get_args(DeviceName)


def select_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then MPS, then CPU; an explicit device that is absent raises."""
    check_choice("device", name, DEVICE_NAMES)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ValueError(f"device {name!r} was asked for but is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks, e.g. in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Size torch's intra-op pool to n threads (default: the available cores); returns n."""
    n = n or available_cores()
    torch.set_num_threads(n)
    return n
