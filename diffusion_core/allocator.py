"""The process's malloc, chosen once at the edge, before torch is imported. Imports no torch.

Every call of a compiled package, and of an eager net, allocates and frees on the CPU: oneDNN's
per-call attributes, descriptors and scratchpads around each convolution (ideep), and the
activations the call writes. With glibc's malloc that work cost 30 to 35 us per convolution on
this project's 2-core Xeon, and tcmalloc or jemalloc make a whole call 1.2x to 1.8x faster
(`python bench/allocator.py`; Intel's PyTorch CPU tuning guides give the same advice). The dynamic
loader only takes another malloc when a process starts (LD_PRELOAD), so `reexec_with_fast_malloc()`
re-executes the current command once with it preloaded, where Linux has one installed (Debian:
`apt install libtcmalloc-minimal4`; a Space lists it in packages.txt). Elsewhere nothing changes.

    DIFFUSION_ALLOCATOR=auto     (default) the first of FAST_MALLOCS installed in the usual library folders
    DIFFUSION_ALLOCATOR=system   the C library's malloc, no re-execution
    DIFFUSION_ALLOCATOR=<lib>    a library name or path to preload instead
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

ENV = "DIFFUSION_ALLOCATOR"
FAST_MALLOCS = ("tcmalloc_minimal", "jemalloc", "tcmalloc")  # fastest first, on this project's CPU
SONAME_VERSIONS = {"tcmalloc_minimal": 4, "jemalloc": 2, "tcmalloc": 4}
_TRIED = "_DIFFUSION_ALLOCATOR_TRIED"  # set in the re-executed process: never re-execute twice


def _library_dirs() -> list[Path]:
    """Where Debian, Ubuntu, Fedora and conda put shared libraries, this environment's first."""
    arch = sysconfig.get_config_var("MULTIARCH") or ""  # e.g. x86_64-linux-gnu
    prefixes = dict.fromkeys(p for p in (sys.prefix, os.environ.get("CONDA_PREFIX"), "/usr/local", "/usr", "/") if p)
    return list(dict.fromkeys(Path(p) / d for p in prefixes for d in (f"lib/{arch}", "lib64", "lib")))


def library_path(name: str) -> str | None:
    """The path of one of FAST_MALLOCS where installed, else None.

    Looks for the files themselves (no `ldconfig` or compiler run, as ctypes.util.find_library may do):
    this runs on every start of the app, also where none is installed.
    """
    for d in _library_dirs():
        for f in (d / f"lib{name}.so.{SONAME_VERSIONS[name]}", d / f"lib{name}.so"):
            if f.is_file():
                return str(f)
    return None


def find_fast_malloc(choice: str = "auto") -> str | None:
    """The library to preload for `choice` ("auto", "system" or a library), or None for the C library's."""
    if choice == "system":
        return None
    if choice != "auto":
        return choice
    return next(filter(None, map(library_path, FAST_MALLOCS)), None)


def loaded_malloc() -> str:
    """Which malloc this process runs on: the preloaded library's file name, or "system"."""
    asked = os.environ.get(_TRIED)  # the library the re-execution preloaded (DIFFUSION_ALLOCATOR may name any)
    known = tuple(f"lib{m}." for m in FAST_MALLOCS) + ((Path(asked).name,) if asked else ())
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1].strip()
                if name.startswith(known):
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


def environ_before_reexec() -> dict[str, str]:
    """os.environ without what `reexec_with_fast_malloc` added (for a child that should choose afresh).

    A user's own LD_PRELOAD goes too: rarely set, and a child started from a shell would choose anyway.
    """
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", _TRIED)}
