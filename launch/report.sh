#!/usr/bin/env bash
# report.sh - the report of a training run, RUN_DIR/report.md with its PNGs
# in RUN_DIR/report/:
#   loss.png, loss-eval.png   the loss curves (train, and held-out when the
#                             run evaluated) and the held-out figures over steps
#   samples.png               the 16 prompts of configs/sample_prompts.txt
#                             (training captions) at up to 4 checkpoints, the
#                             same seeds at each, beside the training image
#   captions-val.png/-test.png   8 held-out images each, with the model's
#                             caption and the true one in the report
#   and tables: the final held-out figures (RUN_DIR/eval/*.json, written by
#   launch/learn.sh), the figures over steps, the run's settings and speed;
#   the ablation table when --ablations DIR has one (launch/ablate.sh).
#   launch/report.sh RUN_DIR [--ablations runs/ablate] [--data data/images-64]
#                    [--prompts configs/sample_prompts.txt]
# (--data: the folder of the train-, val- and test-*.tar shards.)
. "$(dirname "$0")/help.sh"
script_help "$@"
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
run=${1:?usage: report.sh RUN_DIR [--ablations DIR]}
shift
ablations="" data=data/images-64 prompts_file=configs/sample_prompts.txt
while [ $# -gt 0 ]; do
    case $1 in
        --ablations) ablations=$2; shift 2 ;;
        --data) data=$2; shift 2 ;;
        --prompts) prompts_file=$2; shift 2 ;;
        *) echo "error: report.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
ckpt=$run/ckpt
[ -s "$ckpt/metrics.jsonl" ] || { echo "error: report.sh: $ckpt/metrics.jsonl: missing (not a training run?)" >&2; exit 2; }
[ -f "$run/vae/config.json" ] || { echo "error: report.sh: $run/vae: no VAE (config.json)" >&2; exit 2; }
out=$run/report
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
launch/plot_metrics.sh "$ckpt/metrics.jsonl" "$out/loss.png" >/dev/null

# Up to 4 checkpoints, evenly spread over the kept steps, the last among them.
mapfile -t steps < <(ls -d "$ckpt"/step_* | sort)
[ ${#steps[@]} -gt 0 ] || { echo "error: report.sh: $ckpt holds no step folder" >&2; exit 2; }
picked=()
n=${#steps[@]}
for k in 1 2 3 4; do
    i=$(( (k * n + 3) / 4 - 1 ))
    [ "$i" -ge 0 ] && [[ ! " ${picked[*]} " == *" ${steps[$i]} "* ]] && picked+=("${steps[$i]}")
done

echo "report: samples of ${#picked[@]} checkpoints" >&2
mapfile -t prompts < <(grep -v '^#' "$prompts_file" | grep .)
for s in "${picked[@]}"; do
    mkdir -p "$work/$(basename "$s")"
    for j in "${!prompts[@]}"; do
        "$BIN/trainer" sample --ckpt "$s" --vae "$run/vae" --prompt "${prompts[$j]}" --image --n 2 --seed "$j" \
            --out "$work/$(basename "$s")/p$j" >/dev/null 2>>"$work/sample.log" ||
            { cat "$work/sample.log" >&2; exit 1; }
    done
done

echo "report: captions of held-out images" >&2
last=${steps[$((n - 1))]}
for split in val test; do
    mkdir -p "$work/$split"
    shard=$(ls "$data/$split"-*.tar 2>/dev/null | head -n 1)
    [ -n "$shard" ] || { echo "error: report.sh: $data/$split-*.tar: no such shard" >&2; exit 2; }
    tar xf "$shard" -C "$work/$split"
    # 8 images spread over the shard (other concepts and styles), or all of a smaller one
    mapfile -t all < <(ls "$work/$split"/*.webp "$work/$split"/*.png 2>/dev/null)
    stride=$(( ${#all[@]} / 8 > 1 ? ${#all[@]} / 8 : 1 ))
    imgs=()
    for ((i = 0; i < ${#all[@]} && ${#imgs[@]} < 8; i += stride)); do imgs+=("${all[$i]}"); done
    args=()
    for f in "${imgs[@]}"; do args+=(--image "$f"); done
    "$BIN/trainer" caption --ckpt "$last" --vae "$run/vae" "${args[@]}" >"$work/$split/captions.tsv" 2>>"$work/caption.log" ||
        { cat "$work/caption.log" >&2; exit 1; }
done

/usr/bin/python3 launch/report.py --run "$run" --work "$work" --data "$data" --prompts "$prompts_file" \
    --checkpoints "${picked[@]}" ${ablations:+--ablations "$ablations"}
echo "wrote $run/report.md"
