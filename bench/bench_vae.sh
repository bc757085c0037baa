#!/usr/bin/env bash
# bench_vae.sh - the VAE service against its peers, in one run on this machine:
#   1. image input: decode + crop + resize to 64 px, images/s on one core
#      (bin/bench_image_decode), against dwebp's own decode time (`dwebp -v`,
#      which reports milliseconds: so the files are the dataset's test images
#      upscaled to 256 and 1024 px, lossless WebP); the 64 px originals are
#      timed for our side alone;
#   2. encode images/s at 64 and 256 px: `vae_service bench` against the
#      PyTorch AutoencoderKL of tests/vae_ref.py, same config (configs/vae-small.json);
#   3. training images/s at 64 px (forward, backward, AdamW), both sides, in
#      float32 and in mixed precision (bf16 convolutions: `--precision bf16`
#      here, torch.autocast on the PyTorch side).
# Both sides run with the same OMP_NUM_THREADS and OMP_WAIT_POLICY=passive
# (what vae_service sets for itself). REPEATS (default 3) runs per setting,
# median reported. Prints ratios (project / peer) and one JSON line.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
PY=/usr/bin/python3
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-"1 2"}
CFG=configs/vae-small.json
SHARD=${SHARD:-data/images-64/test-00000.tar}
export OMP_WAIT_POLICY=passive
for tool in "$BIN/vae_service" "$BIN/bench_image_decode"; do
    [ -x "$tool" ] || { echo "error: $tool not found (run make)" >&2; exit 1; }
done
command -v dwebp >/dev/null && command -v cwebp >/dev/null || { echo "error: dwebp/cwebp missing (Debian package webp)" >&2; exit 1; }
[ -f "$SHARD" ] || { echo "error: $SHARD missing (run data/fetch-images.sh)" >&2; exit 1; }

t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
res="$t/results"
mkdir -p "$t/64" "$t/256" "$t/1024"
tar -xf "$SHARD" -C "$t/64" --wildcards '*.webp'
find "$t/64" -name '*.webp' | sort | tail -n +201 | xargs -r rm -f
ls "$t/64" | while read -r f; do cwebp -quiet -lossless -resize 256 256 "$t/64/$f" -o "$t/256/$f"; done
ls "$t/64" | head -n 50 | while read -r f; do cwebp -quiet -lossless -resize 1024 1024 "$t/64/$f" -o "$t/1024/$f"; done

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
json() { $PY -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

echo "== 1. image input, one core"
o=$(OMP_NUM_THREADS=1 "$BIN/bench_image_decode" --size 64 "$t/64"/*.webp)
echo "  64px WebP (200 files): vae_service decode+crop+resize $(json "$o" images_per_s)/s (dwebp's timer cannot resolve these)"
for S in 256 1024; do
    files=("$t/$S"/*.webp)
    for r in $(seq "$REPEATS"); do
        dw=$(for f in "${files[@]}"; do dwebp -v "$f" -ppm -o /dev/null 2>&1 | sed -n 's/.*Time to decode picture: *\([0-9.]*\)s.*/\1/p'; done |
             awk -v n=${#files[@]} '{s += $1} END {printf "%.1f", n / s}')
        ours=$(OMP_NUM_THREADS=1 "$BIN/bench_image_decode" --size 64 "${files[@]}")
        echo "decode$S dwebp $dw" >>"$res"
        echo "decode$S ours $(json "$ours" images_per_s)" >>"$res"
    done
    d=$(grep "^decode$S dwebp" "$res" | awk '{print $3}' | median); o=$(grep "^decode$S ours" "$res" | awk '{print $3}' | median)
    echo "  ${S}px WebP (${#files[@]} files): dwebp decode ${d}/s; vae_service decode+crop+resize to 64 ${o}/s; ratio $($PY -c "print(f'{$o/$d:.2f}')")"
done

echo "== 2. encode (encoder mean), and 3. training step, $CFG"
run_pair() {  # KEY SIZE BATCH THREADS [--train]
    local key=$1 size=$2 batch=$3 th=$4 extra=${5:-}
    for r in $(seq "$REPEATS"); do
        o=$(OMP_NUM_THREADS=$th "$BIN/vae_service" bench --config $CFG --size "$size" --batch "$batch" --steps 3 --threads "$th" $extra)
        p=$(OMP_NUM_THREADS=$th $PY tests/vae_ref.py bench --config $CFG --size "$size" --batch "$batch" --steps 3 --threads "$th" $extra)
        echo "$key ours $(json "$o" images_per_s)" >>"$res"
        echo "$key torch $(json "$p" images_per_s)" >>"$res"
    done
    o=$(grep "^$key ours" "$res" | awk '{print $3}' | median); p=$(grep "^$key torch" "$res" | awk '{print $3}' | median)
    echo "  $key T=$th: vae_service ${o} images/s, PyTorch ${p} images/s, ratio $($PY -c "print(f'{$o/$p:.2f}')")"
}
for th in $THREADS; do
    run_pair "encode64_T$th" 64 32 "$th"
    run_pair "encode256_T$th" 256 4 "$th"
    run_pair "train64_T$th" 64 16 "$th" --train
    run_pair "train64bf16_T$th" 64 16 "$th" "--train --precision bf16"
done
$PY - "$res" <<'PYEOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    key, side, v = line.split()
    runs.setdefault(key, {}).setdefault(side, []).append(float(v))
out = {}
for key, sides in runs.items():
    med = {s: statistics.median(v) for s, v in sides.items()}
    peer = med.get("dwebp", med.get("torch"))
    out[key] = {"ours": med["ours"], "peer": peer, "ratio": med["ours"] / peer}
print(json.dumps(out))
PYEOF
