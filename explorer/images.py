"""Pictures for display: upscaled grids, uploaded-image conversion, GIFs, the shipped examples.

Uploads are untrusted: `open_image` refuses empty, unreadable and oversized files with a clear
message (the pixel count is checked from the header, before anything is decoded), and
`convert_image` turns every mode Pillow reads (RGBA, palette, 16-bit, greyscale, CMYK...) into the
model's format. GIFs go to one private folder that keeps only the newest MAX_GIFS files.
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from diffusion_core.render import grid, to_uint8

from .state import ASSETS_DIR

DISPLAY_PX = 256  # images are upscaled (nearest neighbour) to about this many pixels across
MAX_PIXELS = 4096 * 4096  # larger uploads are refused before decoding (a 5 MB PNG can hold 100+ MP)
MAX_GIFS = 64  # GIFs kept on disk (Gradio copies each into its own cache as soon as it is returned)


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


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer / float greyscale -> 8-bit "L", scaled (Pillow's convert would clip at 255)."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    a = np.asarray(img, dtype=np.float64)
    top = a.max() if a.size else 0.0
    if img.mode.startswith("I;16") or 255 < top <= 65535:
        a = a / 257.0  # 16-bit range 0..65535 -> 0..255
    elif top > 65535:
        a = (a - a.min()) * (255.0 / max(top - a.min(), 1e-12))
    elif img.mode == "F" and 0.0 <= a.min() and top <= 1.0:
        a = a * 255.0  # float images in [0, 1]
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def convert_image(img: Image.Image, channels: int, size: int) -> torch.Tensor:
    """Any PIL image -> [C x size x size] in [-1, 1]: upright (EXIF), to 8 bits, transparent parts black,
    centre-cropped to a square, resized, to L or RGB."""
    img = to_8bit(ImageOps.exif_transpose(img))
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


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an uploaded file as an image, or raise ValueError with a clear message.

    The size is read from the header first: a JPEG too large is decoded at a reduced scale (draft
    mode, 1/2 to 1/8, nearly free), anything else over `max_pixels` is refused without decoding.
    """
    name = Path(path).name
    try:
        if os.path.getsize(path) == 0:
            raise ValueError(f"{name} is empty (0 bytes): upload an image file (PNG, JPEG, ...)")
    except OSError:
        raise ValueError(f"could not read {name}: the file is missing") from None
    try:
        img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels and img.format == "JPEG":
            img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
        if img.size[0] * img.size[1] > max_pixels:
            raise ValueError(
                f"{name} is {w}×{h} pixels ({w * h / 1e6:.1f} megapixels); images up to {max_pixels / 1e6:.1f} "
                f"megapixels are accepted. The models work at 28×28 or 32×32, so shrink it first.")
        if w < 1 or h < 1:
            raise ValueError(f"{name} has no pixels ({w}×{h})")
        img.load()
        return img
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        kind = ("not a recognised image format, or its header is damaged" if isinstance(e, UnidentifiedImageError)
                else "the image data is damaged or truncated")
        raise ValueError(f"could not read {name} as an image: {kind} ({e.__class__.__name__}). "
                         "Upload a PNG, JPEG, GIF, BMP or WebP file.") from None


def examples() -> dict[str, Path]:
    """name -> path of the example images shipped in assets/examples/."""
    return {p.stem: p for p in sorted((ASSETS_DIR / "examples").glob("*.png"))}


_gif_dir: Path | None = None
_gif_lock = threading.Lock()
_gif_count = itertools.count()


def gif_dir() -> Path:
    """This process's GIF folder (created on first use, under the system temp dir)."""
    global _gif_dir
    with _gif_lock:
        if _gif_dir is None:
            _gif_dir = Path(tempfile.mkdtemp(prefix="diffusion-explorer-gifs-"))
        return _gif_dir


def write_gif(frames: list[np.ndarray], duration_ms: int = 60, keep: int = MAX_GIFS) -> str:
    """Upscaled frames ([H x W] or [H x W x 3] uint8) -> path of a looping GIF (last frame held).

    Only the newest `keep` GIFs stay on disk, so many visitors cannot fill it.
    """
    pics = [Image.fromarray(f) for f in frames]
    durations = [duration_ms] * (len(pics) - 1) + [1500]
    d = gif_dir()
    path = d / f"diffusion-{os.getpid()}-{next(_gif_count):08d}.gif"
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=durations, loop=0, optimize=False)
    with _gif_lock:
        old = sorted(d.glob("diffusion-*.gif"))[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return str(path)
