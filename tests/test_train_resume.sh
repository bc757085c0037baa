#!/usr/bin/env bash
# test_train_resume.sh - `trainer train` with checkpoints: a 20-step run
# with a checkpoint every 5 steps; 2 ranks killed with kill -9 in the middle
# of a save, three times, each time resumed with --resume auto from the
# newest whole folder, end with the undisturbed run's weights byte for byte;
# a run
# of 2 ranks resumes on 1 and a run of 1 on 2 (optimizer state resharded)
# to the same weights within 1e-5; SIGTERM finishes the step, saves and
# exits 0; a damaged newest checkpoint makes auto fall back and an explicit
# --resume fail with exit 2, and so does one forged so that its files'
# checksums match (the index edited, optimizer parts off by one, state and
# index naming other steps); an unusable --ckpt-dir stops the run non-zero;
# the U-Net image path resumes byte for byte and exports.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
. "$(dirname "$0")/check.sh"
TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$t"' EXIT
export OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS -x ASAN_OPTIONS"
# float32 (the CPU's training default is bf16): world sizes are compared to
# float32 rounding below; bf16's own resume is checked at the end.
train() { "$TR" train --config configs/tiny.json --steps 20 --seq-len 64 --lr 3e-3 --warmup 3 --seed 5 --log-every 1 --threads 1 \
              --precision fp32 "$@"; }
losses() { sed -n 's/^step *\([0-9]*\)\/[0-9]* *loss \([^ ]*\).*/\1 \2/p' "$1"; }

train --batch-rows 4 --ckpt-dir "$t/full" --ckpt-every 5 --out "$t/full.out" >"$t/full.log" 2>&1
check "a 20-step run with checkpoints every 5 steps" [ -f "$t/full.out/model.safetensors" -a -d "$t/full/step_00000020" ]
check "metrics.jsonl has one line per step" [ "$(wc -l <"$t/full/metrics.jsonl")" -eq 20 ]
check "... with the progress fields" grep -q '"step":20,"loss":.*"lr":.*"grad_norm":.*"positions_per_s":.*"data_wait_s":' "$t/full/metrics.jsonl"

# Crash consistency of a multi-rank save: 2 ranks saving every step, one of
# them killed with kill -9 while a save is in progress, three times. Each
# time every step_* folder left is whole (--resume auto takes the newest
# one, which opens and verifies), and the run that goes on to the end has
# the weights of an undisturbed run, bitwise. A wider model than tiny, so a
# step and a save take long enough for the kill to land inside one.
sed 's/"hidden_size":64/"hidden_size":128/; s/"intermediate_size":160/"intermediate_size":256/' configs/tiny.json >"$t/wide.json"
crash_run() { $MPI -np 2 "$TR" train --config "$t/wide.json" --steps 30 --seq-len 64 --lr 3e-3 --warmup 3 --seed 5 \
                  --threads 1 --batch-rows 2 --log-every 1 --ckpt-every 1 "$@"; }
crash_run --ckpt-dir "$t/calm" --out "$t/calm.out" >"$t/calm.log" 2>&1
newest() { find "$1" -maxdepth 1 2>/dev/null -name 'step_*' | sort | tail -n 1 | sed 's/.*step_0*//'; }
mid_save=0 resumed_newest=0 failed=0
for round in 1 2 3; do
    crash_run --ckpt-dir "$t/crash" --resume auto --out "$t/crash.out" >"$t/crash$round.log" 2>&1 &
    pid=$!
    for _ in $(seq 3000); do [ "$(newest "$t/crash")" -ge $((round * 6)) ] 2>/dev/null && break; sleep 0.01; done
    rank0=$(pgrep -o -f "^$TR train .*$t/crash")   # the older rank (not mpirun): rank 0, which publishes a save
    # builtins only from here, so the kill lands within a save
    for _ in $(seq 100000); do compgen -G "$t/crash/.tmp-step_*" >/dev/null && break; done
    kill -9 "$rank0"
    compgen -G "$t/crash/.tmp-step_*" >/dev/null && mid_save=$((mid_save + 1))
    wait $pid && pid="" || { failed=$((failed + 1)); pid=""; }
    # the next run's resume names the step it took: the newest folder left
    last=$(newest "$t/crash")
    [ "$round" -gt 1 ] && grep -q "resuming .*crash/step_0*$prev at step $prev " "$t/crash$round.log" &&
        resumed_newest=$((resumed_newest + 1))
    prev=$last
done
printf '{"step":99,"lo' >>"$t/crash/metrics.jsonl"                  # a line torn by a kill
crash_run --ckpt-dir "$t/crash" --resume auto --out "$t/crash.out" >"$t/crash4.log" 2>&1
grep -q "resuming .*crash/step_0*$prev at step $prev " "$t/crash4.log" && resumed_newest=$((resumed_newest + 1))
check "kill -9 of a rank during a save, 3 times: $mid_save kills left a save unfinished" [ $mid_save -ge 2 ]
check "... and mpirun failed each time ($failed of 3)" [ $failed -eq 3 ]
check "... and each rerun resumed the newest step folder left ($resumed_newest of 3)" [ $resumed_newest -eq 3 ]
check "... and the run ends with the undisturbed run's weights, byte for byte" \
    cmp -s "$t/calm.out/model.safetensors" "$t/crash.out/model.safetensors"
check "... and the torn metrics line stays on its own, the resumed ones whole" \
    sh -c "grep -qx '{\"step\":99,\"lo' '$t/crash/metrics.jsonl' && tail -n 1 '$t/crash/metrics.jsonl' | grep -q '^{\"step\":30,.*}\$'"

# Another world size: 2 ranks x 4 rows <-> 1 rank x 8 rows.
$MPI -np 2 "$TR" train --config configs/tiny.json --steps 20 --seq-len 64 --lr 3e-3 --warmup 3 --seed 5 --threads 1 \
    --precision fp32 --batch-rows 4 --ckpt-dir "$t/two" --ckpt-every 10 --out "$t/two.out" >"$t/two.log" 2>&1
train --batch-rows 8 --ckpt-dir "$t/one" --ckpt-every 10 --out "$t/one.out" >"$t/one.log" 2>&1
train --batch-rows 8 --ckpt-dir "$t/two_to_one" --resume "$t/two/step_00000010" --out "$t/two_to_one.out" >"$t/21.log" 2>&1
$MPI -np 2 "$TR" train --config configs/tiny.json --steps 20 --seq-len 64 --lr 3e-3 --warmup 3 --seed 5 --threads 1 \
    --precision fp32 --batch-rows 4 --ckpt-dir "$t/one_to_two" --resume "$t/one/step_00000010" --out "$t/one_to_two.out" >"$t/12.log" 2>&1
close() {
    $PY - "$1" "$2" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
import numpy as np
from st_io import st_read
a, _ = st_read(sys.argv[1] + "/model.safetensors"); b, _ = st_read(sys.argv[2] + "/model.safetensors")
err = max(float(np.linalg.norm(a[k].astype(np.float64) - b[k]) / np.linalg.norm(a[k])) for k in a)
print(f"  max relative difference {err:.3g}")
sys.exit(0 if err <= 1e-5 else 1)
PYEOF
}
# (A fresh run would end near the same weights: the checks first make sure
# each run did resume, at step 10 and from the other rank count.)
check "2 ranks resumed on 1: it resumed step 10 of 2 ranks and ran steps 11..20" \
    sh -c "grep -q 'resuming .*two/step_00000010 at step 10 (written by 2 ranks)' '$t/21.log' && grep -q 'steps 11\.\.20' '$t/21.log'"
check "... to the 2-rank run's weights" close "$t/two.out" "$t/two_to_one.out"
check "1 rank resumed on 2: it resumed step 10 of 1 rank and ran steps 11..20" \
    sh -c "grep -q 'resuming .*one/step_00000010 at step 10 (written by 1 ranks)' '$t/12.log' && grep -q 'steps 11\.\.20' '$t/12.log'"
check "... to the 1-rank run's weights" close "$t/one.out" "$t/one_to_two.out"

# The U-Net image path saves, resumes and exports as exactly: 12 steps
# straight, and 6 more from the step-6 folder, end byte for byte the same;
# the export of the last step holds those weights and the U-Net's config.
sed 's/}$/,"image_encoder":"unet","unet_channels":[16,32],"unet_groups":4}/' configs/tiny.json >"$t/unet.json"
unet_run() { "$TR" train --config "$t/unet.json" --steps 12 --seq-len 64 --batch-rows 2 --lr 3e-3 --warmup 3 --seed 5 \
                 --threads 1 "$@"; }
unet_run --ckpt-dir "$t/u1" --ckpt-every 6 --out "$t/u1.out" >"$t/u1.log" 2>&1
unet_run --ckpt-dir "$t/u2" --resume "$t/u1/step_00000006" --out "$t/u2.out" >"$t/u2.log" 2>&1
check "U-Net: resumed at step 6, the same weights at step 12 byte for byte" \
    sh -c "grep -q 'resuming .*u1/step_00000006 at step 6' '$t/u2.log' && cmp -s '$t/u1.out/model.safetensors' '$t/u2.out/model.safetensors'"
"$TR" export --ckpt "$t/u1/step_00000012" --out "$t/u1.export" >/dev/null 2>&1
check "U-Net: export writes the weights and the config" \
    sh -c "cmp -s '$t/u1.out/model.safetensors' '$t/u1.export/model.safetensors' && grep -q '\"unet\"' '$t/u1.export/config.json'"

# bf16 (the CPU's training default) resumes as exactly: 12 steps straight
# against 6 + 6, the resumed run in its checkpoint's precision without the
# flag; a checkpoint of float32 training resumes in float32 (as one from
# before the precision was recorded), and --precision overrides, saying so.
bf16_run() { "$TR" train --config configs/tiny.json --steps 12 --seq-len 64 --batch-rows 2 --lr 3e-3 --warmup 3 --seed 5 \
                 --threads 2 "$@"; }
bf16_run --ckpt-dir "$t/b1" --ckpt-every 6 --out "$t/b1.out" >"$t/b1.log" 2>&1
bf16_run --ckpt-dir "$t/b2" --resume "$t/b1/step_00000006" --out "$t/b2.out" >"$t/b2.log" 2>&1
check "bf16: resumed at step 6, the same weights at step 12 byte for byte" \
    sh -c "grep -q 'cpu bf16' '$t/b1.log' && grep -q 'resuming .*b1/step_00000006 at step 6' '$t/b2.log' &&
           grep -q 'cpu bf16' '$t/b2.log' && cmp -s '$t/b1.out/model.safetensors' '$t/b2.out/model.safetensors'"
bf16_run --ckpt-dir "$t/f1" --ckpt-every 6 --precision fp32 >"$t/f1.log" 2>&1
bf16_run --ckpt-dir "$t/f2" --resume "$t/f1/step_00000006" >"$t/f2.log" 2>&1
check "a float32 checkpoint resumes in float32" grep -q 'cpu fp32' "$t/f2.log"
bf16_run --ckpt-dir "$t/f3" --resume "$t/f1/step_00000006" --precision bf16 >"$t/f3.log" 2>&1
check "... and --precision bf16 switches it, saying so" \
    sh -c "grep -q 'precision: bf16 from now on (the checkpoint was trained in fp32)' '$t/f3.log' && grep -q 'cpu bf16' '$t/f3.log'"

# SIGTERM: the step finishes, a checkpoint is written, exit 0.
"$TR" train --config configs/tiny.json --steps 100000 --seq-len 64 --batch-rows 4 --threads 1 \
    --ckpt-dir "$t/term" --log-every 1 >"$t/term.log" 2>&1 &
pid=$!
for _ in $(seq 400); do grep -q '^step *3/' "$t/term.log" && break; sleep 0.02; done
kill -TERM $pid; wait $pid; rc=$?; pid=""
check "SIGTERM: exit 0 ($rc)" [ $rc -eq 0 ]
check "SIGTERM: the step is saved" sh -c "grep -q 'stopped by a signal after step' '$t/term.log' && [ -e '$t/term/latest' ]"

# Signals land anywhere in a step, also inside oneDNN's GEMM kernels (which
# once corrupted the heap in 4 of 10 such stops): stop 6 runs, all exit 0.
codes=""
for i in 1 2 3 4 5 6; do
    "$TR" train --config configs/tiny.json --steps 100000 --seq-len 64 --batch-rows 4 --threads 1 --log-every 1 \
        >"$t/sig$i.log" 2>&1 &
    pid=$!
    for _ in $(seq 400); do grep -q "^step *$((2 + i))/" "$t/sig$i.log" && break; sleep 0.01; done
    kill -$([ $((i % 2)) -eq 0 ] && echo TERM || echo USR1) $pid; wait $pid; codes="$codes$?"; pid=""
done
check "6 runs stopped by SIGTERM or SIGUSR1 mid-step all exit 0 ($codes)" [ "$codes" = 000000 ]

# Forged checkpoints whose file checksums still match: the index is covered
# by its own (index.crc32c), and a folder that verifies but cannot be loaded
# (its optimizer parts off by one, or its state and index naming different
# steps) is skipped by auto as a damaged one is. Each copy of the run's
# step 20 is forged one way; auto must resume at 15 and name the reason.
forge() {   # forge NAME HOW: a copy of the run, its step 20 forged
    rm -rf "$t/$1"; cp -r "$t/full" "$t/$1"
    $PY - "$t/$1/step_00000020" "$2" <<'PYEOF'
import json, os, sys
sys.path.insert(0, "tests")
from crc32c import crc32c
d, how = sys.argv[1], sys.argv[2]
index = json.load(open(d + "/model.safetensors.index.json"))
def rewrite(name, text, listed=True):
    data = text.encode()
    open(os.path.join(d, name), "wb").write(data)
    if listed: index["files"][name] = {"bytes": len(data), "crc32c": "%08x" % crc32c(data)}
if how == "step":          # the index alone edited: step 20 -> 21
    index["metadata"]["step"] = 21
    open(d + "/model.safetensors.index.json", "w").write(json.dumps(index))
    sys.exit(0)
if how == "parts":         # an optimizer part's offset off by one
    index["optimizer_parts"][0]["offset"] += 1
if how in ("state", "precision"):   # trainer_state.json says another step, or no precision there is
    state = json.load(open(d + "/trainer_state.json"))
    state.update({"step": 19} if how == "state" else {"precision": "fp16"})
    rewrite("trainer_state.json", json.dumps(state))
text = json.dumps(index)
open(d + "/model.safetensors.index.json", "w").write(text)
open(d + "/index.crc32c", "w").write("%08x %d\n" % (crc32c(text.encode()), len(text.encode())))
PYEOF
}
for how in step:index.crc32c parts:"range. does not match the index" state:"trainer_state.json: step 19, but the index says 20"; do
    forge "forged_${how%%:*}" "${how%%:*}"
    train --batch-rows 4 --ckpt-dir "$t/forged_${how%%:*}" --resume auto >"$t/forged.log" 2>&1
    check "forged (${how%%:*}): --resume auto skips step 20, naming ${how#*:}, and resumes at 15" \
        sh -c "grep -q 'skipping .*step_00000020: .*${how#*:}' '$t/forged.log' &&
               grep -q 'resuming .*step_00000015 at step 15' '$t/forged.log'"
done

forge forged_precision precision
bad "--resume of a checkpoint whose trainer_state.json names an unknown precision" \
    'trainer_state.json: precision: expected "fp32" or "bf16"' \
    train --batch-rows 4 --ckpt-dir "$t/forged_precision" --resume "$t/forged_precision/step_00000020"

# A damaged newest checkpoint: auto falls back, an explicit path fails.
printf 'X' | dd of="$t/full/step_00000020/config.json" bs=1 seek=3 conv=notrunc 2>/dev/null
train --batch-rows 4 --ckpt-dir "$t/full" --resume auto >"$t/fb.log" 2>&1
check "--resume auto skips a damaged checkpoint for the one before" grep -q 'resuming .*step_00000015 at step 15' "$t/fb.log"
printf 'X' | dd of="$t/full/step_00000020/config.json" bs=1 seek=3 conv=notrunc 2>/dev/null   # rewritten by the run above
train --batch-rows 4 --ckpt-dir "$t/full" --resume "$t/full/step_00000020" >/dev/null 2>"$t/err"
rc=$?
check "--resume of a damaged checkpoint exits 2 ($rc) naming the file" sh -c "[ $rc -eq 2 ] && grep -q 'config.json' '$t/err'"


train --batch-rows 4 --ckpt-dir /etc/hostname/ckpt >/dev/null 2>"$t/err"
rc=$?
check "an unusable --ckpt-dir stops the run with a non-zero exit ($rc)" [ $rc -ne 0 ]
[ $fails -eq 0 ]
