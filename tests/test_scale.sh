#!/usr/bin/env bash
# test_scale.sh - many ranks on one machine, through launch/train.sh: 16
# ranks (oversubscribed, a tiny model) train against 2 loader replicas and
# save 16 shards; the run resumed from its step 6 on 4 ranks and on 1 (the
# same global batch: 16 x 1 = 4 x 4 = 1 x 16 rows) gives the 16-rank losses
# of steps 7..12; a run whose loader replica is killed at step 3 moves its
# ranks to the other replica and ends with exactly the undisturbed losses
# (no step lost or repeated).
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
. "$(dirname "$0")/check.sh"
export BIN OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
t=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -TERM $pid 2>/dev/null && wait $pid; [ -n "${KEEP:-}" ] || rm -rf "$t"' EXIT

tests/loader_data.sh "$t"
check "the test data is built ($?)" [ $? -eq 0 ]
printf '{"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":64,"max_image_patches":16}\n' >"$t/model.json"
data() { echo --text "$t/text" --latents "$t/lat" --tokenizer "$t/tok.model"; }
run() { # RANKS ROWS_PER_RANK LOADERS TRAINER_ARGS...
    local ranks=$1 rows=$2 loaders=$3; shift 3
    # shellcheck disable=SC2046  # data is a list of flags
    launch/train.sh --ranks "$ranks" --loaders "$loaders" $(data) \
        --loader-args "--patch-size 2 --rows-per-rank $rows --seq-len 128" -- \
        --config "$t/model.json" --lr 3e-3 --warmup 2 --threads 1 --log-every 1 --steps 12 "$@"
}
losses() { sed 's/,"lm_loss".*//' "$1/metrics.jsonl"; }

run 16 1 2 --ckpt-dir "$t/r16" --ckpt-every 6 >"$t/r16.log" 2>&1
check "16 ranks against 2 loader replicas train 12 steps ($?)" [ "$(wc -l <"$t/r16/metrics.jsonl")" -eq 12 ]
check "... the ranks were given both replicas" grep -Eq 'dataloader on tcp://127.0.0.1:[0-9]+,tcp://127.0.0.1:[0-9]+$' "$t/r16.log"
n=$(find "$t/r16/step_00000006" -name 'model-000*-of-00016.safetensors' | wc -l)
m=$(find "$t/r16/step_00000006" -name 'optimizer-000*-of-00016.safetensors' | wc -l)
check "... and save 16 weight shards ($n) and 16 optimizer shards ($m)" [ "$n" -eq 16 -a "$m" -eq 16 ]

# The same losses on fewer ranks: the sums run in another order, so they
# agree to float rounding, not bitwise.
close() {
    $PY - "$1" "$2" <<'PYEOF'
import json, sys
a = {j["step"]: j["loss"] for j in map(json.loads, open(sys.argv[1] + "/metrics.jsonl"))}
b = {j["step"]: j["loss"] for j in map(json.loads, open(sys.argv[2] + "/metrics.jsonl"))}
steps = sorted(b)
err = max(abs(a[s] - b[s]) / abs(a[s]) for s in steps)
print(f"  steps {steps[0]}..{steps[-1]}: largest relative loss difference {err:.2g}")
sys.exit(0 if steps == list(range(7, 13)) and err <= 1e-5 else 1)
PYEOF
}
for r in 4 1; do
    run $r $((16 / r)) 1 --ckpt-dir "$t/on$r" --resume "$t/r16/step_00000006" >"$t/on$r.log" 2>&1
    check "resumed on $r rank(s): it read step 6 of 16 ranks" grep -q 'resuming .*r16/step_00000006 at step 6 (written by 16 ranks)' "$t/on$r.log"
    check "... and steps 7..12 have the 16-rank losses" close "$t/r16" "$t/on$r"
done

# A replica killed mid-run, never restarted: its ranks move to the other.
run 16 1 2 --ckpt-dir "$t/failover" >"$t/failover.log" 2>&1 &
pid=$!
for _ in $(seq 1500); do grep -q '"step":3,' "$t/failover/metrics.jsonl" 2>/dev/null && break; sleep 0.02; done
victim=$(pgrep -o -f "[d]ataloader serve .*$t/text")
kill -9 "$victim"
killed_at=$(wc -l <"$t/failover/metrics.jsonl")
wait $pid; rc=$?; pid=""
check "failover: a replica was killed at step $killed_at of 12" [ "$killed_at" -lt 12 ]
check "failover: the run ends (exit $rc) with 12 steps" [ $rc -eq 0 -a "$(wc -l <"$t/failover/metrics.jsonl")" -eq 12 ]
check "failover: every step's loss equals the undisturbed run's, bitwise" diff <(losses "$t/r16") <(losses "$t/failover")
[ $fails -eq 0 ]
