#!/usr/bin/env bash
# Every GPU figure and check in one run, for a machine with a CUDA GPU and its own PyTorch:
#   bash bench/gpu.sh [OUTDIR [PART...]]     (OUTDIR default: bench/results/gpu-<date>;
#                                             PARTs: tests cuda sampling train sweep, default all
#                                             but sweep;
#                                             $GPU_CHECKPOINTS and $GPU_REPEATS narrow sampling;
#                                             $SWEEP_* set the sweep, see its part below)
# Missing pure-Python packages (diffusers, mlxtend, importlib_metadata) may be put as wheels in .whl/.
# Writes gpu.txt (the GPU), pytest.txt (the tests whose CUDA cases run only on a GPU, and the
# diffusers comparisons), cuda_check.txt (the app's CUDA path, bench/cuda_check.py), sampling.txt
# (bench/sampling.py on the GPU), train.txt (training speed of mnist-cosine's recipe on one GPU) and,
# for the sweep part, pytest-train.txt (the CUDA-graph training step against the eager one), sweep.txt
# and sweep.tgz (bench/sweep.py's directory: the levers' checkpoints, cards and scores).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results/gpu-$(date +%F)}}
shift || true
parts=${*:-tests cuda sampling train}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, platform; print('torch', torch.__version__, 'python', platform.python_version(), torch.cuda.get_device_name())"
} 2>&1 | tee "$out/gpu.txt"
if [[ $parts == *tests* ]]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider -rfs tests/test_samplers.py tests/test_schedules.py \
    tests/test_inference.py > "$out/pytest.txt" 2>&1
  tail -4 "$out/pytest.txt"
fi
if [[ $parts == *cuda* ]]; then
  timeout 150 python3 bench/cuda_check.py 2>&1 | tee "$out/cuda_check.txt"
fi
if [[ $parts == *sampling* ]]; then
  timeout 270 python3 bench/sampling.py --device cuda --checkpoints ${GPU_CHECKPOINTS:-mnist-linear circles} \
    --repeats "${GPU_REPEATS:-7}" --quality 500 2>&1 | tee "$out/sampling.txt"
fi
if [[ $parts == *train* ]]; then
  # mnist-cosine's recipe (its card's command), as one process with the two CPU processes' batch of 64.
  timeout 90 python3 -m diffusion_core.train --dataset mnist --schedule cosine --model fast --amp bf16 \
    --label-dropout 0.5 --ema-decay 0.9995 --batch-size 64 --max-steps 3000 --checkpoint-every 1000 \
    --log-every 500 --no-progress --device cuda --out /tmp/gpu-train/mnist-cosine --run-dir /tmp/gpu-train/run \
    2>&1 | grep -v Warning | tail -12 | tee "$out/train.txt"
  python3 -c "import json; s = json.load(open('/tmp/gpu-train/run/state.json')); \
print(f\"{s['step']} steps in {s['elapsed_s']:.1f} s: {s['elapsed_s'] / s['step'] * 1e3:.2f} ms per step\")" \
    2>&1 | tee -a "$out/train.txt"
fi
if [[ $parts == *sweep* ]]; then
  # Training levers side by side (bench/sweep.py), CUDA-graph steps if the graphed step passes its test.
  timeout 120 python3 -m pytest -q -p no:cacheprovider -rfs tests/test_train.py -k cuda_graph > "$out/pytest-train.txt" 2>&1
  rc=$?
  graph=$([[ $rc == 0 ]] || echo --no-graph)
  tail -3 "$out/pytest-train.txt"
  timeout "${SWEEP_TIMEOUT_S:-480}" python3 bench/sweep.py --out "$out/sweep" --budget-s "${SWEEP_BUDGET_S:-300}" \
    --seeds "${SWEEP_SEEDS:-2}" $([[ ${SWEEP_SCORE:-1} == 0 ]] && echo --no-score) --levers ${SWEEP_LEVERS:-recipe no-min-snr dropout-0.7 dropout-0.7-no-min-snr} $graph \
    2>&1 | tee "$out/sweep.txt"
  # One archive of the cards, checkpoints and scores (a result comes back as few files); run states left out.
  tar czf "$out/sweep.tgz" -C "$out" --exclude 'run-*' sweep && rm -rf "$out/sweep"
fi
