#!/usr/bin/env bash
# tiny_run.sh OUT_DIR - a tiny Transfusion model overfit, through the real
# dataloader and `trainer train`, on four 16 px image-caption pairs ("a red
# circle", "a blue square", "a green ring", "a yellow cross"). It writes:
#   OUT/img/k{0..3}.png, .txt   the pairs          OUT/big0.png  a 48 px copy of k0
#   OUT/not_an_image.png        a bad image        OUT/tok.model the tokenizer
#   OUT/vae/                    a random tiny VAE  OUT/lat/, OUT/dec/  latents, their decodes
#   OUT/run/                    the checkpoints    OUT/train.log
# Used by tests/test_sample.sh and by bench/gpu-bundle.sh (the GPU check's
# generation fixture). BIN (default bin) holds the programs; MODEL the model's
# config JSON (default a 96-wide linear-path model); STEPS (600) and
# THREADS (2) set the training. Exits non-zero, naming the step, on failure.
set -u
OUT=${1:?usage: tests/tiny_run.sh OUT_DIR}
BIN=${BIN:-bin}
PY=${PY:-/usr/bin/python3}
DL=$(realpath "$BIN/dataloader"); VS=$(realpath "$BIN/vae_service"); TR=$(realpath "$BIN/trainer")
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUT/img" || exit 1
pid=""
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null' EXIT

$PY - "$OUT" <<'PYEOF' || { echo "tiny_run: could not write the images" >&2; exit 1; }
import sys; sys.path.insert(0, "tests")
from make_image_shards import png
d = sys.argv[1]
pairs = [("red", "circle"), ("blue", "square"), ("green", "ring"), ("yellow", "cross")]
cols = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (230, 200, 30)}
def image(size, colour, shape):
    rows = []
    for y in range(size):
        row = []
        for x in range(size):
            u, v = (x + 0.5) / size - 0.5, (y + 0.5) / size - 0.5
            r2 = u * u + v * v
            inside = {"circle": r2 < 0.12, "square": abs(u) < 0.3 and abs(v) < 0.3,
                      "ring": 0.06 < r2 < 0.16, "cross": abs(u) < 0.1 or abs(v) < 0.1}[shape]
            row.extend(cols[colour] if inside else (255, 255, 255))
        rows.append(row)
    return png(size, size, rows)
with open(f"{d}/captions.txt", "w") as text:
    for i, (c, s) in enumerate(pairs):
        open(f"{d}/img/k{i}.png", "wb").write(image(16, c, s))
        open(f"{d}/img/k{i}.txt", "w").write(f"a {c} {s}")
        text.write(f"a {c} {s}\n")
open(f"{d}/big0.png", "wb").write(image(48, *pairs[0]))
open(f"{d}/not_an_image.png", "w").write("hello")
PYEOF
{ "$DL" tokenizer train --input "$OUT/captions.txt" --vocab 280 --out "$OUT/tok.model" &&
  "$DL" tokenize --tokenizer "$OUT/tok.model" --input "$OUT/captions.txt" --out "$OUT/text" &&
  "$VS" init --config configs/vae-tiny.json --out "$OUT/vae" --seed 1 &&
  "$VS" encode --vae "$OUT/vae" --data "$OUT/img" --out "$OUT/lat" --size 16 &&
  "$VS" decode --vae "$OUT/vae" --latents "$OUT/lat" --out "$OUT/dec"; } >"$OUT/prepare.log" 2>&1 ||
    { echo "tiny_run: tokenizer, VAE or latents failed: $(tail -n 2 "$OUT/prepare.log")" >&2; exit 1; }

# The loader serves caption-first and image-first pairs (and dropped captions).
"$DL" serve --endpoint 'tcp://127.0.0.1:*' --text "$OUT/text" --latents "$OUT/lat" --tokenizer "$OUT/tok.model" \
    --patch-size 2 --seq-len 128 --rows-per-rank 8 --image-fraction 0.6 --caption-first 0.5 --max-caption 16 \
    >"$OUT/serve.out" 2>"$OUT/serve.err" &
pid=$!
ep=""
for _ in $(seq 200); do
    ep=$(sed -n 's/^serving on \([^ ]*\) .*/\1/p' "$OUT/serve.out" 2>/dev/null); [ -n "$ep" ] && break; sleep 0.05
done
[ -n "$ep" ] || { echo "tiny_run: the dataloader does not serve: $(cat "$OUT/serve.err")" >&2; exit 1; }
linear='{"hidden_size":96,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":256,"max_image_patches":16}'
echo "${MODEL:-$linear}" >"$OUT/model.json"
"$TR" train --model "$OUT/model.json" --loader "$ep" --steps "${STEPS:-600}" --lr 3e-3 --warmup 20 \
    --threads "${THREADS:-2}" --log-every 100 --ckpt-dir "$OUT/run" >"$OUT/train.log" 2>&1
kill $pid 2>/dev/null; wait $pid 2>/dev/null; pid=""
[ -d "$OUT/run/latest" ] || { echo "tiny_run: training failed: $(tail -n 3 "$OUT/train.log")" >&2; exit 1; }
