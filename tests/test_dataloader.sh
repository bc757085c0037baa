#!/usr/bin/env bash
# test_dataloader.sh - the dataloader's command line end to end: tokenizer
# train (unigram and BPE, <boi> <eoi> <pad> defined), tokenize (.txt in both
# layouts, .jsonl, empty documents counted), serve on latents written by
# `vae_service encode` and inspect --dump, whose batch file `trainer loss`
# reads; and the exit-2 errors: bad inputs, damaged token and latent shards
# (named, or left out and reported with --skip-bad-shards), text of another
# tokenizer, a bad dataset.json field.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
export OMP_WAIT_POLICY=passive
. "$(dirname "$0")/check.sh"
DL=$(realpath "$BIN/dataloader"); VS=$(realpath "$BIN/vae_service"); TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$t"' EXIT

# Starts serve in the background; sets pid and ep (the bound endpoint).
serve() {
    rm -f "$t/serve.out"   # else the loop below may read the last server's line
    "$DL" serve --endpoint 'tcp://127.0.0.1:*' "$@" >"$t/serve.out" 2>"$t/serve.err" &
    pid=$!
    ep=""
    for _ in $(seq 200); do
        ep=$(sed -n 's/^serving on \([^ ]*\) .*/\1/p' "$t/serve.out" 2>/dev/null)
        [ -n "$ep" ] && return 0
        kill -0 $pid 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
stop() { kill $pid 2>/dev/null; wait $pid 2>/dev/null; local rc=$?; pid=""; return $rc; }

# Text: paragraphs in a.txt, one document per line in b.txt, c.jsonl with two empty documents.
$PY - "$t" <<'PYEOF'
import json, random, sys
d = sys.argv[1]; r = random.Random(3)
words = "the old river runs past a quiet stone mill where birds sing of light and rain".split()
def doc(n): return " ".join(r.choice(words) for _ in range(n))
with open(f"{d}/a.txt", "w") as f:
    for i in range(150): f.write(doc(r.randint(5, 40)) + "\n" + doc(r.randint(1, 30)) + "\n\n")
with open(f"{d}/b.txt", "w") as f:
    for i in range(100): f.write(doc(r.randint(3, 20)) + "\n")
with open(f"{d}/c.jsonl", "w") as f:
    for i in range(40): f.write(json.dumps({"text": doc(r.randint(2, 50)), "id": i}) + "\n")
    f.write(json.dumps({"text": ""}) + "\n" + json.dumps({"text": "   "}) + "\n")
with open(f"{d}/bad.jsonl", "w") as f:
    f.write(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
PYEOF

"$DL" tokenizer train --input "$t/a.txt,$t/b.txt" --vocab 300 --out "$t/tok.model" >"$t/train.json" 2>/dev/null
check "tokenizer train (unigram) defines <boi> <eoi> <pad>" grep -q '"boi":3,"eoi":4,"pad":5' "$t/train.json"
"$DL" tokenizer train --input "$t/a.txt" --vocab 320 --type bpe --out "$t/bpe.model" >"$t/bpe.json" 2>/dev/null
check "tokenizer train --type bpe" grep -q '"type":"bpe","vocab_size":320' "$t/bpe.json"
check "spm_encode reads the model" sh -c "echo 'the old river' | spm_encode --model '$t/tok.model' --output_format=id | grep -q '[0-9]'"

"$DL" tokenize --tokenizer "$t/tok.model" --input "$t/a.txt,$t/b.txt,$t/c.jsonl" --out "$t/text" >"$t/tok.json" 2>"$t/tok.err"
check "tokenize exits 0" [ $? -eq 0 ]
check "tokenize: 150 paragraphs + 100 lines + 40 jsonl documents, 2 empty skipped" \
    grep -q '"inputs":3,"docs":290,.*"skipped_empty":2' "$t/tok.json"
check "tokenize prints its throughput" grep -q '"encode_tokens_per_s":' "$t/tok.json"
check "one shard per input and dataset.json" [ -f "$t/text/a.tok" -a -f "$t/text/c.tok" -a -f "$t/text/dataset.json" ]
"$DL" tokenize --tokenizer "$t/tok.model" --input "$t/a.txt,$t/b.txt,$t/c.jsonl" --out "$t/text1" --threads 1 >/dev/null 2>&1
check "the shards do not depend on the thread count" cmp -s "$t/text/a.tok" "$t/text1/a.tok"
bad "tokenize: a jsonl line without text" "bad.jsonl: line 2: field 'text'" \
    "$DL" tokenize --tokenizer "$t/tok.model" --input "$t/bad.jsonl" --out "$t/x"
bad "tokenize: an input of unknown type" "unknown input type" \
    "$DL" tokenize --tokenizer "$t/tok.model" --input "$t/train.json" --out "$t/x"
bad "tokenize: not a tokenizer" "not a SentencePiece model" \
    "$DL" tokenize --tokenizer "$t/a.txt" --input "$t/a.txt" --out "$t/x"
bad "tokenizer train: a missing input" "cannot open" "$DL" tokenizer train --input "$t/none.txt" --vocab 300 --out "$t/x.model"

# Latents written by vae_service encode (4 channels, 8 x 8).
mkdir -p "$t/img" && $PY tests/make_image_shards.py --out "$t/img" --shards 2 --per-shard 30 --size 16 >/dev/null
"$VS" init --config configs/vae-tiny.json --out "$t/vae" >/dev/null
"$VS" encode --vae "$t/vae" --data "$t/img/shard-*.tar" --out "$t/lat" --size 16 >/dev/null 2>&1
check "vae_service encode writes the latents" [ -f "$t/lat/dataset.json" ]

common=(--text "$t/text" --latents "$t/lat" --tokenizer "$t/tok.model" --patch-size 2 --rows-per-rank 4)
if serve "${common[@]}"; then
    ok "serve starts on $ep"
    "$DL" inspect --endpoint "$ep" --step 3 --rank 1 --world 2 --dump "$t/batch.safetensors" >"$t/inspect.json" 2>"$t/inspect.err"
    check "inspect prints the batch statistics" grep -q '"step":3,"rank":1,"world":2,"rows":4,"seq_len":256,.*"pad_fraction":0.0000,"image_fraction":0.[45]' "$t/inspect.json"
    cat "$t/inspect.json"
    printf '{"vocab_size":%s,"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":64,"latent_channels":4,"latent_size":8,"patch_size":2,"max_image_patches":16,"bos_token_id":1,"eos_token_id":2,"boi_token_id":3,"eoi_token_id":4}\n' \
        "$(sed -n 's/.*"vocab_size":\([0-9]*\).*/\1/p' "$t/train.json")" >"$t/model.json"
    "$TR" init --config "$t/model.json" --out "$t/ck" >/dev/null
    "$TR" loss --ckpt "$t/ck" --batch "$t/batch.safetensors" >"$t/loss.json" 2>"$t/loss.err"
    check "trainer loss reads the dumped batch ($(cat "$t/loss.json" "$t/loss.err"))" grep -q '"loss":' "$t/loss.json"
    check "the dump has noise_limit and sample_ids" $PY -c "
import sys; sys.path.insert(0, 'tests'); from st_io import st_read
b, _ = st_read('$t/batch.safetensors')
n = b['latents'].shape[0]
sys.exit(not (b['noise_limit'].shape == (n,) and b['sample_ids'].dtype.kind == 'i' and b['tokens'].shape == (4, 256)))"
    "$DL" inspect --endpoint "$ep" --step 3 --rank 1 --world 2 --dump "$t/again.safetensors" >/dev/null 2>&1
    check "the same request gives the same batch file" cmp -s "$t/batch.safetensors" "$t/again.safetensors"
    "$DL" inspect --endpoint "$ep" --step 1099511627775 --rank 1 --world 2 --timeout-ms 5000 >"$t/far.json" 2>"$t/far.err"
    check "step 2^40 - 1 is served as step 3 is ($?)" grep -q '"step":1099511627775,"rank":1,"world":2,"rows":4' "$t/far.json"
    check "SIGTERM: exit 0" stop
    check "the exit line counts the requests" grep -q 'dataloader serve: 3 requests (3 batches' "$t/serve.err"
else
    fail "serve starts: $(cat "$t/serve.err")"
fi

# A model without <boi>/<eoi> (as Llama 2's): they are appended after its vocabulary.
spm_train --input="$t/a.txt" --model_prefix="$t/plain" --vocab_size=300 --byte_fallback=true --minloglevel=2 >/dev/null 2>&1
"$DL" tokenize --tokenizer "$t/plain.model" --input "$t/a.txt" --out "$t/text_plain" >/dev/null 2>&1
check "plain model: dataset.json appends BOI 300 and EOI 301 (vocabulary 302)" $PY -c "
import json, sys; t = json.load(open('$t/text_plain/dataset.json'))['tokenizer']
sys.exit(not (t['pieces'] == 300 and t['vocab_size'] == 302 and t['boi'] == 300 and t['eoi'] == 301))"
if serve --text "$t/text_plain" --latents "$t/lat" --tokenizer "$t/plain.model" --patch-size 2 --rows-per-rank 2; then
    "$DL" inspect --endpoint "$ep" --step 0 --world 1 --dump "$t/plain.safetensors" >/dev/null 2>"$t/plain.err" || cat "$t/plain.err" "$t/serve.err"
    check "plain model: rows carry BOI 300 and EOI 301 around every image" $PY -c "
import sys; sys.path.insert(0, 'tests'); from st_io import st_read
import numpy as np
b, _ = st_read('$t/plain.safetensors'); t, m = b['tokens'], b['modality']
starts = [(r, i) for r in range(t.shape[0]) for i in range(1, t.shape[1]) if m[r, i] == 1 and m[r, i - 1] == 0]
sys.exit(not (starts and all(t[r, i - 1] == 300 and t[r, i + 16] == 301 for r, i in starts)))"
    stop
else
    fail "serve with a plain model starts: $(cat "$t/serve.err")"
fi

# Damaged shards: named at start, or left out and reported.
cp -r "$t/text" "$t/text_bad"
printf 'X' | dd of="$t/text_bad/b.tok" bs=1 seek=300 conv=notrunc 2>/dev/null
bad "serve: a token shard with a bad checksum" "b.tok: token shard: checksum mismatch" \
    "$DL" serve --text "$t/text_bad" --latents "$t/lat" --tokenizer "$t/tok.model" --patch-size 2 --endpoint 'tcp://127.0.0.1:*'
if serve --text "$t/text_bad" --latents "$t/lat" --tokenizer "$t/tok.model" --patch-size 2 --skip-bad-shards; then
    check "--skip-bad-shards: the token shard is left out and reported" grep -q 'skip shard: .*b.tok.*checksum' "$t/serve.err"
    check "--skip-bad-shards: counted in the summary" grep -q '190 text documents in 2 shards.*1 bad shards' "$t/serve.err"
    stop
else
    fail "serve --skip-bad-shards starts: $(cat "$t/serve.err")"
fi
cp -r "$t/lat" "$t/lat_bad"
truncate -s 1000 "$t/lat_bad/shard-00001.safetensors"
bad "serve: a truncated latent shard" "shard-00001.safetensors: 1000 bytes, dataset.json says" \
    "$DL" serve --text "$t/text" --latents "$t/lat_bad" --tokenizer "$t/tok.model" --patch-size 2 --endpoint 'tcp://127.0.0.1:*'
if serve --text "$t/text" --latents "$t/lat_bad" --tokenizer "$t/tok.model" --patch-size 2 --skip-bad-shards; then
    check "--skip-bad-shards: the latent shard is left out" grep -q '30 images .* in 1 shards; left out: 1 bad shards' "$t/serve.err"
    stop
else
    fail "serve --skip-bad-shards (latents) starts: $(cat "$t/serve.err")"
fi
# A NaN in a latent shard whose size and checksum dataset.json vouches for:
# it would poison every step that draws its image.
cp -r "$t/lat" "$t/lat_nan"
$PY - "$t/lat_nan" <<'PYEOF'
import json, struct, sys
d = sys.argv[1]
path = d + "/shard-00001.safetensors"
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
at = 8 + n + json.loads(data[8:8 + n])["mean"]["data_offsets"][0] + 4 * 5
data[at:at + 4] = struct.pack("<I", 0x7FC00000)
open(path, "wb").write(data)
sys.path.insert(0, "tests")
from crc32c import crc32c
ds = json.load(open(d + "/dataset.json"))
for e in ds["shards"]:
    if e["file"] == "shard-00001.safetensors": e["crc32c"] = "%08x" % crc32c(data)
json.dump(ds, open(d + "/dataset.json", "w"))
PYEOF
bad "serve: a latent shard holding a NaN (its checksum right)" "shard-00001.safetensors: tensor 'mean': holds a NaN or an infinity" \
    "$DL" serve --text "$t/text" --latents "$t/lat_nan" --tokenizer "$t/tok.model" --patch-size 2 --endpoint 'tcp://127.0.0.1:*'
if serve --text "$t/text" --latents "$t/lat_nan" --tokenizer "$t/tok.model" --patch-size 2 --skip-bad-shards; then
    check "--skip-bad-shards: the shard with a NaN is left out and counted" \
        grep -q '30 images .* in 1 shards; left out: 1 bad shards' "$t/serve.err"
    stop
else
    fail "serve --skip-bad-shards (NaN latents) starts: $(cat "$t/serve.err")"
fi
"$DL" tokenize --tokenizer "$t/bpe.model" --input "$t/a.txt" --out "$t/text_bpe" >/dev/null 2>&1
bad "serve: text of another tokenizer" "tokenized with another tokenizer" \
    "$DL" serve --text "$t/text_bpe" --latents "$t/lat" --tokenizer "$t/tok.model" --patch-size 2 --endpoint 'tcp://127.0.0.1:*'
sed 's/"channel_std":/"channel_std": "x", "old_std":/' "$t/lat/dataset.json" >"$t/ds.json" && cp -r "$t/lat" "$t/lat_json" && mv "$t/ds.json" "$t/lat_json/dataset.json"
bad "serve: a bad dataset.json field" "dataset.json: field 'channel_std'" \
    "$DL" serve --text "$t/text" --latents "$t/lat_json" --tokenizer "$t/tok.model" --patch-size 2 --endpoint 'tcp://127.0.0.1:*'
bad "serve: an unknown flag" "unknown argument '--bogus'" "$DL" serve --bogus 1
bad "serve: a probability over 1" "--drop-caption 1.5" "$DL" serve "${common[@]}" --drop-caption 1.5
bad "inspect: rank not below world" "--rank 2 is not below --world 2" "$DL" inspect --endpoint tcp://127.0.0.1:1 --rank 2 --world 2

# trainer train --loader: the model JSON leaves the vocabulary, the special
# ids and the latent shape to the loader; 2 ranks and 1 rank with 2
# accumulation steps train on the same rows, to the same losses.
printf '{"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":64,"max_image_patches":16}\n' >"$t/open.json"
sed 's/"max_image_patches":16/"max_image_patches":16,"latent_channels":8/' "$t/open.json" >"$t/c8.json"
if serve "${common[@]}" --seq-len 128; then
    train=("$TR" train --config "$t/open.json" --loader "$ep" --steps 6 --log-every 1 --lr 3e-3 --warmup 2 --threads 1)
    "${train[@]}" --grad-accum 2 >"$t/tr1.log" 2>&1
    check "train --loader: 1 rank x 2 accumulation steps runs" grep -q '^step    6/6' "$t/tr1.log"
    # A device backend takes each step's rows from the loader on a host
    # thread, a step ahead (trainer/step_feed.h): the same rows, losses and bits.
    "${train[@]}" --grad-accum 2 --device cpu-device >"$t/tr1d.log" 2>&1
    check "train --loader --device cpu-device (steps prepared ahead): the same 6 losses, bit for bit" \
        cmp -s <(grep -o '^step.*loss [0-9.]*' "$t/tr1.log") <(grep -o '^step.*loss [0-9.]*' "$t/tr1d.log")
    check "... and all 6 steps ran" [ "$(grep -c '^step' "$t/tr1d.log")" = 6 ]
    mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x ASAN_OPTIONS=detect_leaks=0 "${train[@]}" >"$t/tr2.log" 2>&1
    check "train --loader: 2 ranks under mpirun run" grep -q '^step    6/6' "$t/tr2.log"
    check "... and give the same losses" $PY - "$t/tr1.log" "$t/tr2.log" <<'PYEOF'
import re, sys
a, b = ([float(x) for x in re.findall(r"^step +\d+/\d+ +loss (\S+)", open(p).read(), re.M)] for p in sys.argv[1:])
sys.exit(not (len(a) == 6 and len(b) == 6 and max(abs(x - y) / x for x, y in zip(a, b)) < 1e-5))
PYEOF
    check "train --loader: the rows' shape comes from the loader" grep -q '4 rows x 128 positions' "$t/tr1.log"
    bad "train --loader: a model of other latents is refused" "field 'latent_channels': 8, but the loader at" \
        "$TR" train --config "$t/c8.json" --loader "$ep" --steps 1
    stop
else
    fail "serve for trainer train starts: $(cat "$t/serve.err")"
fi

[ $fails -eq 0 ]
