#!/usr/bin/env bash
# bench_sample.sh - generation speed of the reference config
# (configs/bench.json, a freshly initialized model: speed does not depend on
# the weights) on this machine, in one run of `trainer sample-bench` per
# thread count and repeat:
#   LM mode: tokens/s of K samples decoding M tokens after a P-token prompt,
#     with the KV cache and recomputing every sequence for each token;
#   diffusion mode: images/s of K samples, D denoising steps each, with
#     guidance (cfg 5: conditional + unconditional branch) and without
#     (cfg 1), and with guidance but no KV cache.
# Ratios: KV cache speed-up (tokens/s with / without), guidance cost
# (images/s without / with). REPEATS (default 3) runs per thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
REPEATS=${REPEATS:-3}
K=${K:-4}; P=${P:-16}; M=${M:-112}; D=${D:-50}
export OMP_WAIT_POLICY=passive
for threads in 1 2; do
    for r in $(seq "$REPEATS"); do
        "$BIN/trainer" sample-bench --config configs/bench.json --n "$K" --prompt-len "$P" --tokens "$M" \
            --steps "$D" --threads "$threads" | /usr/bin/python3 -c "
import json, sys
j = json.loads(sys.stdin.read())
print(f\"{j['threads']} thread(s), run $r: LM {j['lm_tokens_per_s']:.1f} tokens/s with the KV cache, \"
      f\"{j['lm_tokens_per_s_no_cache']:.1f} without: {j['lm_tokens_per_s'] / j['lm_tokens_per_s_no_cache']:.1f}x; \"
      f\"diffusion ({j['steps']} steps) {j['images_per_s']:.3f} images/s with cfg {j['cfg']:g}, \"
      f\"{j['images_per_s_no_cfg']:.3f} without guidance (guidance costs {j['images_per_s_no_cfg'] / j['images_per_s']:.2f}x), \"
      f\"{j['images_per_s_no_cache']:.3f} with cfg and no KV cache ({j['images_per_s'] / j['images_per_s_no_cache']:.2f}x)\")"
    done
done
