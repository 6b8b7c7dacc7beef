#!/usr/bin/env bash
# Session 15: score the 18,000-step run of mnist-linear's recipe (trained in float32 on 2 AVX2 cores) as
# the shipped models are scored: unconditional DDIM-50, eta = 1, autoguided w = 1.5 by the shipped
# guide, seeds 0 to 4; plain DDIM-50 (eta 0) and guided w = 2 from seed 0. Two lanes, one core each.
set -euo pipefail
cd "$(dirname "$0")/../../.."
CK=runs/exp-18k/mnist-linear
OUT=bench/results/session15-2026-11-27
ev() { python -m diffusion_core.evaluate --checkpoint $CK --precision float32 --write-card "$@"; }
ag() { ev --eta 1 --autoguidance 1.5 --guide checkpoints/mnist-linear-guide --seed "$1"; }
( for s in 0 2 4; do taskset -c 0 bash -c "$(declare -f ev ag); CK=$CK; ag $s"; done ) > $OUT/eval-18k-lane0.jsonl 2>$OUT/lane0.err &
( for s in 1 3; do taskset -c 1 bash -c "$(declare -f ev ag); CK=$CK; ag $s"; done
  taskset -c 1 bash -c "$(declare -f ev); CK=$CK; ev --seed 0"
  taskset -c 1 bash -c "$(declare -f ev); CK=$CK; ev --seed 0 --all-labels --guidance 2" ) > $OUT/eval-18k-lane1.jsonl 2>$OUT/lane1.err &
wait
