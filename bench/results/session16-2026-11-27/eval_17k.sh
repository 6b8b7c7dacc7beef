#!/usr/bin/env bash
# Session 16: score the 17,000-step run of mnist-cosine's recipe (trained in float32 on 2 AVX2 cores) as
# the shipped models are scored: unconditional DDIM-50, eta = 1, autoguided w = 1.5 by the shipped
# guide, seeds 0 to 4; plain DDIM-50 (eta 0) and guided w = 2 (every digit) from seed 0. Two lanes, one
# core each, about 27 minutes. Reusable for another run rather than copied again (sessions 14 and 15
# each wrote their own), e.g. the linear twin:
#   CK=runs/exp-17k/mnist-linear GUIDE=checkpoints/mnist-linear-guide OUT=bench/results/<session> eval_17k.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
CK=${CK:-runs/exp-17k/mnist-cosine}
GUIDE=${GUIDE:-checkpoints/mnist-cosine-guide}
OUT=${OUT:-bench/results/session16-2026-11-27}
mkdir -p $OUT
TAG=$(basename $CK)
ev() { python -m diffusion_core.evaluate --checkpoint $CK --precision float32 --write-card "$@"; }
ag() { ev --eta 1 --autoguidance 1.5 --guide $GUIDE --seed "$1"; }
export CK GUIDE
( for s in 0 2 4; do taskset -c 0 bash -c "$(declare -f ev ag); ag $s"; done
  taskset -c 0 bash -c "$(declare -f ev); ev --seed 0" ) > $OUT/eval-$TAG-lane0.jsonl 2>$OUT/$TAG-lane0.err &
( for s in 1 3; do taskset -c 1 bash -c "$(declare -f ev ag); ag $s"; done
  taskset -c 1 bash -c "$(declare -f ev); ev --seed 0 --all-labels --guidance 2" ) > $OUT/eval-$TAG-lane1.jsonl 2>$OUT/$TAG-lane1.err &
wait
