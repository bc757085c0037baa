#!/usr/bin/env bash
# test_checkpoint.sh - checkpoints across processes: a 2-rank save under
# mpirun read back by 1 and by 2 ranks (the optimizer state resharded), a
# 1-rank save read by 2 ranks (the EMA shards whole), and `trainer export`
# to an inference folder that `trainer loss` loads with the same loss (F32
# exactly, BF16 close), of the weights with --weights raw, of the EMA by default.
# The helper is bin/tests/test_checkpoint (see the top of its source).
set -u
BIN=${BIN:-bin}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
fails=0
ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }
H=$BIN/tests/test_checkpoint
TR=$BIN/trainer
[ -x "$H" ] && [ -x "$TR" ] || { echo "FAIL checkpoint: $H or $TR not found"; exit 1; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
# (Open MPI's own allocations outlive MPI_Finalize: LeakSanitizer is off for
# the ranks, as in test_vae_service.sh.)
MPIRUN="mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS -x OMP_WAIT_POLICY
        -x ASAN_OPTIONS=detect_leaks=0 -np 2"

$MPIRUN "$H" save "$t/two" 10 3 >"$t/log" 2>&1
check "mpirun -np 2 saves a checkpoint" [ $? -eq 0 ]
s="$t/two/step_00000010"
check "... with one weight shard and one optimizer part per rank" \
    [ -f "$s/model-00001-of-00002.safetensors" -a -f "$s/model-00002-of-00002.safetensors" \
      -a -f "$s/optimizer-00001-of-00002.safetensors" -a -f "$s/optimizer-00002-of-00002.safetensors" ]
check "... and both shards in the weight_map" \
    [ "$(grep -c '"model-0000[12]-of-00002.safetensors"' "$s/model.safetensors.index.json")" -gt 2 ]
check "... and two EMA shards in the ema_map" \
    [ -f "$s/ema-00001-of-00002.safetensors" -a -f "$s/ema-00002-of-00002.safetensors" -a \
      "$(grep -c '"ema-0000[12]-of-00002.safetensors"' "$s/model.safetensors.index.json")" -gt 2 ]
# One rank's disk full: every rank fails, nothing of step 20 remains.
$MPIRUN "$H" save "$t/two" 20 3 1 >"$t/fail.log" 2>&1
check "a 2-rank save where rank 1 cannot write fails" [ $? -ne 0 ]
both_say() { grep -q 'rank 1: .*tmp-step_00000020/model-00002-of-00002.safetensors.*File too large' "$t/fail.log" &&
             grep -q 'rank 0: .*another rank failed' "$t/fail.log"; }
check "... rank 1 names its file, rank 0 says another rank failed" both_say
check "... no step_00000020 or temp folder, latest still step_00000010" \
    [ ! -e "$t/two/step_00000020" -a ! -e "$t/two/.tmp-step_00000020" -a "$(readlink "$t/two/latest")" = step_00000010 ]
"$H" load "$t/two" 3 2>>"$t/log"
check "2 ranks -> 1: weights, EMA and the whole optimizer state are exact" [ $? -eq 0 ]
$MPIRUN "$H" load "$t/two" 3 >>"$t/log" 2>&1
check "2 ranks -> 2: each rank's part is exact" [ $? -eq 0 ]
"$H" save "$t/one" 10 3 2>>"$t/log"
$MPIRUN "$H" load "$t/one" 3 >>"$t/log" 2>&1
check "1 rank -> 2: each rank gets its part of the state" [ $? -eq 0 ]
"$H" load "$t/one" 4 2>/dev/null
check "... and the check itself fails on other weights" [ $? -ne 0 ]

# export: the consolidated folder gives the loss of the original weights
# (the checkpoint's EMA holds made-up values: raw weights asked for).
"$TR" init --config configs/tiny.json --seed 3 --out "$t/ref" >/dev/null
"$H" batch "$t/batch.safetensors" 5
loss() { "$TR" loss --ckpt "$1" --batch "$t/batch.safetensors" 2>&1; }
ref=$(loss "$t/ref")
"$TR" export --ckpt "$s" --out "$t/e32" --weights raw >/dev/null
check "export --dtype f32 writes config.json and model.safetensors" [ -f "$t/e32/config.json" -a -f "$t/e32/model.safetensors" ]
check "... whose loss is exactly the original's" [ "$(loss "$t/e32")" = "$ref" ]
check "a step folder itself loads in trainer loss with the same loss" [ "$(loss "$s")" = "$ref" ]
"$TR" export --ckpt "$s" --out "$t/e16" --dtype bf16 --weights raw >/dev/null
check "export --dtype bf16 writes BF16 tensors, about half the bytes" \
    python3 -c "import sys,os; a,b=(os.path.getsize(f) for f in sys.argv[1:]); h=open(sys.argv[2],'rb').read(4096); sys.exit(not (b'\"BF16\"' in h and b'F32' not in h and 1.8 < a/b <= 2))" \
    "$t/e32/model.safetensors" "$t/e16/model.safetensors"
bf=$(loss "$t/e16")
check "... and its loss is within 1% of the original ($bf vs $ref)" \
    python3 -c "import json,sys; a=json.loads(sys.argv[1])['loss']; b=json.loads(sys.argv[2])['loss']; sys.exit(not (a != b and abs(a-b) <= 0.01*abs(b)))" "$bf" "$ref"

check "... bitwise PyTorch's .to(torch.bfloat16), and weight_map and total_size match the shards" \
    /usr/bin/python3 - "$t/e32" "$t/e16" "$s" <<'PYEOF'
import json, sys, torch
sys.path.insert(0, "tests")
from st_io import st_read
a, _ = st_read(sys.argv[1] + "/model.safetensors")
b, _ = st_read(sys.argv[2] + "/model.safetensors")
ok = a.keys() == b.keys() and len(a) > 0
for k in a:
    ok &= torch.equal(torch.from_numpy(a[k]).to(torch.bfloat16).float(), torch.from_numpy(b[k]))
idx = json.load(open(sys.argv[3] + "/model.safetensors.index.json"))
wmap, total = idx["weight_map"], 0
for f in set(wmap.values()):
    t, _ = st_read(sys.argv[3] + "/" + f)
    ok &= set(t) == {k for k, v in wmap.items() if v == f}
    total += sum(x.nbytes for x in t.values())
ok &= total == idx["metadata"]["total_size"] and set(wmap) == set(a)
sys.exit(0 if ok else 1)
PYEOF

said=$("$TR" export --ckpt "$s" --out "$t/ema")
check "export without --weights writes the EMA ($said): the EMA shards' tensors" \
    /usr/bin/python3 - "$t/ema" "$s" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
import numpy as np
from st_io import st_read
out, _ = st_read(sys.argv[1] + "/model.safetensors")
ema = {}
for k in (1, 2):
    ema.update(st_read(f"{sys.argv[2]}/ema-0000{k}-of-00002.safetensors")[0])
sys.exit(0 if out.keys() == ema.keys() and all(np.array_equal(out[k], ema[k]) for k in out) else 1)
PYEOF

# A damaged step folder is refused with exit 2 and one line naming the file.
printf 'x' | dd of="$s/optimizer-00002-of-00002.safetensors" bs=1 seek=300 conv=notrunc 2>/dev/null
"$TR" export --ckpt "$s" --out "$t/bad" >/dev/null 2>"$t/err"
rc=$?
check "export of a corrupt checkpoint exits 2 ($rc)" [ $rc -eq 2 ]
check "... with one line naming the file" \
    [ "$(wc -l <"$t/err")" -eq 1 -a -n "$(grep 'optimizer-00002-of-00002.safetensors: CRC32C' "$t/err")" ]
"$TR" export --ckpt "$s" --out "$t/bad" --dtype f16 >/dev/null 2>"$t/err"
check "an unknown --dtype exits 2" [ $? -eq 2 ]
[ "$fails" -eq 0 ] || tail -n 20 "$t/log"
exit 0
