#!/usr/bin/env bash
# ablation_samples.sh - sample grids of ablation arms side by side: the 16
# prompts of configs/sample_prompts.txt (training captions), two samples
# each from the final checkpoint of each arm's seed 0 (same seeds in every
# arm), beside the training image; written to OUT/samples-ARM1-ARM2....png.
#   launch/ablation_samples.sh [--from runs/learn] [--out runs/ablate] ARM...
# The VAE and data come from --from (as launch/ablate.sh's), the arms'
# checkpoints from --out/ARM-s0/ckpt.
. "$(dirname "$0")/help.sh"
script_help "$@"
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
from=runs/learn out=runs/ablate data=data/images-64 prompts_file=configs/sample_prompts.txt
while [ $# -gt 0 ]; do
    case $1 in
        --from) from=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -*) echo "error: ablation_samples.sh: unknown argument '$1'" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "error: ablation_samples.sh: name the arms (e.g. base unet)" >&2; exit 2; }
mkdir -p "$out/samples"
mapfile -t prompts < <(grep -v '^#' "$prompts_file" | grep .)
columns=()
for arm in "$@"; do
    ckpt="$out/$arm-s0/ckpt"
    [ -e "$ckpt/latest" ] || { echo "error: ablation_samples.sh: $ckpt: no checkpoint (run launch/ablate.sh)" >&2; exit 2; }
    mkdir -p "$out/samples/$arm"
    for j in "${!prompts[@]}"; do
        "$BIN/trainer" sample --ckpt "$ckpt" --vae "$from/vae" --prompt "${prompts[$j]}" --image --n 2 --seed "$j" \
            --out "$out/samples/$arm/p$j" >/dev/null 2>>"$out/samples/sample.log" ||
            { tail -n 3 "$out/samples/sample.log" >&2; exit 1; }
    done
    columns+=("$arm=$out/samples/$arm")
done
png="$out/samples-$(IFS=-; echo "$*").png"
/usr/bin/python3 launch/sample_grid.py --data "$data" --prompts "$prompts_file" --out "$png" "${columns[@]}"
echo "wrote $png"
