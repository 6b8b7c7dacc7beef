#!/bin/bash
# A training step of fast vs patch2 64/128, the MNIST recipe on 2 processes, 80 steps, in float32 (--amp none) and
# with --amp auto (bfloat16 autocast on this AMX CPU); prints the seconds per step over steps 21 to 80.
cd "$(dirname "$0")/../../.."  # the repository root; writes under /tmp/s24
for m in "fast|--model fast" "p2|--model patch2 --base-channels 64"; do
  n=${m%%|*}; f=${m##*|}
  for amp in none auto; do
  rm -rf /tmp/s24/f32-$n-$amp
  .venv/bin/torchrun --nproc_per_node=2 -m diffusion_core.train --dataset mnist --schedule linear $f --amp $amp --label-dropout 0.5 --ema-decay 0.9995 --max-steps 80 --checkpoint-every 1000 --log-every 20 --no-progress --out /tmp/s24/f32-$n-$amp/ck --run-dir /tmp/s24/f32-$n-$amp/run > /tmp/s24/f32-$n-$amp.log 2>&1
  python3 -c "
import json; d=json.load(open('/tmp/s24/f32-$n-$amp/ck.json')); l=d['loss_log']
print('$n', '$amp', [x['wall_s'] for x in l], 's/step over steps 21-80:', round((l[-1]['wall_s']-l[0]['wall_s'])/60,4))"
  done
done
