#!/usr/bin/env bash
# test_ema.sh - `trainer train --ema`: the EMA saved at every step equals
# the average recomputed (float32, numpy) from the weights saved at every
# step; a run resumed from step 3 (with and without --ema on the resume)
# ends with EMA files bitwise equal to a straight 6-step run on 1 rank and on
# 2 ranks (ZeRO-1, EMA shards cut at tensors), on the device code path too
# (--device cpu-device), and a 2-rank checkpoint resumed on 1 rank ends
# within 1e-5 of the 1-rank run (as the weights do); a checkpoint without an
# EMA resumed with --ema starts it at the next step's weights; `export`
# writes the EMA by default and the weights with --weights raw, `loss` on
# the step folder reads the weights; exit 2 with one line for --ema 0, 1.5,
# x, --weights ema without an EMA, an unknown --weights; a damaged EMA file
# fails verification (export exits 2 naming it, --resume auto falls back).
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
. "$(dirname "$0")/check.sh"
TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
export OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS -x ASAN_OPTIONS"
base=(train --config configs/tiny.json --steps 6 --seq-len 64 --lr 3e-3 --warmup 3 --seed 5 --threads 1 --precision fp32)
train() { "$TR" "${base[@]}" --ema 0.9 "$@"; }
same_files() {      # same_files DIR_A DIR_B GLOB N: N files, each byte-identical in both
    local n=0 f
    for f in "$1"/$3; do
        [ -f "$f" ] && cmp -s "$f" "$2/$(basename "$f")" || return 1
        n=$((n + 1))
    done
    [ $n -eq "$4" ]
}

for v in 0 1.5 x; do bad "--ema $v" "--ema $v" "$TR" "${base[@]}" --ema "$v"; done

# One rank, a checkpoint after every step: the EMA against the weights.
train --batch-rows 8 --ckpt-dir "$t/one" --ckpt-every 1 --keep 0 >"$t/one.log" 2>&1
check "a 6-step run with --ema 0.9 saves ema-00001-of-00001.safetensors at every step" \
    sh -c "grep -q 'EMA decay 0.9,' '$t/one.log' && ls '$t'/one/step_0000000[1-6]/ema-00001-of-00001.safetensors >/dev/null"
check "... and ema.decay and ema.updates in trainer_state.json" $PY - "$t/one/step_00000006/trainer_state.json" <<'PYEOF'
import json, sys
e = json.load(open(sys.argv[1]))["ema"]
sys.exit(0 if abs(e["decay"] - 0.9) < 1e-7 and e["updates"] == 6 else 1)
PYEOF
check "the EMA of every step is the weights' average with d_t = min(0.9, (1+t)/(10+t)), d_0 = 0" \
    $PY - "$t/one" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
import numpy as np
from st_io import st_read
d = sys.argv[1]
f32 = np.float32
worst = 0.0
for step in range(1, 7):
    w = st_read(f"{d}/step_{step:08d}/model-00001-of-00001.safetensors")[0]
    e = st_read(f"{d}/step_{step:08d}/ema-00001-of-00001.safetensors")[0]
    if step == 1:
        want = {k: v.copy() for k, v in w.items()}
    else:
        t = step - 1
        dt = f32(min(0.9, (1 + t) / (10 + t)) if (1 + t) / (10 + t) < f32(0.9) else f32(0.9))
        want = {k: want[k] + (f32(1) - dt) * (w[k] - want[k]) for k in w}
    worst = max(worst, max(float(np.max(np.abs(e[k] - want[k]) / (1 + np.abs(want[k])))) for k in w))
print(f"  largest difference {worst:.3g}")
last_w = st_read(f"{d}/step_00000006/model-00001-of-00001.safetensors")[0]
moved = max(float(np.max(np.abs(want[k] - last_w[k]))) for k in want)
sys.exit(0 if worst <= 1e-6 and moved > 1e-4 else 1)
PYEOF

# Exact resume: from step 3 to 6, on 1 rank without --ema on the resume (the
# checkpoint's EMA and decay go on), on 2 ranks with it.
"$TR" "${base[@]}" --batch-rows 8 --ckpt-dir "$t/one_r" --resume "$t/one/step_00000003" >"$t/one_r.log" 2>&1
check "1 rank stopped at step 3 and resumed (without --ema): the EMA file of step 6 is bitwise the straight run's" \
    same_files "$t/one/step_00000006" "$t/one_r/step_00000006" "ema-*.safetensors" 1
train --batch-rows 8 --device cpu-device --ckpt-dir "$t/dev" --ckpt-every 3 >"$t/dev.log" 2>&1
check "--device cpu-device (the GPU's code path on CPU kernels): bitwise the same EMA" \
    same_files "$t/one/step_00000006" "$t/dev/step_00000006" "ema-*.safetensors" 1
$MPI -np 2 "$TR" "${base[@]}" --ema 0.9 --batch-rows 4 --ckpt-dir "$t/two" --ckpt-every 3 >"$t/two.log" 2>&1
$MPI -np 2 "$TR" "${base[@]}" --ema 0.9 --batch-rows 4 --ckpt-dir "$t/two_r" --resume "$t/two/step_00000003" \
    >"$t/two_r.log" 2>&1
check "2 ranks (ZeRO-1) write two EMA shards" \
    sh -c "grep -q 'ZeRO-1 on, EMA decay 0.9' '$t/two.log' && [ -f '$t/two/step_00000006/ema-00002-of-00002.safetensors' ]"
check "2 ranks stopped at step 3 and resumed: both EMA files of step 6 bitwise the straight run's" \
    same_files "$t/two/step_00000006" "$t/two_r/step_00000006" "ema-*.safetensors" 2
train --batch-rows 8 --ckpt-dir "$t/two_one" --resume "$t/two/step_00000003" >"$t/two_one.log" 2>&1
check "2 ranks resumed on 1: the EMA of the 1-rank run within 1e-5 (as the weights)" \
    $PY - "$t/one/step_00000006" "$t/two_one/step_00000006" "$t/two/step_00000006" <<'PYEOF'
import glob, sys
sys.path.insert(0, "tests")
import numpy as np
from st_io import st_read
def ema(d):
    out = {}
    for f in sorted(glob.glob(d + "/ema-*.safetensors")):
        out.update(st_read(f)[0])
    return out
a, b, c = (ema(d) for d in sys.argv[1:])
err = max(float(np.linalg.norm(a[k].astype(np.float64) - x[k]) / np.linalg.norm(a[k])) for x in (b, c) for k in a)
print(f"  largest relative difference {err:.3g}")
sys.exit(0 if a.keys() == b.keys() == c.keys() and err <= 1e-5 else 1)
PYEOF

# A checkpoint without an EMA, resumed with --ema: the EMA starts at the
# weights of the first step after it.
"$TR" "${base[@]}" --batch-rows 8 --ckpt-dir "$t/late" --ckpt-every 3 >/dev/null 2>&1
rm -rf "$t/late/step_00000006"
"$TR" "${base[@]}" --batch-rows 8 --ckpt-dir "$t/late" --ckpt-every 1 --keep 0 --resume auto --ema 0.99 >"$t/late.log" 2>&1
started_late() {
    grep -q 'holds none; it starts at the weights of step 4' "$t/late.log" &&
        cmp -s "$t/late/step_00000004/model-00001-of-00001.safetensors" "$t/late/step_00000004/ema-00001-of-00001.safetensors" &&
        grep -q '"updates":.1$' "$t/late/step_00000004/trainer_state.json"
}
check "a checkpoint without an EMA resumed with --ema: at step 4 the EMA is that step's weights (1 update)" started_late

# Readers: export and loss.
s="$t/one/step_00000006"
"$TR" export --ckpt "$s" --out "$t/x_ema" >"$t/x.log" && "$TR" export --ckpt "$s" --out "$t/x_raw" --weights raw >>"$t/x.log"
check "export writes the EMA by default and the weights with --weights raw" \
    $PY - "$t/x_ema/model.safetensors" "$s/ema-00001-of-00001.safetensors" "$t/x_raw/model.safetensors" \
    "$s/model-00001-of-00001.safetensors" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
import numpy as np
from st_io import st_read
x_ema, ema, x_raw, raw = (st_read(f)[0] for f in sys.argv[1:])
same = lambda a, b: a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
sys.exit(0 if same(x_ema, ema) and same(x_raw, raw) and not same(ema, raw) else 1)
PYEOF
"$TR" export --ckpt "$t/late/step_00000003" --out "$t/x_none" >"$t/none.log"
check "... export of a checkpoint without an EMA writes its weights" grep -q 'raw weights' "$t/none.log"
bad "export --weights ema of a checkpoint without an EMA" "holds no EMA" \
    "$TR" export --ckpt "$t/late/step_00000003" --out "$t/x_bad" --weights ema
bad "export --weights with an unknown value" "--weights last: expected ema or raw" \
    "$TR" export --ckpt "$s" --out "$t/x_bad" --weights last
"$BIN/tests/test_checkpoint" batch "$t/batch.safetensors" 5
loss() { "$TR" loss --ckpt "$1" --batch "$t/batch.safetensors"; }
reads_raw() { [ "$(loss "$s")" = "$(loss "$t/x_raw")" ] && [ "$(loss "$s")" != "$(loss "$t/x_ema")" ]; }
check "loss on a step folder with an EMA reads the weights: the loss of the raw export, not the EMA's" reads_raw

# A damaged EMA file.
printf 'x' | dd of="$t/one/step_00000006/ema-00001-of-00001.safetensors" bs=1 seek=2000 conv=notrunc 2>/dev/null
bad "export of a checkpoint with a damaged EMA file" "ema-00001-of-00001.safetensors: CRC32C" \
    "$TR" export --ckpt "$t/one/step_00000006" --out "$t/x_bad" --weights raw
train --batch-rows 8 --ckpt-dir "$t/one" --resume auto >"$t/fb.log" 2>&1
fell_back() {
    grep -q 'skipping .*step_00000006: .*ema-00001-of-00001.safetensors: CRC32C' "$t/fb.log" &&
        grep -q 'resuming .*step_00000005 at step 5' "$t/fb.log"
}
check "--resume auto skips it for the step before, naming the file" fell_back
[ $fails -eq 0 ]
