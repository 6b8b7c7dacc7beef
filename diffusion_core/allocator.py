"""The process's malloc, chosen once at the edge, before torch is imported. Imports no torch.

Every call of a compiled package, and of an eager net, allocates and frees on the CPU: oneDNN's
per-call attributes, descriptors and scratchpads around each convolution (ideep), and the
activations the call writes. With glibc's malloc that work costs about 30 us per convolution on
this project's 2-core Xeon, and tcmalloc or jemalloc make a whole call 1.3x to 1.5x faster
(`python bench/allocator.py`; Intel's PyTorch CPU tuning guides give the same advice). The dynamic
loader only takes another malloc when a process starts (LD_PRELOAD), so `reexec_with_fast_malloc()`
re-executes the current command once with it preloaded, where Linux has one installed (Debian:
`apt install libtcmalloc-minimal4`; a Space lists it in packages.txt). Elsewhere nothing changes.

    DIFFUSION_ALLOCATOR=auto     (default) the first of FAST_MALLOCS that the loader can find
    DIFFUSION_ALLOCATOR=system   the C library's malloc, no re-execution
    DIFFUSION_ALLOCATOR=<lib>    a library name or path to preload instead
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "DIFFUSION_ALLOCATOR"
FAST_MALLOCS = ("tcmalloc_minimal", "jemalloc", "tcmalloc")  # fastest first, on this project's CPU
_TRIED = "_DIFFUSION_ALLOCATOR_TRIED"  # set in the re-executed process: never re-execute twice


def find_fast_malloc(choice: str = "auto") -> str | None:
    """The library to preload for `choice` ("auto", "system" or a library), or None for the C library's."""
    if choice == "system":
        return None
    if choice != "auto":
        return choice
    for name in FAST_MALLOCS:
        if lib := ctypes.util.find_library(name):  # a soname the loader finds, e.g. libjemalloc.so.2
            return lib
    return None


def loaded_malloc() -> str:
    """Which malloc this process runs on: the preloaded library's file name, or "system"."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1].strip()
                if name.startswith(tuple(f"lib{m}." for m in FAST_MALLOCS)):
                    return name
    except OSError:  # no /proc: not Linux
        pass
    return "system"


def reexec_with_fast_malloc() -> None:
    """Re-execute this command (sys.orig_argv) with a fast malloc preloaded, or return at once.

    Call it first thing in a command's `__main__`, before torch is imported. It returns when
    DIFFUSION_ALLOCATOR=system, off Linux, when none is installed, when one is already loaded,
    and in the re-executed process (whether or not the loader took the library).
    """
    if not sys.platform.startswith("linux") or os.environ.get(_TRIED) or loaded_malloc() != "system":
        return
    lib = find_fast_malloc(os.environ.get(ENV, "auto"))
    if lib is None:
        return
    preload = " ".join(filter(None, (lib, os.environ.get("LD_PRELOAD"))))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": preload, _TRIED: lib})
