#!/usr/bin/env bash
# test_diverge.sh - a run whose numbers go non-finite (--lr 1e4) loses
# nothing it had: each step with a non-finite loss or gradient norm has its
# update skipped and says so, the run stops with exit 1 and one error line
# after --max-bad-steps of them in a row, every checkpoint left behind
# (with --keep 1, the one retention kept) holds finite tensors only, and
# metrics.jsonl stays strict JSON, a non-finite figure written as null.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
. "$(dirname "$0")/check.sh"
export OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

"$BIN/trainer" train --model configs/tiny.json --lr 1e4 --steps 40 --ckpt-dir "$t/ck" --ckpt-every 1 --keep 1 \
    --log-every 1 --max-bad-steps 3 >"$t/out" 2>"$t/err"
rc=$?
check "a diverging run stops with exit 1 ($rc)" [ $rc -eq 1 ]
check "... after 3 skipped updates in a row, saying so" \
    grep -q '^error: trainer train: 3 steps in a row had a non-finite loss or gradient norm' "$t/err"
check "... each skipped update named" grep -q 'not finite, update skipped (3 in a row of 3)' "$t/err"
check "... before step 40" sh -c "! grep -q '^step   40/40' '$t/out'"
check "the checkpoint that retention kept holds finite tensors only" $PY - "$t/ck" <<'PYEOF'
import glob, os, sys
import numpy as np
sys.path.insert(0, "tests")
from st_io import st_read
steps = sorted(glob.glob(sys.argv[1] + "/step_*"))
files = [f for s in steps for f in glob.glob(s + "/*.safetensors")]
ok = len(steps) == 1 and files and all(np.isfinite(a).all() for f in files for a in st_read(f)[0].values())
sys.exit(0 if ok else 1)
PYEOF
check "metrics.jsonl is strict JSON, with null for the non-finite figures" $PY - "$t/ck/metrics.jsonl" <<'PYEOF'
import json, sys
def refuse(name): raise ValueError(name)
rows = [json.loads(line, parse_constant=refuse) for line in open(sys.argv[1])]
sys.exit(0 if rows and any(r["grad_norm"] is None and r.get("skipped") for r in rows) else 1)
PYEOF

# The same finite run is untouched by the check: no step skipped.
"$BIN/trainer" train --model configs/tiny.json --steps 5 --ckpt-dir "$t/calm" --log-every 1 >"$t/calm.out" 2>&1
check "a finite run skips nothing ($?)" sh -c "! grep -q 'skipped' '$t/calm.out' '$t/calm/metrics.jsonl'"
[ $fails -eq 0 ]
