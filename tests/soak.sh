#!/usr/bin/env bash
# soak.sh [MINUTES] - the chaos soak (not part of `make test`: it runs for
# MINUTES, default 20). One training job runs under launch/train.sh
# --restarts, 2 ranks against a loader, saving every 25 steps, while a chaos
# loop kill -9s, every 20-60 s, one of: the loader, a random rank at a random
# moment, or a random rank in the middle of a save. Beside it an undisturbed
# job trains the same steps. At the end the chaos job's weights must equal
# the undisturbed job's byte for byte, and the last loss it logged for each
# step the undisturbed loss of that step. Prints `ok`/`FAIL` lines and a
# summary: faults injected (by kind), survived (each followed by its restart,
# the job ending with exit 0), weights equal. KEEP=1 keeps the work folder.
set -u
MINUTES=${1:-20}
BIN=${BIN:-bin}
cd "$(dirname "$0")/.." || exit 1
. tests/check.sh
export BIN OMP_NUM_THREADS=1
BIN=$(realpath "$BIN")
t=$(mktemp -d)
chaos="" calm=""
trap '[ -n "$chaos" ] && kill -TERM $chaos 2>/dev/null; [ -n "$calm" ] && kill -TERM $calm 2>/dev/null; wait;
      [ -n "${KEEP:-}" ] && echo "kept $t" || rm -rf "$t"' EXIT

tests/loader_data.sh "$t" || { echo "FAIL soak: the test data"; exit 1; }
mkdir "$t/c" && cp -r "$t/text" "$t/lat" "$t/tok.model" "$t/c/"    # the chaos job's loader: other paths, same data
printf '{"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":160,"max_image_patches":16}\n' >"$t/model.json"
job() { # NAME DATA STEPS EXTRA_TRAIN_SH_ARGS...: one training job of 2 ranks
    local name=$1 d=$2 steps=$3; shift 3
    launch/train.sh --ranks 2 --text "$d/text" --latents "$d/lat" --tokenizer "$d/tok.model" \
        --loader-args "--patch-size 2 --rows-per-rank 2 --seq-len 128" "$@" -- \
        --config "$t/model.json" --steps "$steps" --lr 1e-3 --warmup 20 --threads 1 --log-every 100 \
        --ckpt-dir "$t/$name" --ckpt-every 25 --keep 2 --out "$t/$name.out"
}

# Steps: the two jobs share the machine for about MINUTES, and each fault
# costs a restart and the steps since the last save, so time a short job
# first (its start, steps and saves).
t0=$(date +%s.%N)
job probe "$t" 400 >"$t/probe.log" 2>&1 || { echo "FAIL soak: the probe run"; cat "$t/probe.log"; exit 1; }
probe_s=$(awk -v s="$(date +%s.%N)" -v t0="$t0" 'BEGIN { printf "%.1f", s - t0 }')
steps=$(awk -v p="$probe_s" -v m="$MINUTES" 'BEGIN { n = int(400 / p * m * 60 * 0.3); print n < 200 ? 200 : n }')
echo "soak: $MINUTES min planned, $steps steps (the probe: 400 steps alone in $probe_s s)"

start=$(date +%s)
job calm "$t" "$steps" >"$t/calm.log" 2>&1 &
calm=$!
job chaos "$t/c" "$steps" --restarts 1000 >"$t/chaos.log" 2>&1 &
chaos=$!

# The chaos loop: kill -9 a loader or a rank of the chaos job every 20-60 s.
faults=0 loader=0 rank=0 saving=0
ranks_of() { pgrep -f "^$BIN/trainer train .*$t/chaos "; }
while kill -0 $chaos 2>/dev/null; do
    wait_s=$((20 + RANDOM % 41))
    for _ in $(seq "$wait_s"); do kill -0 $chaos 2>/dev/null || break; sleep 1; done
    kill -0 $chaos 2>/dev/null || break
    kind=$((RANDOM % 3))
    if [ $kind -eq 0 ]; then
        victim=$(pgrep -f "^$BIN/dataloader serve .*$t/c/text" | shuf -n 1)
    else
        mapfile -t pids < <(ranks_of)
        [ ${#pids[@]} -gt 0 ] || continue           # between restarts: no rank to kill
        victim=${pids[RANDOM % ${#pids[@]}]}
        # in the middle of a save: builtins only until the kill
        [ $kind -eq 2 ] && for _ in $(seq 200000); do compgen -G "$t/chaos/.tmp-step_*" >/dev/null && break; done
    fi
    [ -n "$victim" ] && kill -9 "$victim" 2>/dev/null || continue
    in_save=$(compgen -G "$t/chaos/.tmp-step_*" >/dev/null && echo " (a save in progress)")
    faults=$((faults + 1))
    case $kind in 0) loader=$((loader + 1)) ;; 1) rank=$((rank + 1)) ;; 2) saving=$((saving + 1)) ;; esac
    echo "soak: $(($(date +%s) - start)) s: fault $faults: kill -9 $([ $kind -eq 0 ] && echo loader || echo rank) $victim$in_save"
done
wait $chaos; rc=$?; chaos=""
wait $calm; calm_rc=$?; calm=""
minutes=$(awk -v s=$(($(date +%s) - start)) 'BEGIN { printf "%.1f", s / 60 }')
restarts=$(grep -c '^train.sh: restart ' "$t/chaos.log")

check "soak: the undisturbed job ends ($calm_rc)" [ $calm_rc -eq 0 ]
check "soak: the chaos job ends with exit 0 ($rc) after $restarts restarts" [ $rc -eq 0 ]
check "soak: every fault was followed by a restart ($restarts for $faults)" [ "$restarts" -ge "$faults" ]
check "soak: the weights equal the undisturbed job's, byte for byte" cmp -s "$t/calm.out/model.safetensors" "$t/chaos.out/model.safetensors"
/usr/bin/python3 - "$t/calm/metrics.jsonl" "$t/chaos/metrics.jsonl" "$steps" <<'PYEOF'
import json, sys
def last_losses(path):
    out = {}
    for line in open(path):
        try: j = json.loads(line)
        except ValueError: continue                 # a line torn by a kill
        out[j["step"]] = j["loss"]
    return out
calm, chaos = last_losses(sys.argv[1]), last_losses(sys.argv[2])
steps = list(range(1, int(sys.argv[3]) + 1))
same = all(calm.get(s) == chaos.get(s) and s in calm for s in steps)
print(("ok" if same else "FAIL") + f" soak: the last loss logged for each of the {len(steps)} steps equals the undisturbed one")
sys.exit(0 if same else 1)
PYEOF
[ $? -eq 0 ] || fails=$((fails + 1))
echo "soak: $minutes min, $steps steps of 2 ranks; faults injected $faults (loader $loader, rank at a random moment $rank," \
     "rank in a save $saving), survived $([ $rc -eq 0 ] && echo "$faults" || echo 0), restarts $restarts," \
     "weights equal: $(cmp -s "$t/calm.out/model.safetensors" "$t/chaos.out/model.safetensors" && echo yes || echo no)"
[ $fails -eq 0 ]
