"""Cold start of `python app.py` to its first page, 5 times (bench/sampling.py's cold_start):

    python bench/results/session25-2026-12-05/cold_start.py
"""
import statistics
import sys

sys.path.insert(0, "bench")
sys.path.insert(0, ".")
from sampling import cold_start  # noqa: E402

times = [cold_start() for _ in range(5)]
print("cold start, s:", " ".join(f"{x:.2f}" for x in times), "median", f"{statistics.median(times):.2f} s")
