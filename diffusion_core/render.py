"""Tensors to pictures: uint8 arrays, grids and PNG/NPZ files (no UI here)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N x C x H x W] in [-1, 1] -> [N x H x W x C] uint8 (values outside [-1, 1] are clipped)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """[N x H x W x C] uint8 -> one [rows*(H+pad)+pad x cols*(W+pad)+pad x C] image, nrow images per row."""
    n, h, w, c = images.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = img
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """[H x W x C] uint8 (C = 1 or 3) -> PNG bytes (deterministic)."""
    from PIL import Image

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_images(images: np.ndarray, out: str | Path, nrow: int | None = None) -> None:
    """Write [N x H x W x C] uint8 as a PNG grid (.png) or as an npz with key `images` (.npz)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        out.write_bytes(png_bytes(grid(images, nrow)))
    elif out.suffix == ".npz":
        np.savez_compressed(out, images=images)
    else:
        raise ValueError(f"--out must end in .png or .npz, got {str(out)!r}")
