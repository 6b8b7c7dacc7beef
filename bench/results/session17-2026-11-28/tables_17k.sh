#!/usr/bin/env bash
# Session 17: everything the shipped MNIST cards hold, for the pair of 17,000-step runs trained in
# float32 on 2 AVX2 cores (runs/exp-17k: the cosine twin from session 16, the linear twin from this
# session). First the linear twin's pass/fail figures as session 16 scored the cosine twin (DDIM-50,
# eta = 1, autoguided w = 1.5 by the shipped guide, seeds 0 to 4), then `bench/quality.py`'s full set
# per model, one model per core: DDIM-10/20/50 with eta 0 and 1, autoguided, guided over the ten
# digits at w = 2 and conditional at w = 1, DDPM-1000 (200 samples) plain, autoguided and guided,
# DDPM-1000 vs DDIM-50 per pixel, and the sample grids. Two to three hours of both cores.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIR=${DIR:-runs/exp-17k}
OUT=${OUT:-bench/results/session17-2026-11-28}
mkdir -p "$OUT" "$DIR/grids"
# Each run's card names the shipped guide and weight, and the guide lies beside it (load_guide looks there).
for s in linear cosine; do
  cp checkpoints/mnist-$s-guide.safetensors checkpoints/mnist-$s-guide.json "$DIR/"
  python - "$DIR/mnist-$s" "checkpoints/mnist-$s" <<'PY'
import sys
from diffusion_core.checkpoints import read_card, write_card
run, shipped = sys.argv[1:]
card = read_card(run)
ag = read_card(shipped)["autoguidance"]
card["autoguidance"] = {"guide": ag["guide"], "weight": ag["weight"],
                        "note": f"the guide and weight of the shipped {shipped}, unchanged"}
write_card(run, card)
PY
done
ag() { taskset -c "$1" python -m diffusion_core.evaluate --checkpoint "$DIR/mnist-linear" --precision float32 \
         --eta 1 --autoguidance 1.5 --seed "$2" --write-card; }
tables() { taskset -c "$1" python bench/quality.py --dir "$DIR" --checkpoints "$2" --ddpm-num 200 --write-cards \
             --grids "$DIR/grids"; }
( for s in 0 2 4; do ag 0 $s; done; tables 0 mnist-linear ) > "$OUT/lane0.out" 2> "$OUT/lane0.err" &
( for s in 1 3; do ag 1 $s; done; tables 1 mnist-cosine ) > "$OUT/lane1.out" 2> "$OUT/lane1.err" &
wait
