"""Cold start of `python app.py` to the first page, shipped checkpoints vs the fast pair (from HEAD), taking turns."""
import statistics, sys
sys.path.insert(0, "bench"); sys.path.insert(0, ".")
from sampling import cold_start
res = {"patch2 (checkpoints/)": [], "fast (03a7c9d)": []}
for r in range(5):
    res["patch2 (checkpoints/)"].append(cold_start())
    res["fast (03a7c9d)"].append(cold_start(EXPLORER_CHECKPOINTS="/tmp/s24/old-ckpts"  # git show 03a7c9d:checkpoints/NAME for each file))
for k, v in res.items():
    print(k, " ".join(f"{x:.2f}" for x in v), "median", f"{statistics.median(v):.2f} s", flush=True)
