#!/usr/bin/env bash
# test_precision_curve.sh - 300 training steps with --precision bf16 track
# the float32 run's loss curve, for the linear and the U-Net image path:
# the same seed, rows and schedule in both precisions, and every 30-step
# window's mean loss within 3% of float32's.
#
# Why 3%: one bf16 product is off by at most u = 2^-8 (0.4%) relative, and
# the per-step differences do not average out but steer the run onto a
# nearby trajectory. Measured over the 10 windows: at most 0.53% apart
# (linear) and 1.37% (U-Net, whose convolutions stay float32 but whose
# transformer is larger relative to the data), growing towards the end. A
# bf16 path that rounded wrongly (a transposed operand, a lost bias, an
# unrounded gradient written back as bf16 bits) is off by far more from the
# first window on.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
. "$(dirname "$0")/check.sh"
TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0

sed 's/}$/,"image_encoder":"unet","unet_channels":[16,32],"unet_groups":4}/' configs/tiny.json >"$t/unet.json"
for model in linear unet; do
    config=configs/tiny.json
    [ "$model" = unet ] && config="$t/unet.json"
    for p in fp32 bf16; do
        if "$TR" train --config "$config" --steps 300 --seq-len 64 --batch-rows 4 --lr 3e-3 --warmup 10 --seed 5 \
               --log-every 1 --threads 1 --precision "$p" >"$t/$model-$p.log" 2>&1; then ok "$model $p: 300 steps"
        else fail "$model $p: the run failed"; tail -n 5 "$t/$model-$p.log"; fi
    done
    $PY - "$t/$model-fp32.log" "$t/$model-bf16.log" "$model" <<'PYEOF'
import re, sys
ref_log, bf16_log, model = sys.argv[1:]
def losses(path):
    return [float(m.group(1)) for m in re.finditer(r"^step +\d+/\d+ +loss (\S+)", open(path).read(), re.M)]
a, b = losses(ref_log), losses(bf16_log)
if len(a) != 300 or len(b) != 300:
    print(f"FAIL {model}: {len(a)} and {len(b)} loss lines, want 300"); sys.exit(1)
windows = [(sum(a[w:w + 30]) / 30, sum(b[w:w + 30]) / 30) for w in range(0, 300, 30)]
worst = max(abs(mb - ma) / ma for ma, mb in windows)
verdict = "ok" if worst <= 0.03 else "FAIL"
print(f"{verdict} {model}: bf16's 30-step mean losses within 3% of float32's (worst {100 * worst:.2f}%)")
fell = windows[-1][0] < windows[0][0] / 3
print(f"{'ok' if fell else 'FAIL'} {model}: the runs learned (mean loss {windows[0][0]:.3f} -> {windows[-1][0]:.3f})")
print(f"{'ok' if a != b else 'FAIL'} {model}: bf16's curve is not float32's (the products were rounded)")
PYEOF
done
[ "$fails" -eq 0 ]
