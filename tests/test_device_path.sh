#!/usr/bin/env bash
# test_device_path.sh - the trainer's device code path (what --device cuda
# runs besides the kernels: parameter copies, plan mirror, weights, gradients
# and Adam moments copied for checkpoints and --grads, resume) on the CPU's
# kernels (--device cpu-device), against --device cpu: `trainer loss --grads`,
# checkpoints of a 6-step run (weights and optimizer files) and a run resumed
# from its step-3 checkpoint are bitwise the same.
set -u
BIN=${BIN:-bin}
source tests/check.sh
[ -x "$BIN/trainer" ] || { echo "FAIL device_path: $BIN/trainer not found"; exit 1; }
TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
export OMP_NUM_THREADS=2

"$TR" init --config configs/tiny.json --out "$t/ck" --seed 4 >/dev/null
/usr/bin/python3 tests/torch_ref.py make-batch --config configs/tiny.json --out "$t/b.safetensors" --rows 2 \
    --seq-len 64 --seed 5 >/dev/null
for dev in cpu cpu-device; do
    "$TR" loss --ckpt "$t/ck" --batch "$t/b.safetensors" --grads "$t/g_$dev.safetensors" --device "$dev" >"$t/loss_$dev"
done
check "trainer loss --grads: the same loss and gradient bits on the device path" \
    cmp -s "$t/g_cpu.safetensors" "$t/g_cpu-device.safetensors"
check "trainer loss: the same JSON line" cmp -s "$t/loss_cpu" "$t/loss_cpu-device"

train() { "$TR" train --config configs/tiny.json --seq-len 64 --batch-rows 2 --lr 3e-3 --warmup 2 --seed 3 \
              --log-every 1 --ckpt-every 3 "$@"; }
train --steps 6 --device cpu --ckpt-dir "$t/a" >"$t/a.log" 2>&1 || fail "cpu run"
train --steps 6 --device cpu-device --ckpt-dir "$t/b" >"$t/b.log" 2>&1 || fail "cpu-device run"
train --steps 3 --device cpu-device --ckpt-dir "$t/c" >"$t/c1.log" 2>&1 &&
    train --steps 6 --device cpu-device --ckpt-dir "$t/c" --resume auto >"$t/c2.log" 2>&1 || fail "cpu-device resume"
check "cpu-device: the second run resumed step 3" grep -q 'resuming .*c/step_00000003 at step 3' "$t/c2.log"
files=0 differ=0
for s in step_00000003 step_00000006; do
    for f in "$t/a/$s"/*.safetensors; do
        files=$((files + 1))
        for other in b c; do cmp -s "$f" "$t/$other/$s/$(basename "$f")" || differ=$((differ + 1)); done
    done
done
if [ "$files" -ge 4 ] && [ "$differ" -eq 0 ]; then
    ok "checkpoints at steps 3 and 6 ($files weight and optimizer files) bitwise equal, straight and resumed"
else
    fail "checkpoints: $differ of $files files differ"
fi
losses() { grep -o '^step *[0-9]*/[0-9]*  loss [0-9.]*' "$@"; }
check "the same per-step losses" diff <(losses "$t/a.log") <(losses "$t/b.log")
[ "$fails" -eq 0 ]
