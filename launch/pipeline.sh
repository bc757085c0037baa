#!/usr/bin/env bash
# pipeline.sh - the whole system on the embedded default data, every stage
# with its progress, each skipped when its output is already complete:
#   1. images: data/fetch-images.sh (64 px emoji and Tux Paint stamps)
#   2. text:   data/fetch-text.sh (Debian texts, 3% held out)
#   3. tokenizer: dataloader tokenizer train (unigram, VOCAB pieces) and tokenize
#   4. VAE:    vae_service train, 2 ranks (configs/vae-cpu.json, VAE_STEPS steps)
#   5. latents: vae_service encode of the train images, 2 ranks
#   6. train:  launch/train.sh: the dataloader and 2 trainer ranks
#              (configs/pipeline.json, STEPS steps, checkpoints every 100)
#   7. plot:   launch/plot_metrics.sh -> runs/pipeline/loss.png
# Outputs go under data/ and RUN (runs/pipeline/). Rerunning continues the
# training from its newest checkpoint (--resume auto). TRAIN_EXTRA adds flags
# to `trainer train` (launch/learn.sh adds the EMA and --eval-every).
#   launch/pipeline.sh   (RUN=runs/pipeline VOCAB=4096 VAE_STEPS=1500 STEPS=300 WARMUP=30 TRAIN_EXTRA="" by default)
. "$(dirname "$0")/help.sh"
script_help "$@"
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=bin
VOCAB=${VOCAB:-4096} VAE_STEPS=${VAE_STEPS:-1500} STEPS=${STEPS:-300} WARMUP=${WARMUP:-30}
RUN=${RUN:-runs/pipeline}
read -ra train_extra <<<"${TRAIN_EXTRA:-}"      # (read -a: a glob in it stays a glob)
MPI=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS=1)
stage() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
done_msg() { echo "already done: $1"; }
mkdir -p "$RUN"

stage "1/7 images"
data/fetch-images.sh --size 64

stage "2/7 text"
data/fetch-text.sh

stage "3/7 tokenizer"
if [ -f "$RUN/tokenizer.model" ]; then done_msg "$RUN/tokenizer.model"
else "$BIN/dataloader" tokenizer train --input "$(ls data/text/train/*.txt | paste -sd,)" --vocab "$VOCAB" \
         --out "$RUN/tokenizer.model"; fi
if [ -f "$RUN/text/dataset.json" ]; then done_msg "$RUN/text"
else "$BIN/dataloader" tokenize --tokenizer "$RUN/tokenizer.model" --input "$(ls data/text/train/*.txt | paste -sd,)" \
         --out "$RUN/text"; fi

stage "4/7 VAE"
if [ -f "$RUN/vae.done" ]; then done_msg "$RUN/vae"
else
    # --resume auto: continues from $RUN/vae/checkpoints when it holds one
    "${MPI[@]}" "$BIN/vae_service" train --data 'data/images-64/train-*.tar' --config configs/vae-cpu.json \
        --out "$RUN/vae" --size 64 --batch 4 --steps "$VAE_STEPS" --threads 1 --log-every 100 --resume auto
    "$BIN/vae_service" eval --vae "$RUN/vae" --data data/images-64/test-00000.tar --grid "$RUN/vae-test.png"
    touch "$RUN/vae.done"
fi

stage "5/7 latents"
"${MPI[@]}" "$BIN/vae_service" encode --vae "$RUN/vae" --data 'data/images-64/train-*.tar' --out "$RUN/latents" \
    --size 64 --threads 1

stage "6/7 train"
launch/train.sh --ranks 2 --text "$RUN/text" --latents "$RUN/latents" --tokenizer "$RUN/tokenizer.model" \
    --loader-args "--patch-size 2 --rows-per-rank 4 --seq-len 256" \
    -- --config configs/pipeline.json --steps "$STEPS" --warmup "$WARMUP" --lr 1e-3 --log-every 10 \
       --ckpt-dir "$RUN/ckpt" --ckpt-every 100 --resume auto "${train_extra[@]}"

stage "7/7 plot"
launch/plot_metrics.sh "$RUN/ckpt/metrics.jsonl" "$RUN/loss.png"
echo "pipeline done: checkpoints in $RUN/ckpt, loss curves in $RUN/loss.png"
