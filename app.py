"""Diffusion Explorer: `python app.py` serves the explainer on localhost (GRADIO_SERVER_NAME / _PORT to change).

It loads every diffusion checkpoint in ./checkpoints once (or $EXPLORER_CHECKPOINTS), on the device
chosen once at start-up (CUDA, then MPS, then CPU). On the CPU it runs each checkpoint from its
AOTInductor package where this machine has one, and builds the missing ones in the background at
the lowest priority ($EXPLORER_COMPILED: "1" by default, "use" for existing packages only, "0" for
none). Run as a command on Linux, it first re-executes itself with tcmalloc or jemalloc preloaded
where one is installed (diffusion_core/allocator.py; DIFFUSION_ALLOCATOR=system to keep glibc's).
The views live in explorer/, the math in diffusion_core/.
"""

import os

if __name__ == "__main__":  # before torch is imported: the loader takes a malloc only at start-up
    from diffusion_core.allocator import reexec_with_fast_malloc

    reexec_with_fast_malloc()

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

from explorer import build_app, launch_kwargs  # noqa: E402
from explorer.state import compile_in_background, load_registry  # noqa: E402

registry = load_registry(compiled=False)  # eager first: loading packages imports Inductor (about 2 s)
demo = build_app(registry)

if __name__ == "__main__":
    from diffusion_core.allocator import loaded_malloc

    print(f"* malloc: {loaded_malloc()}", flush=True)
    mode = os.environ.get("EXPLORER_COMPILED", "1")  # "use": existing packages only; "0": none
    if mode != "0":
        compile_in_background(registry, build=mode != "use")
    demo.launch(**launch_kwargs())
