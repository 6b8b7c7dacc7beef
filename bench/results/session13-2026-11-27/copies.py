"""Regenerate an evaluation's samples and show the ones the copy check flags beside their nearest training digits."""
import sys, json, torch, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from diffusion_core.evaluate import EvalArgs, evaluate_samples, nearest_distances
from diffusion_core.data import load_mnist
from diffusion_core.classifier import load_classifier
from PIL import Image
name, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
r, x = evaluate_samples(EvalArgs(checkpoint=f"checkpoints/{name}", eta=1.0, autoguidance=1.5, seed=seed, precision="float32"))
train = load_mnist()[0]
s, t = x.flatten(1), train.flatten(1)
d_s = nearest_distances(s, t); d_t = nearest_distances(t, t, exclude_self=True)
thr = torch.quantile(d_t, 0.01)
flag = (d_s < thr).nonzero().flatten()
nn = torch.cdist(s[flag], t).argmin(1)
clf = load_classifier("checkpoints/classifier-mnist")
pred = clf.fc2(clf.features(x[flag])).argmax(-1)
pred_train = clf.fc2(clf.features(train)).argmax(-1)
print(json.dumps({"copy_share": r["copy_share"], "flagged": len(flag), "classes": np.bincount(pred.numpy(), minlength=10).tolist(),
                  "d": [round(float(v), 2) for v in d_s[flag]], "thr": round(float(thr), 2),
                  "train_low_classes": np.bincount(pred_train[d_t < thr].numpy(), minlength=10).tolist(),
                  "median_train_nn": round(float(d_t.median()), 2)}))
pairs = torch.stack([x[flag], train[nn]], 1).reshape(-1, 1, 28, 28)  # sample, nearest, ...
cols = 2 * min(len(flag), 10)
rows = (len(pairs) + cols - 1) // cols
canvas = np.zeros((rows * 30, cols * 30), np.uint8)
for k, im in enumerate(pairs):
    i, j = divmod(k, cols)
    canvas[i * 30: i * 30 + 28, j * 30: j * 30 + 28] = ((im[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
Image.fromarray(canvas).resize((canvas.shape[1] * 3, canvas.shape[0] * 3), Image.NEAREST).save(out)
