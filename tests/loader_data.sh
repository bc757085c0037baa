#!/usr/bin/env bash
# loader_data.sh DIR - the data of the tests that run `dataloader serve`
# against trainer ranks (test_launch.sh, test_scale.sh, soak.sh): a small
# text corpus DIR/a.txt, its tokenizer DIR/tok.model and token shards
# DIR/text, 30 16 px images DIR/img and their latents DIR/lat from a random
# tiny VAE DIR/vae. BIN (default bin) holds the programs. Exits non-zero
# when a stage fails.
set -u
DIR=${1:?usage: tests/loader_data.sh DIR}
BIN=${BIN:-bin}
cd "$(dirname "$0")/.." || exit 1
/usr/bin/python3 - "$DIR" <<'PYEOF' || exit 1
import random, sys
r = random.Random(5); w = "a small boat drifts on the grey sea under low clouds and wind".split()
with open(sys.argv[1] + "/a.txt", "w") as f:
    for _ in range(300): f.write(" ".join(r.choice(w) for _ in range(r.randint(4, 60))) + "\n\n")
PYEOF
"$BIN/dataloader" tokenizer train --input "$DIR/a.txt" --vocab 300 --out "$DIR/tok.model" >/dev/null 2>&1 &&
"$BIN/dataloader" tokenize --tokenizer "$DIR/tok.model" --input "$DIR/a.txt" --out "$DIR/text" >/dev/null 2>&1 &&
mkdir -p "$DIR/img" && /usr/bin/python3 tests/make_image_shards.py --out "$DIR/img" --shards 1 --per-shard 30 --size 16 >/dev/null &&
"$BIN/vae_service" init --config configs/vae-tiny.json --out "$DIR/vae" >/dev/null &&
"$BIN/vae_service" encode --vae "$DIR/vae" --data "$DIR/img/shard-00000.tar" --out "$DIR/lat" --size 16 >/dev/null 2>&1 &&
[ -f "$DIR/lat/dataset.json" ] && [ -f "$DIR/text/dataset.json" ]
