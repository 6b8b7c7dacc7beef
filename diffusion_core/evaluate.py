"""Score a checkpoint's samples and print JSON:

    python -m diffusion_core.evaluate --checkpoint checkpoints/mnist-linear --sampler ddim --steps 50 --num 1000
    [--autoguidance 2]   (unconditional samples guided away from the guide the card names)

MNIST (features and predictions of the shipped classifier, checkpoints/classifier-mnist):
  fd              Frechet distance between sample and training-set features (FID's formula, Heusel et al. 2017)
  fd_real_floor   the same for `num` real digits drawn from the training set: the best a sampler can expect
  confident       share of samples the classifier assigns one class with p >= 0.9
  coverage        sum_c min(share_c, 1/10): 1 when every class appears in proportion
  coverage_real_floor  the same for `num` real digits: i.i.d. draws fall short of 1 by chance alone
  label_accuracy  with --label or --all-labels: share classified as the requested digit
Any dataset (pixel space):
  nn_ratio        median distance sample -> nearest training image, over the median distance
                  training image -> its nearest other training image; << 1 would mean copying
  copy_share      share of samples nearer a training image than 99% of training images are to theirs
Circles:
  clean_disc      share of samples that are one clean disc on a plain background (`is_clean_disc`)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

if __name__ == "__main__":  # the app's malloc (allocator.py), chosen before torch is imported
    from .allocator import reexec_with_fast_malloc

    reexec_with_fast_malloc()

import numpy as np
import torch

from .checkpoints import CheckpointError, load_checkpoint, load_guide, update_card
from .cli import add_dataclass_args, dataclass_from_args
from .data import CIRCLE_MIN_CONTRAST, load_mnist, make_circles
from .inference import Precision, resolve_precision
from .runtime import DeviceName, select_device, set_threads
from .sample import generate, sampler_config
from .samplers import SamplerName, Spacing

CONFIDENT_P = 0.9


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) for features [N1 x D], [N2 x D], in float64."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def class_coverage(pred: np.ndarray, num_classes: int = 10) -> float:
    share = np.bincount(pred, minlength=num_classes) / len(pred)
    return float(np.minimum(share, 1.0 / num_classes).sum())


def nearest_distances(a: torch.Tensor, b: torch.Tensor, exclude_self: bool = False, chunk: int = 512) -> torch.Tensor:
    """For each row of a [N x D], the L2 distance to its nearest row of b [M x D] (excluding index i if a is b)."""
    out = []
    for i in range(0, len(a), chunk):
        d = torch.cdist(a[i: i + chunk].double(), b.double())  # [n x M]
        if exclude_self:
            d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out)


def copying_check(samples: torch.Tensor, train: torch.Tensor) -> dict[str, float]:
    s, t = samples.flatten(1), train.flatten(1)
    d_sample = nearest_distances(s, t)
    d_train = nearest_distances(t, t, exclude_self=True)
    return {
        "nn_ratio": round(float(d_sample.median() / d_train.median()), 4),
        "copy_share": round(float((d_sample < torch.quantile(d_train, 0.01)).double().mean()), 4),
    }


def is_clean_disc(img: np.ndarray) -> bool:
    """One filled disc on a plain background? img: [H x W x 3] uint8.

    Background = median of the border; foreground = pixels off it by more than half the data's
    minimum contrast; the foreground must be one 4-connected blob whose IoU with the disc of
    equal area at its centroid is >= 0.85, with uniform colour inside and outside.
    """
    x = img.astype(np.float64) / 255.0
    h, w, _ = x.shape
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    bg = np.median(border, axis=0)
    mask = np.abs(x - bg).max(-1) > CIRCLE_MIN_CONTRAST / 2
    area = int(mask.sum())
    if area < np.pi * 3**2 or _components(mask) != 1:
        return False
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cy, cx = yy[mask].mean(), xx[mask].mean()
    r = np.sqrt(area / np.pi)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    ideal = dist <= r
    if (mask & ideal).sum() / (mask | ideal).sum() < 0.85:
        return False
    inside, outside = x[dist < r - 1.5], x[dist > r + 1.5]
    if len(inside) == 0 or inside.std(0).max() > 0.06:
        return False
    return bool(np.quantile(np.abs(outside - bg).max(-1), 0.98) < 0.08)


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected components of a boolean mask (flood fill)."""
    seen = np.zeros_like(mask)
    count = 0
    h, w = mask.shape
    for i, j in zip(*np.nonzero(mask)):
        if seen[i, j]:
            continue
        count += 1
        stack = [(i, j)]
        seen[i, j] = True
        while stack:
            a, b = stack.pop()
            for u, v in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                if 0 <= u < h and 0 <= v < w and mask[u, v] and not seen[u, v]:
                    seen[u, v] = True
                    stack.append((u, v))
    return count


def real_floors(f_train: np.ndarray, pred_train: np.ndarray, num: int, seed: int = 0, fd_draws: int = 3,
                coverage_draws: int = 100) -> tuple[float, float]:
    """What `num` real training digits score, averaged over random draws (seeded): (fd, coverage).

    The best a sampler can expect at this sample count: FD is biased upwards at small n, and class
    coverage of n draws from balanced classes falls short of 1 by chance alone (0.967 +- 0.008 at
    n = 1000 of the 5,000 digits; an i.i.d. sampler that is exactly balanced gets 0.962 +- 0.010).
    Coverage is cheap, so it averages more draws; the first `fd_draws` serve both.
    """
    g = torch.Generator().manual_seed(seed)
    draws = [torch.randperm(len(f_train), generator=g)[:num].numpy() for _ in range(max(fd_draws, coverage_draws))]
    fd = float(np.mean([frechet_distance(f_train[i], f_train) for i in draws[:fd_draws]]))
    return fd, float(np.mean([class_coverage(pred_train[i]) for i in draws[:coverage_draws]]))


@torch.no_grad()
def mnist_metrics(samples: torch.Tensor, labels: torch.Tensor | None, classifier: torch.nn.Module,
                  seed: int = 0) -> dict[str, float]:
    """Classifier-based metrics for samples [N x 1 x 28 x 28] in [-1, 1]."""
    x_train, _ = load_mnist()
    f_train = classifier.features(x_train).numpy()
    f_s = classifier.features(samples)
    prob = classifier.fc2(f_s).softmax(-1)
    pred = prob.argmax(-1).numpy()
    floors, cov_floors = real_floors(f_train, classifier.fc2(torch.from_numpy(f_train)).argmax(-1).numpy(),
                                     len(samples), seed)
    out = {
        "fd": round(frechet_distance(f_s.numpy(), f_train), 3),
        "fd_real_floor": round(floors, 3),
        "confident": round(float((prob.max(-1).values >= CONFIDENT_P).double().mean()), 4),
        "coverage": round(class_coverage(pred), 4),
        "coverage_real_floor": round(cov_floors, 4),
        "class_shares": [round(float(s), 4) for s in np.bincount(pred, minlength=10) / len(pred)],
    }
    if labels is not None:
        out["label_accuracy"] = round(float((pred == labels.numpy()).mean()), 4)
    return out


@dataclass(frozen=True)
class EvalArgs:
    checkpoint: str = "checkpoints/mnist-linear"  # checkpoint to evaluate
    sampler: SamplerName = "ddim"  # ddpm or ddim
    steps: int | None = None  # default: T for ddpm, 50 for ddim
    eta: float = 0.0  # DDIM eta
    spacing: Spacing = "trailing"  # timestep spacing
    clip_x0: bool = True  # clamp predicted x_0
    num: int = 1000  # samples to score
    seed: int = 0  # sampling seed
    label: int | None = None  # generate only this class (conditional models)
    all_labels: bool = False  # generate every class in equal numbers (conditional models)
    guidance: float = 1.0  # classifier-free guidance scale for labelled sampling
    autoguidance: float = 1.0  # autoguidance weight w for unconditional sampling (1: off; 0: the guide alone)
    guide: str | None = None  # with --autoguidance: this guide checkpoint instead of the one the card names
    batch_size: int = 250  # sampling batch
    classifier: str = "checkpoints/classifier-mnist"  # the shipped digit classifier
    device: DeviceName = "auto"  # auto = CUDA, then MPS, then CPU
    precision: Precision = "auto"  # model precision; auto = bfloat16 where the hardware has it natively
    compiled: bool = False  # run this machine's AOTInductor package (python -m diffusion_core.compiled builds it)
    write_card: bool = False  # also record the result under "evaluation" in the checkpoint's JSON


def evaluate_samples(a: EvalArgs) -> tuple[dict[str, object], torch.Tensor]:
    """Sample as `a` says and score the samples; returns (the JSON result, samples [N x C x H x W] on the CPU)."""
    device = select_device(a.device)
    set_threads()
    ckpt = load_checkpoint(a.checkpoint, device)
    cfg = sampler_config(a.sampler, a.steps, ckpt.schedule.num_timesteps, eta=a.eta, spacing=a.spacing,
                         clip_x0=a.clip_x0, guidance=a.guidance)
    labels = None
    if a.all_labels:
        if not ckpt.model_config.conditional:
            raise ValueError("--all-labels needs a class-conditional checkpoint")
        labels = torch.arange(a.num) % ckpt.model_config.num_classes
    elif a.label is not None:
        labels = torch.full((a.num,), a.label, dtype=torch.long)
    guide = None
    if a.autoguidance != 1.0:
        guide = load_guide(a.checkpoint, device, a.guide)
    precision = resolve_precision(a.precision, device)
    t0 = time.perf_counter()
    x = generate(ckpt, cfg, a.num, a.seed, labels, device, a.batch_size, precision, a.compiled, guide, a.autoguidance)
    result: dict[str, object] = {
        "checkpoint": ckpt.name, "sampler": cfg.sampler, "steps": cfg.steps, "eta": cfg.eta, "spacing": cfg.spacing,
        "clip_x0": cfg.clip_x0, "num": a.num, "seed": a.seed,
        "labels": "all" if a.all_labels else a.label, "guidance": cfg.guidance if labels is not None else None,
        "sampling_s": round(time.perf_counter() - t0, 2), "device": str(device), "precision": precision,
    }
    if a.compiled:
        result["compiled"] = True
    if guide is not None:
        result["autoguidance"], result["guide"] = a.autoguidance, guide.name
    result.update(score(ckpt.dataset, x, labels, a.classifier, a.seed))
    return result, x


def score(dataset: str, x: torch.Tensor, labels: torch.Tensor | None, classifier: str = "checkpoints/classifier-mnist",
          seed: int = 0) -> dict[str, object]:
    """The metrics of the module docstring for samples x [N x C x H x W] in [-1, 1] of `dataset`."""
    out: dict[str, object] = {}
    if dataset == "mnist":
        from .classifier import load_classifier

        out.update(mnist_metrics(x, labels, load_classifier(classifier), seed))
        train = load_mnist()[0]
    else:
        imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        out["clean_disc"] = round(float(np.mean([is_clean_disc(i) for i in imgs])), 4)
        train = make_circles(5000, torch.Generator().manual_seed(0))[0]
    out.update(copying_check(x, train))
    return out


def evaluate(a: EvalArgs) -> dict[str, object]:
    return evaluate_samples(a)[0]


def evaluation_key(r: dict[str, object]) -> str:
    """The key a result is filed under in the card, e.g. 'ddim-50 eta=0 uncond'."""
    cond = "uncond" if r["labels"] is None else f"labels={r['labels']} w={r['guidance']}"
    if r.get("guide"):  # w = 0 (the guide alone) is falsy: test the guide's name
        cond += f" autoguided w={r['autoguidance']} by {r['guide']}"
    return (f"{r['sampler']}-{r['steps']} eta={r['eta']} {r['spacing']} clip={r['clip_x0']} {cond} n={r['num']} "
            f"{r['precision']}{' compiled' if r.get('compiled') else ''} seed={r['seed']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core.evaluate", description=__doc__.split("\n\n")[0])
    add_dataclass_args(parser, EvalArgs)
    a: EvalArgs = dataclass_from_args(EvalArgs, parser.parse_args(argv))
    try:
        result = evaluate(a)
    except (ValueError, CheckpointError) as e:
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(result))
    if a.write_card:
        update_card(a.checkpoint, lambda card: card.setdefault("evaluation", {}).update({evaluation_key(result): result}))


if __name__ == "__main__":
    main()
