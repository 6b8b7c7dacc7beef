#!/usr/bin/env bash
# Session 18: session 17's tables job again (the session's end stopped it after 11 of 18 runs per model,
# and bench/quality.py then kept nothing until the end: it now keeps each run in --cache as it ends, so
# this script can simply be rerun after an interruption). `bench/quality.py`'s full set for the pair of
# 17,000-step runs trained in float32 on 2 AVX2 cores (runs/exp-17k), one model per core; the cards and
# guides were set up by session 17's script. Without autoguided DDPM-1000 (half an hour of each core;
# it gained nothing on the 30,000-step pair): about 100 minutes of both cores. Appends to the lane files.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIR=${DIR:-runs/exp-17k}
OUT=${OUT:-bench/results/session18-2026-11-28}
mkdir -p "$OUT" "$DIR/grids"
tables() { taskset -c "$1" python bench/quality.py --dir "$DIR" --checkpoints "$2" --ddpm-num 200 --no-ddpm-autoguidance --write-cards \
             --grids "$DIR/grids"; }
tables 0 mnist-linear >> "$OUT/lane0.out" 2>> "$OUT/lane0.err" &
tables 1 mnist-cosine >> "$OUT/lane1.out" 2>> "$OUT/lane1.err" &
wait
