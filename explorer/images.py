"""Pictures for display: upscaled grids, uploaded-image conversion, GIFs, the shipped examples."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from diffusion_core.render import grid, to_uint8

from .state import ASSETS_DIR

DISPLAY_PX = 256  # images are upscaled (nearest neighbour) to about this many pixels across


def upscale(img: np.ndarray, target: int = DISPLAY_PX) -> np.ndarray:
    """[H x W x C] uint8 -> nearest-neighbour upscale by an integer factor; grey images become [H x W]."""
    k = max(1, target // max(img.shape[0], img.shape[1]))
    out = img.repeat(k, axis=0).repeat(k, axis=1)
    return out[..., 0] if out.shape[-1] == 1 else out


def display(x: torch.Tensor, target: int = DISPLAY_PX, nrow: int | None = None) -> np.ndarray:
    """[N x C x H x W] in [-1, 1] -> one upscaled grid image (nrow images per row)."""
    return upscale(grid(to_uint8(x), nrow, pad=1 if x.shape[0] > 1 else 0), target)


def display_grid(g: np.ndarray, target: int = DISPLAY_PX) -> np.ndarray:
    return upscale(g, target)


def raw_grid(x: torch.Tensor) -> np.ndarray:
    """[N x C x H x W] -> the small uint8 grid that trajectories record (upscaled only when shown)."""
    return grid(to_uint8(x), pad=1 if x.shape[0] > 1 else 0)


def convert_image(img: Image.Image, channels: int, size: int) -> torch.Tensor:
    """Any PIL image -> [C x size x size] in [-1, 1]: centre-crop to a square, resize, to L or RGB."""
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (0, 0, 0, 255))  # transparent parts become black
    img = Image.alpha_composite(bg, img).convert("L" if channels == 1 else "RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((size, size), Image.Resampling.LANCZOS if s > size else Image.Resampling.BICUBIC)
    a = np.asarray(img, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a / 127.5 - 1.0)


def open_image(path: str | Path) -> Image.Image:
    """Open an uploaded file as an image, or raise ValueError with a clear message."""
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"could not read {Path(path).name} as an image ({e.__class__.__name__})") from None


def examples() -> dict[str, Path]:
    """name -> path of the example images shipped in assets/examples/."""
    return {p.stem: p for p in sorted((ASSETS_DIR / "examples").glob("*.png"))}


def write_gif(frames: list[np.ndarray], duration_ms: int = 60) -> str:
    """Upscaled frames ([H x W] or [H x W x 3] uint8) -> path of a looping GIF (last frame held)."""
    pics = [Image.fromarray(f) for f in frames]
    durations = [duration_ms] * (len(pics) - 1) + [1500]
    f = tempfile.NamedTemporaryFile(prefix="diffusion-", suffix=".gif", delete=False)
    f.close()
    pics[0].save(f.name, save_all=True, append_images=pics[1:], duration=durations, loop=0, optimize=False)
    return f.name
