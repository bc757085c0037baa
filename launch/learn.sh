#!/usr/bin/env bash
# learn.sh - the learning recipe: a Transfusion model on the embedded data
# that uses each modality for the other on images it never saw, on 2 cores.
# The settings were chosen by measured probes (docs/conventions.md, "The
# learning recipe"):
#   the pipeline's stages 1-5 (images, text, tokenizer, VAE, latents), then
#   configs/pipeline.json (5.4 M parameters), 2 ranks x 4 rows x 256 positions,
#   AdamW lr 1e-3, 30 warmup steps, cosine to STEPS (15000), EMA 0.999;
#   every EVAL_EVERY (1500) steps `trainer eval` on 128 val images, the
#   held-out text and the 16 prompts of configs/eval_prompts.txt, into
#   metrics.jsonl (those checkpoints are kept for the report);
# then the final figures (trainer eval on 256 val and 256 test images, two
# eval seeds each: RUN/eval/) and the report (launch/report.sh RUN, with the
# table of launch/ablate.sh when runs/ablate has one).
# Rerunning continues where it stopped.
#   launch/learn.sh       (RUN=runs/learn STEPS=15000 EVAL_EVERY=1500 FINAL_N=256)
. "$(dirname "$0")/help.sh"
script_help "$@"
set -euo pipefail
cd "$(dirname "$0")/.."
export RUN=${RUN:-runs/learn} STEPS=${STEPS:-15000} WARMUP=30
EVAL_EVERY=${EVAL_EVERY:-1500} FINAL_N=${FINAL_N:-256}
export TRAIN_EXTRA="--ema 0.999 --eval-every $EVAL_EVERY --keep-every $EVAL_EVERY --eval-n 128 \
    --eval-images data/images-64/val-*.tar --vae $RUN/vae --eval-text data/text/heldout \
    --eval-prompts configs/eval_prompts.txt"
launch/pipeline.sh

printf '\n== final evaluation (%s)\n' "$(date +%H:%M:%S)"
mkdir -p "$RUN/eval"
for split in val test; do
    for seed in 0 1; do
        f="$RUN/eval/$split-s$seed.json"
        [ -s "$f" ] && { echo "already done: $f"; continue; }
        mpirun --allow-run-as-root --bind-to none -np 2 -x OMP_NUM_THREADS=1 \
            "${BIN:-bin}/trainer" eval --ckpt "$RUN/ckpt" --vae "$RUN/vae" --images "data/images-64/$split-*.tar" \
            --text data/text/heldout --prompts configs/eval_prompts.txt --steps 50 --n "$FINAL_N" --timesteps 8 \
            --seed "$seed" --out "$f" >/dev/null 2>>"$RUN/eval/log"
        echo "wrote $f"
    done
done

printf '\n== report (%s)\n' "$(date +%H:%M:%S)"
abl=(); [ -s runs/ablate/ablations.md ] && abl=(--ablations runs/ablate)    # launch/ablate.sh's table, if run
launch/report.sh "$RUN" "${abl[@]}"
