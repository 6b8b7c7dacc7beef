#!/bin/bash
# fast (shipped mnist-cosine) against p2 64/128 trained 20,000 steps on the cosine schedule: same draws, bfloat16, 1000 samples each.
cd /work/main
OUT=${OUT:-/tmp/s23/eval-cosine.jsonl}
run() {  # label, checkpoint, flags...
  label=$1; ck=$2; shift 2
  .venv/bin/python -m diffusion_core.evaluate --checkpoint $ck --num 1000 "$@" 2>/dev/null | tail -1 \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['path']='$label'; print(json.dumps(d))" >> $OUT
  tail -1 $OUT | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['path'], '$*', d['fd'], d['confident'], d['coverage'], d.get('label_accuracy'), d['sampling_s'], flush=True)"
}
for net in ${NETS:-"fast|checkpoints/mnist-cosine" "p2-20k|runs/exp-p64-20k/mnist-cosine"}; do
  label=${net%%|*}; ck=${net##*|}
  for s in ${SEEDS:-0 1}; do run $label $ck --seed $s; done
  for s in ${SEEDS:-0 1}; do run $label $ck --seed $s --all-labels --guidance 1.0; done
  [ -n "$SEEDS" ] && continue
  run $label $ck --seed 0 --eta 1.0
  run $label $ck --seed 0 --eta 1.0 --autoguidance 1.5 --guide checkpoints/mnist-cosine-guide
  run $label $ck --seed 0 --steps 10
done
