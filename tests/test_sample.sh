#!/usr/bin/env bash
# test_sample.sh - `trainer sample` and `trainer caption` end to end, on a
# tiny model overfit (through the real dataloader and `trainer train`) on four
# image-caption pairs: text-to-image with a training caption gives back its
# image (PSNR >= 20 dB against the training latent decoded, and nearer to it
# than to the other images), captioning a training image gives back its
# caption exactly (also from a larger copy of the image, which is resized);
# outputs (WebP, grid, samples.jsonl), determinism, a sharded and a
# consolidated checkpoint; the device code path (--device cpu-device) giving
# the same bytes as the CPU's; and bad input: a prompt longer than the
# context, an unreadable image, a checkpoint without image parameters, a bad
# flag value, an unknown device: one line, exit 2. The U-Net image path,
# overfit the same way, gives back images and captions too.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
export OMP_WAIT_POLICY=passive ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
. "$(dirname "$0")/check.sh"
VS=$(realpath "$BIN/vae_service"); TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$t"' EXIT

# Four 16 px images with distinct captions (and a 48 px copy of the first), a
# random tiny VAE, and a tiny model overfit on them through the loader.
BIN="$BIN" PY="$PY" tests/tiny_run.sh "$t" 2>"$t/tiny_run.err"
check "the tiny model is built and trained against the loader ($(grep '^step' "$t/train.log" 2>/dev/null | tail -1 | cut -c1-60))" \
    [ -d "$t/run/latest" -a -f "$t/dec/k0.webp" ] || cat "$t/tiny_run.err"

psnr() { $PY - "$@" <<'PYEOF'
import sys, numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1]).convert("RGB"), dtype=np.float64)
for other in sys.argv[2:]:
    b = np.asarray(Image.open(other).convert("RGB"), dtype=np.float64)
    mse = ((a - b) ** 2).mean()
    print("%.2f" % (99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)))
PYEOF
}

# Text-to-image: each training caption gives back its image.
common=(--ckpt "$t/run" --vae "$t/vae" --threads 2)
"$TR" sample "${common[@]}" --prompt "a blue square" --image --out "$t/s1" --n 2 --steps 50 --sampler ddim \
    --max-tokens 4 --seed 3 >"$t/s1.out" 2>"$t/s1.err"
rc=$?
check "sample --image exits 0 ($(tail -1 "$t/s1.err"))" [ $rc -eq 0 ]
check "sample writes one WebP per image, the grid and samples.jsonl" \
    [ -f "$t/s1/sample0-0.webp" -a -f "$t/s1/sample1-0.webp" -a -f "$t/s1/grid.png" -a -f "$t/s1/samples.jsonl" ]
check "samples.jsonl: one line per sample with its images" $PY -c "
import json, sys; L = [json.loads(l) for l in open('$t/s1/samples.jsonl')]
sys.exit(not (len(L) == 2 and L[0]['images'] == ['sample0-0.webp'] and L[1]['prompt'] == 'a blue square'))"
p=($(psnr "$t/s1/sample0-0.webp" "$t/dec/k1.webp" "$t/dec/k0.webp" "$t/dec/k2.webp" "$t/dec/k3.webp"))
q=($(psnr "$t/s1/sample1-0.webp" "$t/dec/k1.webp"))
check "text-to-image: 'a blue square' gives its training image back (PSNR ${p[0]} and ${q[0]} dB >= 20)" \
    $PY -c "import sys; sys.exit(not (${p[0]} >= 20 and ${q[0]} >= 20))"
check "... nearer to it than to the other three images (${p[1]}, ${p[2]}, ${p[3]} dB)" \
    $PY -c "import sys; sys.exit(not (${p[0]} > max(${p[1]}, ${p[2]}, ${p[3]}) + 3))"
"$TR" sample "${common[@]}" --prompt "a green ring" --image --out "$t/s2" --steps 25 --max-tokens 0 --seed 1 >/dev/null 2>&1
r=($(psnr "$t/s2/sample0-0.webp" "$t/dec/k2.webp"))
check "text-to-image with DDPM (25 steps, cfg 5): 'a green ring' (PSNR ${r[0]} dB >= 20)" $PY -c "import sys; sys.exit(not ${r[0]} >= 20)"
"$TR" sample "${common[@]}" --prompt "a blue square" --image --out "$t/s3" --n 2 --steps 50 --sampler ddim \
    --max-tokens 4 --seed 3 >"$t/s3.out" 2>/dev/null
check "the same seed gives the same samples" sh -c "cmp -s '$t/s1/sample1-0.webp' '$t/s3/sample1-0.webp' && cmp -s '$t/s1.out' '$t/s3.out'"

# Captioning: every training image gives back its caption.
"$TR" caption "${common[@]}" --image "$t/img/k0.png" --image "$t/img/k1.png" --image "$t/img/k2.png" \
    --image "$t/img/k3.png" --image "$t/big0.png" >"$t/cap.out" 2>"$t/cap.err"
rc=$?
check "caption exits 0 ($(tail -1 "$t/cap.err"))" [ $rc -eq 0 ]
cat "$t/cap.out"
for i in 0 1 2 3; do
    got=$(sed -n "$((i + 1))p" "$t/cap.out" | cut -f2); want=$(cat "$t/img/k$i.txt")
    check "caption of training image $i: '$got' = '$want'" [ "$got" = "$want" ]
done
check "caption of a 48 px copy (resized to 16 px): '$(sed -n 5p "$t/cap.out" | cut -f2)'" \
    [ "$(sed -n 5p "$t/cap.out" | cut -f2)" = "$(cat "$t/img/k0.txt")" ]

# --min-tokens: EOS is not sampled before it (where the trained model would end).
"$TR" caption "${common[@]}" --image "$t/img/k1.png" --min-tokens 24 --max-tokens 24 >"$t/min.out" 2>/dev/null
got=$(cut -f2 "$t/min.out")
check "--min-tokens 24 goes on past the caption's end: '$got'" [ ${#got} -gt "$(wc -c <"$t/img/k1.txt")" ]

# A consolidated checkpoint (trainer export) samples the same as its step folder.
"$TR" export --ckpt "$t/run/latest" --out "$t/cons" >/dev/null
"$TR" caption --ckpt "$t/cons" --vae "$t/vae" --threads 2 --image "$t/img/k3.png" >"$t/cons.out" 2>/dev/null
check "a consolidated checkpoint captions the same" [ "$(cut -f2 "$t/cons.out")" = "$(cat "$t/img/k3.txt")" ]

# The device code path (--device cpu-device: the CPU's kernels behind the
# interface --device cuda runs, with its uploads and downloads) gives the
# CPU's bytes: sample (an image then text; text with --no-cache), caption.
for dev in cpu cpu-device; do
    "$TR" sample "${common[@]}" --prompt "a red circle" --image --out "$t/d_$dev" --n 2 --steps 10 --sampler ddim \
        --max-tokens 4 --seed 5 --device "$dev" >"$t/d_$dev.out" 2>/dev/null
    "$TR" sample "${common[@]}" --prompt "a green" --out "$t/r_$dev" --n 2 --steps 10 --max-tokens 8 --seed 6 \
        --no-cache --device "$dev" >"$t/r_$dev.out" 2>/dev/null
    "$TR" caption "${common[@]}" --image "$t/img/k2.png" --image "$t/img/k3.png" --device "$dev" >"$t/c_$dev.out" 2>/dev/null
done
same_run() { [ -f "$t/$1_cpu-device/samples.jsonl" ] && diff -r -q "$t/$1_cpu" "$t/$1_cpu-device" >/dev/null &&
                 cmp -s "$t/$1_cpu.out" "$t/$1_cpu-device.out"; }
check "--device cpu-device: sample prints and writes (samples.jsonl, WebP, grid) the CPU's bytes" same_run d
check "--device cpu-device: sample --no-cache the CPU's bytes too" same_run r
check "--device cpu-device: caption prints the CPU's captions ($(cut -f2 "$t/c_cpu-device.out" | tr '\n' ' '))" \
    sh -c "[ -s '$t/c_cpu.out' ] && cmp -s '$t/c_cpu.out' '$t/c_cpu-device.out'"
check "--device cpu-device: sample-bench runs" sh -c "'$TR' sample-bench --config configs/tiny.json --n 2 \
    --prompt-len 4 --tokens 8 --steps 2 --threads 2 --device cpu-device | grep -q '\"device\":\"cpu-device\"'"

# The U-Net image path ("image_encoder": "unet") overfit on the same pairs:
# a training caption gives back its image, and each image its caption.
BIN="$BIN" PY="$PY" MODEL='{"hidden_size":96,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":256,"max_image_patches":16,"image_encoder":"unet","unet_channels":[32,64]}' \
    tests/tiny_run.sh "$t/u" 2>"$t/u.err"
check "U-Net: the tiny model is trained ($(grep '^step' "$t/u/train.log" 2>/dev/null | tail -1 | cut -c1-60))" \
    [ -d "$t/u/run/latest" ] || cat "$t/u.err"
"$TR" sample --ckpt "$t/u/run" --vae "$t/u/vae" --threads 2 --prompt "a blue square" --image --out "$t/us" --steps 50 \
    --sampler ddim --max-tokens 4 --seed 3 >/dev/null 2>&1
p=($(psnr "$t/us/sample0-0.webp" "$t/u/dec/k1.webp" "$t/u/dec/k0.webp" "$t/u/dec/k2.webp" "$t/u/dec/k3.webp"))
check "U-Net: 'a blue square' gives its training image back (PSNR ${p[0]} dB >= 20; others ${p[1]}, ${p[2]}, ${p[3]})" \
    $PY -c "import sys; sys.exit(not (${p[0]} >= 20 and ${p[0]} > max(${p[1]}, ${p[2]}, ${p[3]}) + 3))"
"$TR" caption --ckpt "$t/u/run" --vae "$t/u/vae" --threads 2 --image "$t/u/img/k0.png" --image "$t/u/img/k1.png" \
    --image "$t/u/img/k2.png" --image "$t/u/img/k3.png" 2>/dev/null | cut -f2 >"$t/ucap.out"
check "U-Net: each training image gives back its caption ($(tr '\n' ',' <"$t/ucap.out"))" \
    diff "$t/ucap.out" <(for i in 0 1 2 3; do cat "$t/u/img/k$i.txt"; echo; done)

# Bad input.
long=$(printf 'a red circle %.0s' $(seq 60))
bad "a prompt longer than the context" "context is 128" \
    "$TR" sample "${common[@]}" --prompt "$long" --out "$t/x"
bad "an unreadable image" "not_an_image.png: cannot read the image" \
    "$TR" caption "${common[@]}" --image "$t/not_an_image.png"
bad "a missing image" "none.png: cannot open" "$TR" caption "${common[@]}" --image "$t/none.png"
mkdir -p "$t/noimg" && cp "$t/cons/config.json" "$t/noimg/" &&
$PY - "$t" <<'PYEOF'
import sys; sys.path.insert(0, "tests")
from st_io import st_read, st_write
d = sys.argv[1]
w, _ = st_read(f"{d}/cons/model.safetensors")
st_write(f"{d}/noimg/model.safetensors", {k: v for k, v in w.items() if not k.startswith("image.")})
PYEOF
bad "a checkpoint without image parameters" "no image parameters" \
    "$TR" sample --ckpt "$t/noimg" --vae "$t/vae" --tokenizer "$t/tok.model" --prompt "a" --out "$t/x"
bad "a bad sampler" "--sampler euler" "$TR" sample "${common[@]}" --prompt a --out "$t/x" --sampler euler
bad "an unknown device" "--device nope" "$TR" sample "${common[@]}" --prompt a --out "$t/x" --device nope
"$VS" init --config configs/vae-cpu.json --out "$t/vae8" >/dev/null
bad "a VAE of other latents" "latent channels" "$TR" sample --ckpt "$t/run" --vae "$t/vae8" --prompt a --out "$t/x"
bad "a folder that holds no checkpoint" "no config.json" \
    "$TR" caption --ckpt "$t/img" --vae "$t/vae" --image "$t/img/k0.png"
exit $((fails > 0))
