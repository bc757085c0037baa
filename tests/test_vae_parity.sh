#!/usr/bin/env bash
# test_vae_parity.sh - the C VAE (bin/vae_service) against the independent
# PyTorch AutoencoderKL of tests/vae_ref.py, on random weights (GroupNorm
# affines and biases randomized too): every element of the encoder mean and
# logvar and the decoded image within 3e-5 + 1e-5 |ref|, the training loss (L2
# and L1) within 1e-5 relative, and every element of the gradient of every
# parameter within 5e-7 + 1e-5 |ref| (tests/st_io.py compare; small entries
# keep their sign). A VAE written by the PyTorch script loads into vae_service
# by name.
# Why those numbers: the C side works in float32, so its errors are roundings
# of sums of terms as large as a tensor's larger entries (values ~1.6,
# gradients ~0.3), absolute rather than relative to the element: a fixed atol.
# A per-tensor c * max|ref| cannot hold: each to_k.bias gradient is
# mathematically 0 (softmax ignores a per-query constant), ~1e-21 in the
# reference. Measured worst element, |diff| over its allowance, over both
# cases and both losses: forward 0.084 (AVX-512, 2 threads) and 0.22
# (1 thread, ONEDNN_MAX_CPU_ISA=AVX2); gradients 0.20 and 0.19: 4.5-5x margin
# or more. The old bound, max|diff| <= 1e-4 max|ref| per tensor, let entries
# below 1e-4 of the largest be wrong.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
REF=tests/vae_ref.py
fails=0
ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
[ -x "$BIN/vae_service" ] || { echo "FAIL vae_parity: $BIN/vae_service not found"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# compare LABEL ARGS...: the reference's element-wise comparison, its lines
# labelled; a comparison that fails without a FAIL line (an exception) fails.
compare() {
    local label=$1 rc n; shift
    $PY $REF compare "$@" >"$tmp/cmp"
    rc=$?
    sed "s/^\(ok\|FAIL\|#\) /\1 $label /" "$tmp/cmp"
    n=$(grep -c '^FAIL' "$tmp/cmp")
    fails=$((fails + n))
    [ $rc -eq 0 ] || [ "$n" -gt 0 ] || fail "$label: the comparison exited $rc"
    grep -q '^ok' "$tmp/cmp" || [ "$n" -gt 0 ] || fail "$label: the comparison checked nothing"
}

# case NAME CONFIG SIZE IMAGE_SEED
run_case() {
    local name=$1 cfg=$2 size=$3 seed=$4 d="$tmp/$1"
    mkdir -p "$d"
    $PY $REF init --config "$cfg" --out "$d/vae" --seed 1 --random-affine >/dev/null || { fail "$name init"; return; }
    $PY $REF make-images --vae "$d/vae" --n 2 --size "$size" --seed "$seed" --out "$d/in.st" >/dev/null ||
        { fail "$name: the reference's make-images failed"; return; }
    if "$BIN/vae_service" forward --vae "$d/vae" --images "$d/in.st" --out "$d/c.st"; then
        ok "$name: vae_service loads the PyTorch-written VAE and runs forward"
    else
        fail "$name: vae_service forward failed"; return
    fi
    if $PY $REF forward --vae "$d/vae" --images "$d/in.st" --out "$d/t.st" >/dev/null; then
        compare "$name forward" --ref "$d/t.st" --test "$d/c.st" --rtol 1e-5 --atol 3e-5
    else
        fail "$name forward: the reference's forward failed"
    fi
    for loss in l2 l1; do
        lc=$("$BIN/vae_service" grads --vae "$d/vae" --images "$d/in.st" --out "$d/gc.st" --kl-weight 0.5 --loss $loss)
        if ! lt=$($PY $REF train-step --vae "$d/vae" --images "$d/in.st" --out "$d/gt.st" --kl-weight 0.5 --loss $loss); then
            fail "$name $loss: the reference's train-step failed"; continue
        fi
        if $PY - "$lc" "$lt" $loss <<'PYEOF'
import json, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
bad = [k for k in ("loss", "rec_loss", "kl") if abs(c[k] - t[k]) > 1e-5 * abs(t[k])]
# The L1 gradient is sign(recon - x): a residual near zero would let rounding
# flip it, and the gradients could not be compared. The inputs are chosen so
# that none is.
if sys.argv[3] == "l1" and t["min_abs_residual"] < 1e-5:
    bad.append("min_abs_residual")
sys.exit(1 if bad else 0)
PYEOF
        then ok "$name $loss training loss matches ($lc)"; else fail "$name $loss training loss: C $lc, torch $lt"; fi
        compare "$name $loss grad" --ref "$d/gt.st" --test "$d/gc.st" --rtol 1e-5 --atol 5e-7
    done
}

run_case tiny configs/vae-tiny.json 16 2
run_case small configs/vae-small.json 32 3
[ "$fails" -eq 0 ]
