"""Process-level choices made once, at the edge: the device, the number of CPU threads, and the one
OS thread that does a server's torch work (`torch_thread`)."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar, get_args

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
    """Size the calling thread's torch intra-op pool to n threads (default: the available cores); returns n.

    PyTorch sizes a thread's pool lazily, from the process-wide value, the first time the thread
    asks; asking here settles it, so that a later `set_num_threads` elsewhere (TorchThread.confine_others)
    leaves this thread's pool alone.
    """
    n = n or available_cores()
    torch.set_num_threads(n)
    torch.get_num_threads()
    return n


T = TypeVar("T")
_DONE = object()


class TorchThread:
    """One long-lived OS thread that runs all of a process's torch work: `run(fn, ...)`, `iterate(gen)`.

    Why a server needs it: PyTorch's CPU wheels use GNU OpenMP (libgomp), which gives every OS thread
    that starts parallel work a worker pool of its own. Idle workers spin about 3 ms (300,000 spins)
    for the next parallel region, but only 100 spins once libgomp manages more threads than there are
    CPUs (libgomp/env.c, `gomp_throttled_spin_count_var`), and then every parallel region has to wake
    its workers through the kernel. So while a second thread that did torch work lives, every forward
    pass on every thread runs slower: 1.4x to 1.9x on this project's 2-core machine (bench/sampling.py,
    "torch work from a second OS thread"). Gradio runs handlers on a pool of worker threads, so the app sends
    all of its torch work through one TorchThread and gives every other thread a single intra-op
    thread (`confine_others`).
    """

    def __init__(self, name: str = "torch") -> None:
        self._name = name
        self._threads: int | None = None  # the pool size kept here, recorded by confine_others
        self._start()
        # A forked child (ZeroGPU's workers, a preloading server) inherits no threads: start one there.
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self._ident: int | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name, initializer=self._started)

    def _started(self) -> None:
        self._ident = threading.get_ident()
        if self._threads:
            set_threads(self._threads)

    @property
    def ident(self) -> int:
        """The thread's identifier (starts the thread if it has not run yet)."""
        return self.run(threading.get_ident)

    def run(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """fn(*args, **kwargs) on this thread; its result or exception comes back to the caller.

        Called from this thread itself (a nested call), fn runs directly instead of deadlocking.
        """
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def iterate(self, gen: Generator[T, None, None]) -> Iterator[T]:
        """Advance `gen` on this thread, one item at a time, and yield its items in the caller's thread.

        Closing the returned iterator closes `gen`, on this thread (its `finally` blocks run there).
        """
        try:
            while (item := self.run(next, gen, _DONE)) is not _DONE:
                yield item  # type: ignore[misc]
        finally:
            self.run(gen.close)

    def confine_others(self) -> None:
        """Give the calling thread, and threads started after this call, one intra-op thread each.

        Torch work that strays off this thread (a small tensor op in a UI callback) then runs inline
        and cannot start a second OpenMP pool; this thread keeps the pool that `set_threads` sized.
        """
        if threading.get_ident() != self.ident:
            self._threads = self.run(torch.get_num_threads)
            torch.set_num_threads(1)


@functools.cache
def torch_thread() -> TorchThread:
    """The process's TorchThread (created on first use)."""
    return TorchThread()
