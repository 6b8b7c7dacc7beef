#!/bin/bash
# Session 24, as run (one run at a time, both cores, bfloat16, 1,000 samples): the patch2 64/128 pair
# (runs/exp-p64-20k/, the same files as checkpoints/ after the copy) against the fast pair shipped until
# session 23 (checkpoints/ before the copy). Output: eval.jsonl (its "path" names the net) and eval-output.txt.
cd "$(dirname "$0")/../../.."
OUT=${OUT:-bench/results/session24-2026-12-05/eval.jsonl}
run() {  # label, checkpoint, flags...
  label=$1; ck=$2; shift 2
  .venv/bin/python -m diffusion_core.evaluate --checkpoint $ck --num 1000 "$@" 2>/dev/null | tail -1 \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['path']='$label'; print(json.dumps(d))" >> $OUT
  tail -1 $OUT | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['path'], '$*', d['fd'], d['confident'], d['coverage'], d.get('label_accuracy'), d['sampling_s'], flush=True)"
}
P=runs/exp-p64-20k/mnist-cosine
F=checkpoints/mnist-cosine
for s in 1 2 3 4; do run p2 $P --seed $s --all-labels --guidance 1.0; done
for s in 2 3 4; do run fast $F --seed $s --all-labels --guidance 1.0; done
for s in 1 2; do run p2 $P --seed $s; done
for s in 1 2 3 4; do run p2 $P --seed $s --eta 1.0 --autoguidance 1.5 --guide checkpoints/mnist-cosine-guide; done
for s in 1; do run p2 $P --seed $s --all-labels --guidance 2.0; done

for w in 1.25 2.0; do
  run p2lin runs/exp-p64-20k/mnist-linear --seed 0 --eta 1.0 --autoguidance $w --guide checkpoints/mnist-linear-guide
  run p2cos runs/exp-p64-20k/mnist-cosine --seed 0 --eta 1.0 --autoguidance $w --guide checkpoints/mnist-cosine-guide
done
# from here on checkpoints/ holds the patch2 pair (copied, cosine card given its autoguidance block)
for s in 3 4; do for w in 1.25 1.375; do run p2cos checkpoints/mnist-cosine --seed $s --eta 1.0 --autoguidance $w; done; done
for s in 1 2 3 4; do run p2lin checkpoints/mnist-linear --seed $s --eta 1.0 --autoguidance 1.5 --write-card; done
for s in 1 2 3 4; do .venv/bin/python -m diffusion_core.evaluate --checkpoint checkpoints/mnist-cosine --num 1000 --seed $s --eta 1.0 --autoguidance 1.5 --write-card; done  # the same draws as above, filed in the card
