"""The copy check's flagged samples of a kept bench/quality.py run (runs/quality-cache), by class, beside
their nearest training digits: session 13's copies.py without resampling.

    python bench/results/session18-2026-11-28/copies.py CHECKPOINT_NAME OUT.png [CACHE]

Reads the autoguided DDIM-50 eta = 1 run of that checkpoint from the cache (seed 0, 1,000 samples).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from diffusion_core.classifier import load_classifier  # noqa: E402
from diffusion_core.data import load_mnist  # noqa: E402
from diffusion_core.evaluate import nearest_distances  # noqa: E402

name, out = sys.argv[1], sys.argv[2]
cache = Path(sys.argv[3] if len(sys.argv) > 3 else "runs/quality-cache")
kept = [torch.load(f) for f in sorted(cache.glob(f"{name}-*.pt"))]
run = next(k for k in kept if k["result"]["sampler"] == "ddim" and k["result"]["steps"] == 50 and k["result"]["eta"] == 1.0
           and k["result"].get("autoguidance") and k["result"]["labels"] is None and k["result"]["num"] == 1000)
r, x = run["result"], run["samples"]
train = load_mnist()[0]
s, t = x.flatten(1), train.flatten(1)
d_s = nearest_distances(s, t)
d_t = nearest_distances(t, t, exclude_self=True)
thr = torch.quantile(d_t, 0.01)
flag = (d_s < thr).nonzero().flatten()
nn = torch.cdist(s[flag], t).argmin(1)
clf = load_classifier("checkpoints/classifier-mnist")
with torch.no_grad():
    pred = clf.fc2(clf.features(x[flag])).argmax(-1)
    pred_all = clf.fc2(clf.features(x)).argmax(-1)
    pred_train = clf.fc2(clf.features(train)).argmax(-1)
print(json.dumps({"run": f"{r['checkpoint']} ddim-50 eta=1 autoguided w={r['autoguidance']} seed={r['seed']}",
                  "copy_share": r["copy_share"], "flagged": len(flag),
                  "flagged_classes": np.bincount(pred.numpy(), minlength=10).tolist(),
                  "sampled_ones": int((pred_all == 1).sum()), "thr": round(float(thr), 2),
                  "train_low_classes": np.bincount(pred_train[d_t < thr].numpy(), minlength=10).tolist()}))
pairs = torch.stack([x[flag], train[nn]], 1).reshape(-1, 1, 28, 28)  # sample, nearest, ...
cols = 2 * min(len(flag), 10)
rows = (len(pairs) + cols - 1) // cols
canvas = np.zeros((rows * 30, cols * 30), np.uint8)
for k, im in enumerate(pairs):
    i, j = divmod(k, cols)
    canvas[i * 30: i * 30 + 28, j * 30: j * 30 + 28] = ((im[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
Image.fromarray(canvas).resize((canvas.shape[1] * 3, canvas.shape[0] * 3), Image.NEAREST).save(out)
