"""Session 25's A/B of the GroupNorm rewrite in the packages: group moments by a [C x C] matmul (format
aoti-4, kept here) against the sum over each channel's group (aoti-5, diffusion_core.compiled now).

    python bench/results/session25-2026-12-05/group_norm_ab.py [NET:BATCH[:PRECISION] ...]

For each net and batch it builds both fixed-batch packages on the current thread count (into a
temporary folder) and times their calls in turns: 30 rounds of 10 calls each, the median of each
round's median, with the quartiles over rounds, and how far the two packages' eps differ on the first
image of the batch (max |new - old| / max |old|). It runs on the app's malloc.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from diffusion_core.allocator import reexec_with_fast_malloc  # noqa: E402

reexec_with_fast_malloc()
import torch  # noqa: E402

import diffusion_core.compiled as C  # noqa: E402
from diffusion_core.checkpoints import load_checkpoint  # noqa: E402
from diffusion_core.inference import InferenceModel, resolve_precision  # noqa: E402

SPECS = ["mnist-linear:1", "mnist-linear:4", "mnist-linear:16", "mnist-linear-guide:4", "mnist-linear-guide:16",
         "circles:16", "circles-lesson:16", "mnist-linear:16:float32"]


def group_norm_by_matmul(x, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    """The aoti-4 rewrite: per-channel sums averaged within each group by one [C x C] matmul."""
    n, c, h, w = x.shape
    per_group = c // num_groups
    group = torch.arange(c, device=x.device) // per_group
    average = (group[:, None] == group[None, :]).float() / (per_group * h * w)
    xf = x.float()
    moments = torch.cat([xf.sum(dim=(2, 3)), (xf * xf).sum(dim=(2, 3))]) @ average
    mean, mean_sq = moments[:n], moments[n:]
    scale = torch.rsqrt((mean_sq - mean * mean).clamp_min(0) + eps)
    if weight is not None:
        scale = scale * weight.float()
    shift = -mean * scale if bias is None else bias.float() - mean * scale
    return (xf * scale[:, :, None, None] + shift[:, :, None, None]).to(x.dtype)


def build(model, batch, path, rewrite):
    saved = C.group_norm_from_channel_sums
    C.group_norm_from_channel_sums = rewrite
    try:
        C.compile_package(model, path, batch=batch)
    finally:
        C.group_norm_from_channel_sums = saved
    return torch._inductor.aoti_load_package(str(path))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gn-ab-"))
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}; ms per call, median of 30 rounds "
          "(quartiles); diff: max |new - old| / max |old| on the first image\n")
    print("| net, batch, precision | [C x C] matmul (aoti-4) | sum over the group (aoti-5) | old / new | diff |")
    print("|---|---|---|---|---|")
    for spec in sys.argv[1:] or SPECS:
        name, batch, *prec = spec.split(":")
        batch = int(batch)
        ckpt = load_checkpoint(ROOT / "checkpoints" / name)
        model = InferenceModel(ckpt.model, resolve_precision(prec[0] if prec else "auto", torch.device("cpu")))
        runners = [build(model, batch, tmp / f"{name}-{batch}-{k}.pt2", f)
                   for k, f in (("old", group_norm_by_matmul), ("new", C.group_norm_from_channel_sums))]
        x, t, *y = C._example_inputs(model, batch)
        args = (x.to(model.dtype), model.table(t, y[0] if y else None))
        rounds = [[], []]
        with torch.inference_mode():
            outs = [r(*args)[0] for r in runners]  # the first image's eps
            for _ in range(30):
                for i, r in enumerate(runners):
                    for _ in range(3):
                        r(*args)
                    ts = []
                    for _ in range(10):
                        t0 = time.perf_counter()
                        r(*args)
                        ts.append(time.perf_counter() - t0)
                    rounds[i].append(1e3 * statistics.median(ts))
        cells = []
        for r in rounds:
            q = statistics.quantiles(r, n=4)
            cells.append(f"{statistics.median(r):.3f} ({q[0]:.3f} to {q[2]:.3f})")
        diff = ((outs[1].float() - outs[0].float()).abs().max() / outs[0].float().abs().max()).item()
        ratio = statistics.median(rounds[0]) / statistics.median(rounds[1])
        print(f"| {name}, {batch}, {model.precision} | {cells[0]} | {cells[1]} | {ratio:.2f}x | {diff:.4f} |", flush=True)


if __name__ == "__main__":
    main()
