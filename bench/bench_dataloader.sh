#!/usr/bin/env bash
# bench_dataloader.sh - the dataloader against its peers, in one run:
#   - tokenize throughput (tokens/s, 1 and 2 threads) against SentencePiece's
#     own spm_encode on the same model and text;
#   - batches served over loopback TCP for the reference config (L=256,
#     8 rows per rank, 16-patch images of 8 latent channels, patch 2) to 1 and
#     4 clients (dataloader_client/client.h: prefetch 4, every payload's CRC-32C
#     checked), against a bare ZeroMQ ROUTER answering the same requests with
#     messages of the same size (bench_dataloader raw-serve);
#   - rows/s against what the CPU trainer consumes (8 rows per 0.99 s step,
#     README "Measured figures").
# Text: data/text/train (data/fetch-text.sh) when present, else generated.
# Latents: vae_service encode (random VAE weights, configs/vae-cpu.json) of
# generated 64 px images: the latents' values do not matter here.
#   REPEATS=3 SECONDS_PER=3 bench/bench_dataloader.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}; PY=/usr/bin/python3
REPEATS=${REPEATS:-3}; SECONDS_PER=${SECONDS_PER:-3}
export OMP_WAIT_POLICY=passive
t=$(mktemp -d)
pids=""
trap 'rc=$?; set +e; [ $rc -ne 0 ] && cat "$t"/*.err >&2 2>/dev/null; [ -n "$pids" ] && kill $pids 2>/dev/null; rm -rf "$t"' EXIT

if [ -f data/text/manifest.json ]; then
    inputs=$(ls data/text/train/*.txt | paste -sd,)
    train_input=data/text/train/austen.txt
    vocab=8192
else
    $PY -c "
import random; r = random.Random(1); w = 'the old river runs past a quiet stone mill where birds sing of light and rain'.split()
print('\n\n'.join(' '.join(r.choice(w) for _ in range(r.randint(5, 300))) for _ in range(20000)))" >"$t/gen.txt"
    inputs="$t/gen.txt"; train_input="$t/gen.txt"
    vocab=300           # all that 16 distinct words allow (SentencePiece refuses more)
fi
echo "text: $inputs"
"$BIN/dataloader" tokenizer train --input "$train_input" --vocab $vocab --out "$t/tok.model" >/dev/null 2>&1
cat $(echo "$inputs" | tr , ' ') >"$t/all.txt"

for th in 1 2; do
    for r in $(seq "$REPEATS"); do
        "$BIN/dataloader" tokenize --tokenizer "$t/tok.model" --input "$inputs" --out "$t/text" --threads $th 2>/dev/null |
            $PY -c "import json,sys; j=json.load(sys.stdin); print('tokenize threads=%d: %.2f M tokens/s (%.1f s total, %d tokens)' % (j['threads'], j['tokens']/j['total_s']/1e6, j['total_s'], j['tokens']))"
    done
done
for r in $(seq "$REPEATS"); do
    s=$(date +%s.%N)
    spm_encode --model "$t/tok.model" --output_format=id <"$t/all.txt" >"$t/ids.txt"
    e=$(date +%s.%N)
    echo "spm_encode: $($PY -c "print('%.2f M tokens/s (%.1f s)' % ($(wc -w <"$t/ids.txt")/($e-$s)/1e6, $e-$s))")"
done

mkdir -p "$t/img"
$PY tests/make_image_shards.py --out "$t/img" --shards 2 --per-shard 500 --size 64 >/dev/null
"$BIN/vae_service" init --config configs/vae-cpu.json --out "$t/vae" >/dev/null
"$BIN/vae_service" encode --vae "$t/vae" --data "$t/img/shard-*.tar" --out "$t/lat" --size 64 >/dev/null 2>&1

start() { # start NAME COMMAND...: a server in the background; sets spid and sep (its endpoint)
    local name=$1; shift
    "$@" >"$t/$name.out" 2>"$t/$name.err" &
    spid=$!
    pids="$pids $spid"
    sep=""
    for _ in $(seq 600); do
        sep=$(sed -n 's/^serving on \([^ ]*\).*/\1/p' "$t/$name.out" 2>/dev/null || true); [ -n "$sep" ] && return 0
        sleep 0.05
    done
    cat "$t/$name.err" >&2; exit 1
}

start loader "$BIN/dataloader" serve --text "$t/text" --latents "$t/lat" --tokenizer "$t/tok.model" \
    --patch-size 2 --seq-len 256 --rows-per-rank 8 --endpoint 'tcp://127.0.0.1:*'
ep=$sep
"$BIN/dataloader" inspect --endpoint "$ep" --step 0 --world 1
bytes=$("$BIN/bench_dataloader" clients --endpoint "$ep" --clients 1 --seconds 0.5 |
        $PY -c "import json,sys; print(int(json.load(sys.stdin)['payload_bytes']))")
start raw "$BIN/bench_dataloader" raw-serve --bytes "$bytes" --endpoint 'tcp://127.0.0.1:*'
rep=$sep
# Loader and peer runs alternate, so that each pair meets the same load on
# this shared machine.
for r in $(seq "$REPEATS"); do
    for k in 1 4; do
        "$BIN/bench_dataloader" clients --endpoint "$ep" --clients $k --seconds "$SECONDS_PER" | tee -a "$t/loader.$k"
        "$BIN/bench_dataloader" clients --endpoint "$rep" --clients $k --seconds "$SECONDS_PER" --raw | tee -a "$t/raw.$k"
    done
done
kill $pids; wait $pids 2>/dev/null || true
pids=""

$PY - "$t" <<'PYEOF'
import json, sys
t = sys.argv[1]
def runs(name): return [json.loads(l) for l in open(f"{t}/{name}")]
trainer_rows_per_s = 8 / 0.99
for k in (1, 4):
    lo, raw = runs(f"loader.{k}"), runs(f"raw.{k}")
    rows = [r["rows_per_s"] for r in lo]; mb = [r["mb_per_s"] for r in lo]
    raw_msgs = [r["batches_per_s"] for r in raw]; raw_mb = [r["mb_per_s"] for r in raw]
    ratio = sorted(a["batches_per_s"] / b["batches_per_s"] for a, b in zip(lo, raw))
    print(f"{k} client(s): loader {min(rows):.0f}-{max(rows):.0f} rows/s, {min(mb):.0f}-{max(mb):.0f} MB/s "
          f"({lo[0]['payload_bytes']:.0f} B a batch of 8 rows); raw ZeroMQ {min(raw_msgs):.0f}-{max(raw_msgs):.0f} msgs/s, "
          f"{min(raw_mb):.0f}-{max(raw_mb):.0f} MB/s; loader/raw {min(ratio):.2f}-{max(ratio):.2f} (median {ratio[len(ratio) // 2]:.2f}); "
          f"{min(rows) / trainer_rows_per_s:.0f}-{max(rows) / trainer_rows_per_s:.0f}x the CPU trainer's {trainer_rows_per_s:.1f} rows/s")
PYEOF
