"""Diffusion Explorer: `python app.py` serves the explainer on localhost (GRADIO_SERVER_NAME / _PORT to change).

It loads every diffusion checkpoint in ./checkpoints once (or $EXPLORER_CHECKPOINTS), on the device
chosen once at start-up (CUDA, then MPS, then CPU). The views live in explorer/, the math in diffusion_core/.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

from explorer import build_app, launch_kwargs  # noqa: E402

demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
