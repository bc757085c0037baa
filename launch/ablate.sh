#!/usr/bin/env bash
# ablate.sh - the paper's three ablations at small scale, each arm trained
# with the same budget (steps, data, seeds) and measured by `trainer eval`
# on held-out images:
#   base     configs/pipeline.json: bidirectional image attention, noise
#            limit on, patch 2 (today's defaults)
#   causal   "image_attention": "causal"             (paper: worse images)
#   nolimit  dataloader serve --noise-limit off       (paper: worse captions)
#   patch1   "patch_size": 1 (4x the patches)         (paper: better images)
#   unet     "image_encoder": "unet", [64, 128]       (paper: better images and captions)
#   unet4    the U-Net with 3 levels, patch 4 (1/4 of the positions per image)
#   fp32     base trained with --precision fp32 (the CPU's default is bf16)
# Captions are cut at 60 tokens in every arm (patch1's 64-patch images must
# fit half of a 256-position row). Each (arm, seed) is one 1-rank run;
# PARALLEL of them run at once (one core each). The data (tokenizer, text, latents, VAE) come from a finished
# pipeline or learn run. Writes OUT/ARM-sSEED/{ckpt,val.json,test.json} and
# OUT/ablations.md (the table, with each arm's mean and both seeds).
# A finished arm (its eval written) is skipped when the script is rerun.
#   launch/ablate.sh [--from runs/learn] [--out runs/ablate]
#       (STEPS=3000 SEEDS="0 1" PARALLEL=2 ARMS="base causal nolimit patch1" N=128;
#        UNET_STEPS, default STEPS: the U-Net arms' steps, for the same wall-clock
#        budget as the linear arms when their steps cost more)
. "$(dirname "$0")/help.sh"
script_help "$@"
set -euo pipefail
cd "$(dirname "$0")/.."
from=runs/learn out=runs/ablate
while [ $# -gt 0 ]; do
    case $1 in
        --from) from=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "error: ablate.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
STEPS=${STEPS:-3000} SEEDS=${SEEDS:-0 1} PARALLEL=${PARALLEL:-2} N=${N:-128}
ARMS=${ARMS:-base causal nolimit patch1}
for f in tokenizer.model text/dataset.json latents/dataset.json vae/config.json; do
    [ -e "$from/$f" ] || { echo "error: ablate.sh: $from/$f missing (run launch/learn.sh or launch/pipeline.sh first)" >&2; exit 2; }
done
mkdir -p "$out"

# An arm's model config (written beside its runs) and loader flags.
arm_config() {
    /usr/bin/python3 - "$1" configs/pipeline.json "$out/$1.json" <<'PY'
import json, sys
arm, base, dst = sys.argv[1:]
c = json.load(open(base))
c.update({"base": {}, "fp32": {}, "causal": {"image_attention": "causal"}, "nolimit": {},
          "patch1": {"patch_size": 1, "max_image_patches": 64},
          "unet": {"image_encoder": "unet", "unet_channels": [64, 128]},
          "unet4": {"image_encoder": "unet", "unet_channels": [64, 128, 128], "patch_size": 4,
                    "max_image_patches": 4}}[arm])
json.dump(c, open(dst, "w"))
PY
}
arm_loader() {
    case $1 in
        nolimit) echo "--patch-size 2 --noise-limit off" ;;
        patch1) echo "--patch-size 1" ;;
        unet4) echo "--patch-size 4" ;;
        *) echo "--patch-size 2" ;;
    esac
}

arm_train() {                   # trainer flags beyond the shared ones
    case $1 in
        fp32) echo "--precision fp32" ;;
    esac
}

run_arm() {                     # ARM SEED: train, then eval on val and test
    local arm=$1 seed=$2 dir="$out/$1-s$2" steps=$STEPS
    case $arm in unet*) steps=${UNET_STEPS:-$STEPS} ;; esac
    [ -s "$dir/test.json" ] && { echo "already done: $dir"; return 0; }
    mkdir -p "$dir"
    launch/train.sh --ranks 1 --text "$from/text" --latents "$from/latents" --tokenizer "$from/tokenizer.model" \
        --loader-args "$(arm_loader "$arm") --rows-per-rank 4 --seq-len 256 --max-caption 60 --seed $seed" \
        -- --config "$out/$arm.json" --steps "$steps" --warmup 100 --lr 1e-3 --ema 0.999 --seed "$seed" \
           --log-every 100 --ckpt-dir "$dir/ckpt" --ckpt-every 500 --keep 1 --resume auto \
           $(arm_train "$arm") >"$dir/train.log" 2>&1
    for split in val test; do
        bin/trainer eval --ckpt "$dir/ckpt" --vae "$from/vae" --images "data/images-64/$split-*.tar" \
            --prompts configs/eval_prompts.txt --steps 50 --n "$N" --timesteps 8 --seed 0 \
            --out "$dir/$split.json" >/dev/null 2>>"$dir/eval.log"
    done
    echo "done: $dir ($(grep '^loss ' "$dir/train.log" | tail -n 1))"
}

echo "ablations: arms $ARMS, seeds $SEEDS, $STEPS steps each (U-Net arms ${UNET_STEPS:-$STEPS}), $PARALLEL at once, into $out"
jobs_left=()
for arm in $ARMS; do arm_config "$arm"; for seed in $SEEDS; do jobs_left+=("$arm $seed"); done; done
running=0 failed=0
for j in "${jobs_left[@]}"; do
    # shellcheck disable=SC2086  # "arm seed"
    run_arm $j &
    running=$((running + 1))
    if [ "$running" -ge "$PARALLEL" ]; then wait -n || failed=1; running=$((running - 1)); fi
done
while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
[ "$failed" = 0 ] || echo "error: ablate.sh: an arm failed; see its train.log and eval.log under $out" >&2

launch/ablation_table.py "$out" >"$out/ablations.md"
cat "$out/ablations.md"
exit "$failed"
