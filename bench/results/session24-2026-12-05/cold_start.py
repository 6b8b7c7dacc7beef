"""Cold start of `python app.py` to its first page with the shipped checkpoints against the `fast` pair of
03a7c9d, taking turns, 5 each (bench/sampling.py's cold_start):

    mkdir -p /tmp/s24/old-ckpts
    for f in $(git ls-files checkpoints); do git show 03a7c9d:$f > /tmp/s24/old-ckpts/$(basename $f); done
    python bench/results/session24-2026-12-05/cold_start.py
"""
import statistics
import sys

sys.path.insert(0, "bench")
sys.path.insert(0, ".")
from sampling import cold_start  # noqa: E402

res: dict[str, list[float]] = {"patch2 (checkpoints/)": [], "fast (03a7c9d)": []}
for _ in range(5):
    res["patch2 (checkpoints/)"].append(cold_start())
    res["fast (03a7c9d)"].append(cold_start(EXPLORER_CHECKPOINTS="/tmp/s24/old-ckpts"))
for k, v in res.items():
    print(k, " ".join(f"{x:.2f}" for x in v), "median", f"{statistics.median(v):.2f} s", flush=True)
