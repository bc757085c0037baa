#!/usr/bin/env bash
# gpu-check.sh - the CUDA backend's check on one NVIDIA H100/H200, as one run
# under one deadline (DEADLINE seconds, default 540), each stage capped at
# the time left, the cheapest and most telling stages first:
#   kernels     bin/tests/cuda/test_*: every CUDA kernel against the CPU
#               backend (attention up to 16 heads of 64 at L = 2048 with
#               256-patch images), the model's loss and gradients, the KV
#               cache attention and generate()
#   parity      `trainer loss --grads` cuda against cpu on the 6-layer
#               (configs/bench.json), the same with the U-Net image path
#               (UNET_CFG: unet_channels [16, 32], cuDNN convolutions,
#               GroupNorm) and 16-layer (configs/gpu-0.16b.json) models: loss
#               within 1e-2 relative, every gradient tensor within GRAD_TOL
#               of its largest value (bfloat16 activations)
#   generation  `trainer caption` and `trainer sample` cuda against cpu on a
#               tiny trained run, same seed: the same greedy captions, images
#               within SAMPLE_PSNR dB of each other
#   training    200 steps of configs/bench.json on each device (the CPU run
#               starts first, beside the stages above): the CUDA run lowers
#               the loss and ends within 5% of the CPU run
#   speed       configs/gpu-0.16b.json at B=8, L=2048: `trainer bench`
#               (tokens/s, MFU against PEAK_TFLOPS) and 20 steps of `trainer
#               train`, whose steps include the host's per-step work
#   memcheck    compute-sanitizer memcheck on `test_kernels --small` and
#               test_infer_kernels
#   ncu         `ncu --clock-control none` on a bench step: every kernel's
#               time (ncu.csv), summed per kernel in all.log
#   data_parallel  with 2 or more GPUs only: 2 NCCL ranks against 1 rank
#   torch       last, in the time left: the same 0.16B step in PyTorch
#               (bench/torch_cuda_step.py: torch.compile, flex attention) on
#               the batch `trainer bench --batch` times: torch_step_s over
#               trainer step_s
#
# Usage: bench/gpu-check.sh [--device cuda|cpu-device] [--bundle FILE]
#   --bundle FILE   build/gpu-bundle.tar.xz of `make gpu-bundle` (SKIP_BUILD=1
#                   takes that path): binaries, libraries and the fixture,
#                   for a GPU image without this project's Debian libraries;
#                   without it, `make CUDA=1` builds here
#   --device cpu-device   the dry run: every stage's code path on the CPU's
#                   kernels behind the device interface, at small sizes, with
#                   no nvidia-smi; the GPU-only tools are not run. CI runs it.
# STAGES (default: all of them) names the stages to run, e.g. STAGES="kernels
# parity": the others are recorded as skipped.
# On the lent device machine: LOG_DIR=$OUT SKIP_BUILD=1 bench/gpu-check.sh
# LOG_DIR gets at most 4 files: all.log (every stage's output, appended as it
# runs), summary.json (per stage: result, seconds, figures; rewritten after
# each stage, so a killed run keeps it), ncu.csv and parity.log.
# PYTHON (default python3) needs numpy and PyTorch (tests/torch_ref.py writes
# the batch files and compares gradients). Exits 1 if any stage failed.
set -u
cd "$(dirname "$0")/.." || exit 1
DEVICE=cuda
BUNDLE=""
[ "${SKIP_BUILD:-0}" = 1 ] && BUNDLE=build/gpu-bundle.tar.xz
while [ $# -gt 0 ]; do
    case $1 in
        --device) DEVICE=${2:-}; shift 2 ;;
        --bundle) BUNDLE=${2:-}; shift 2 ;;
        *) echo "gpu-check: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
    esac
done
case $DEVICE in cuda|cpu-device) ;; *) echo "gpu-check: --device '$DEVICE': cuda or cpu-device" >&2; exit 2 ;; esac
[ -z "$BUNDLE" ] || [ -f "$BUNDLE" ] || { echo "gpu-check: --bundle $BUNDLE: no such file (make gpu-bundle)" >&2; exit 2; }
DEADLINE=${DEADLINE:-540}
PYTHON=${PYTHON:-python3}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
GRAD_TOL=${GRAD_TOL:-3e-2}
SAMPLE_PSNR=${SAMPLE_PSNR:-30}
T=$(mktemp -d)
MAIN=$BASHPID           # a subshell that inherits the trap must not remove $T
trap '[ "$BASHPID" = "$MAIN" ] && rm -rf "$T"; [ -n "${TRAIN_CPU:-}" ] && kill "$TRAIN_CPU" 2>/dev/null' EXIT
L=${LOG_DIR:-$T/logs}
mkdir -p "$L" || exit 1
LOG=$L/all.log
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }

# Sizes: the real ones on a GPU; the dry run's keep every code path at CPU cost.
if [ "$DEVICE" = cuda ]; then
    TRAIN_STEPS=200 BIG_ROWS=2 BIG_LEN=2048 SPEED_ROWS=8 SPEED_LEN=2048 SPEED_STEPS=10 SPEED_TRAIN=20
else
    TRAIN_STEPS=20 BIG_ROWS=1 BIG_LEN=256 SPEED_ROWS=1 SPEED_LEN=256 SPEED_STEPS=2 SPEED_TRAIN=2
fi

# ---- results: summary.json after every stage
NAMES=() RESULTS=() SECS=() FIGS=()
failed=0
record() {      # record NAME ok|FAIL|skip SECONDS FIGURES_JSON WHY
    NAMES+=("$1") RESULTS+=("$2") SECS+=("$3") FIGS+=("${4:-{\}}")
    [ "$2" = FAIL ] && failed=1
    say "$2 $1 (${3} s)${5:+: $5}"
    local s i
    s="{\"gpu\":\"$GPU\",\"device\":\"$DEVICE\",\"deadline_s\":$DEADLINE,\"elapsed_s\":$SECONDS,\"stages\":["
    for i in "${!NAMES[@]}"; do
        [ "$i" -gt 0 ] && s+=","
        s+="{\"name\":\"${NAMES[$i]}\",\"result\":\"${RESULTS[$i]}\",\"seconds\":${SECS[$i]},\"figures\":${FIGS[$i]}}"
    done
    printf '%s]}\n' "$s" >"$L/summary.json.tmp" && mv "$L/summary.json.tmp" "$L/summary.json"
}
# run LIMIT CMD...: CMD under the smaller of LIMIT and the time left, its
# output appended to all.log (and to $OUT_FILE when set); its exit status.
run() {
    local limit=$1 left=$((DEADLINE - SECONDS - 5)); shift
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then echo "# out of time: $*" >>"$LOG"; return 124; fi
    echo "\$ $* (limit ${limit} s)" >>"$LOG"
    timeout -k 5 "$limit" "$@" >"$T/out" 2>&1
    local rc=$?
    cat "$T/out" >>"$LOG"
    [ "$rc" -eq 124 ] && echo "# timed out after $limit s" >>"$LOG"
    return "$rc"
}
STAGES=${STAGES:-kernels parity generation training speed memcheck ncu data_parallel torch}
want() { case " $STAGES " in *" $1 "*) return 0 ;; esac; record "$1" skip 0 '{}' "not in STAGES"; return 1; }
out_of_time() { [ $((DEADLINE - SECONDS)) -lt "${1:-15}" ]; }
# gpu_stage NAME TOOL NEED_S: whether stage NAME (a GPU tool's) runs; else records why not.
gpu_stage() {
    want "$1" || return 1
    if [ "$DEVICE" != cuda ]; then record "$1" skip 0 '{}' "dry run"; return 1; fi
    if [ ! -x "$2" ]; then record "$1" skip 0 '{}' "no $(basename "$2")"; return 1; fi
    if out_of_time "$3"; then record "$1" skip 0 '{}' "out of time"; return 1; fi
}
last_json() { grep '^{' "$1" | tail -n 1; }

# ---- the GPU, the binaries, their libraries
GPU=cpu-device NGPU=0
if [ "$DEVICE" = cuda ]; then
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    [ -n "$GPU" ] || { GPU=none; record gpu FAIL 0 '{}' "nvidia-smi finds no GPU"; exit 1; }
    NGPU=$(nvidia-smi -L | wc -l)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$LOG"
fi
t0=$SECONDS
if [ -n "$BUNDLE" ]; then
    mkdir -p "$T/b" && tar -C "$T/b" -xJf "$BUNDLE" || { record bundle FAIL $((SECONDS - t0)) '{}' "cannot unpack $BUNDLE"; exit 1; }
    B=$T/b/bin FIXTURE=$T/b/fixture
    export LD_LIBRARY_PATH=$T/b/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
else
    run 420 make -j"$(nproc)" CUDA=1 || { record build FAIL $((SECONDS - t0)) '{}' "make CUDA=1"; exit 1; }
    B=bin/cuda FIXTURE=$T/tiny
fi
TR=$B/trainer
TESTS=("$B"/tests/cuda/test_*)
missing_libs() { ldd "$TR" "${TESTS[@]}" | awk '/not found/ {print $1}' | sort -u | tr '\n' ' '; }
if [ -n "$(missing_libs)" ]; then       # CUDA's libraries from PyTorch's NVIDIA wheels (NCCL is not in every toolkit)
    for d in $("$PYTHON" -c 'import glob, site; print(*[d for p in site.getsitepackages() for d in glob.glob(p + "/nvidia/*/lib") + glob.glob(p + "/nvidia/cu*/lib")])' 2>/dev/null); do
        LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
    done
    export LD_LIBRARY_PATH
fi
if [ -n "$(missing_libs)" ]; then record libraries FAIL $((SECONDS - t0)) '{}' "not found: $(missing_libs)"; exit 1; fi
record libraries ok $((SECONDS - t0)) "{\"bundle\":\"${BUNDLE:-none}\"}"
if [ -z "$BUNDLE" ]; then BIN=bin/cuda tests/tiny_run.sh "$FIXTURE" >>"$LOG" 2>&1 || say "# the generation fixture failed"; fi

# Stage training's CPU reference needs no GPU: it runs beside the stages before it.
TRAIN_ARGS=(train --model configs/bench.json --steps "$TRAIN_STEPS" --batch-rows 8 --seq-len 256 --lr 1e-3
            --log-every 50)
if [[ " $STAGES " == *" training "* ]]; then
    timeout -k 5 $((DEADLINE - 10)) "$TR" "${TRAIN_ARGS[@]}" --device cpu >"$T/train_cpu.log" 2>&1 &
    TRAIN_CPU=$!            # (ends by the deadline at the latest)
fi

# ---- kernels
t0=$SECONDS
kfail=0
if ! want kernels; then :
elif [ "$DEVICE" = cuda ]; then
    for t in "${TESTS[@]}"; do run 150 "$t" || kfail=1; done
    grep -q '^FAIL ' "$LOG" && kfail=1
    n_ok=$(grep -c '^ok ' "$LOG")
    [ "$kfail" = 0 ] && record kernels ok $((SECONDS - t0)) "{\"checks\":$n_ok}" ||
        record kernels FAIL $((SECONDS - t0)) "{\"checks_ok\":$n_ok}" "$(grep -m 3 '^FAIL ' "$LOG" | tr '\n' ' ')"
else
    # No GPU: each test program must load its libraries and stop at CUDA's
    # device query (which shows the packaging works).
    for t in "${TESTS[@]}"; do
        run 30 "$t" --small
        grep -q 'no CUDA device is visible' "$T/out" || kfail=1
    done
    [ "$kfail" = 0 ] && record kernels skip $((SECONDS - t0)) '{}' "dry run: the test programs load and stop at the device query" ||
        record kernels FAIL $((SECONDS - t0)) '{}' "a test program did not reach the device query"
fi

# ---- parity of `trainer loss` on the 6- and 16-layer models
t0=$SECONDS
pfail=0 pfig=""
want parity && do_parity=1 || do_parity=0
# configs/bench.json's trunk with the U-Net image path (docs/model.md section 3)
UNET_CFG=$T/unet.json
cat >"$UNET_CFG" <<'JSON'
{"vocab_size":8192,"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":6,"intermediate_size":1024,"latent_channels":8,"latent_size":8,"patch_size":2,"max_image_patches":16,"image_encoder":"unet","unet_channels":[16,32],"unet_layers_per_block":1,"unet_groups":4}
JSON
[ "$do_parity" = 1 ] && for spec in "bench:configs/bench.json:4:256" "unet:$UNET_CFG:4:256" \
        "big:configs/gpu-0.16b.json:$BIG_ROWS:$BIG_LEN"; do
    IFS=: read -r name cfg rows len <<<"$spec"
    out_of_time 60 && { pfail=1; say "# parity $name: out of time"; continue; }
    "$TR" init --config "$cfg" --out "$T/ck_$name" --seed 3 >/dev/null &&
        "$PYTHON" tests/torch_ref.py make-batch --config "$cfg" --out "$T/batch_$name.safetensors" --rows "$rows" \
            --seq-len "$len" --seed 1 >/dev/null || { pfail=1; say "# parity $name: no checkpoint or batch"; continue; }
    for dev in cpu "$DEVICE"; do
        run 150 "$TR" loss --ckpt "$T/ck_$name" --batch "$T/batch_$name.safetensors" \
            --grads "$T/g_${name}_$dev.safetensors" --device "$dev" || pfail=1
        cp "$T/out" "$T/loss_${name}_$dev"
    done
    f=$("$PYTHON" - "$(last_json "$T/loss_${name}_cpu")" "$(last_json "$T/loss_${name}_$DEVICE")" <<'PY'
import json, sys
try:
    a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
except ValueError:
    print("null"); sys.exit(1)
rel = abs(b["loss"] - a["loss"]) / abs(a["loss"])
print(json.dumps({"loss_cpu": a["loss"], "loss_device": b["loss"], "loss_rel": rel}))
sys.exit(0 if rel <= 1e-2 and a["n_lm"] == b["n_lm"] and a["n_latent"] == b["n_latent"] else 1)
PY
) || pfail=1
    echo "# $name ($cfg, $rows x $len): device against cpu, every gradient within $GRAD_TOL of its largest value" >>"$L/parity.log"
    # bfloat16 against float32: every element within GRAD_TOL of its tensor's
    # largest value (--atol-rel), the old per-tensor scale kept because no
    # element-wise figures for the device have been measured yet
    "$PYTHON" tests/torch_ref.py compare --ref "$T/g_${name}_cpu.safetensors" --test "$T/g_${name}_$DEVICE.safetensors" \
        --rtol 0 --atol 0 --atol-rel "$GRAD_TOL" >"$T/cmp" 2>&1 || pfail=1
    cat "$T/cmp" >>"$L/parity.log"
    worst=$(grep -o 'err [0-9.e+-]*' "$T/cmp" | awk '{print $2}' | sort -g | tail -n 1)
    pfig+="\"$name\":{\"loss\":${f:-null},\"worst_grad_err\":${worst:-null}},"
done
pfig="{${pfig%,}}"
if [ "$do_parity" = 0 ]; then :
elif [ "$pfail" = 0 ]; then record parity ok $((SECONDS - t0)) "$pfig"
else record parity FAIL $((SECONDS - t0)) "$pfig" "$(grep -m 3 '^FAIL' "$L/parity.log" | tr '\n' ' ')"
fi

# ---- generation: captions and samples, device against cpu
t0=$SECONDS
gfail=0
if ! want generation; then :
elif [ -d "$FIXTURE/run" ]; then
    imgs=()
    for i in 0 1 2 3; do imgs+=(--image "$FIXTURE/img/k$i.png"); done
    for dev in cpu "$DEVICE"; do
        run 60 "$TR" caption --ckpt "$FIXTURE/run" --vae "$FIXTURE/vae" "${imgs[@]}" --device "$dev" || gfail=1
        cut -f2 "$T/out" >"$T/cap_$dev"
        run 60 "$TR" sample --ckpt "$FIXTURE/run" --vae "$FIXTURE/vae" --prompt "a blue square" --image --n 2 \
            --steps 50 --sampler ddim --max-tokens 4 --seed 3 --out "$T/s_$dev" --device "$dev" || gfail=1
    done
    cmp -s "$T/cap_cpu" "$T/cap_$DEVICE" || { gfail=1; say "# captions differ: $(paste -d'|' "$T/cap_cpu" "$T/cap_$DEVICE" | tr '\n' ' ')"; }
    gfig=$("$PYTHON" - "$T/s_cpu" "$T/s_$DEVICE" "$SAMPLE_PSNR" <<'PY'
import glob, json, os, sys
import numpy as np
from PIL import Image
a_dir, b_dir, need = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = sorted(os.path.basename(p) for p in glob.glob(a_dir + "/*.webp"))
psnr = []
try:
    for n in names:
        a = np.asarray(Image.open(f"{a_dir}/{n}").convert("RGB"), dtype=np.float64)
        b = np.asarray(Image.open(f"{b_dir}/{n}").convert("RGB"), dtype=np.float64)
        mse = ((a - b) ** 2).mean()
        psnr.append(99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
    same_text = open(f"{a_dir}/samples.jsonl").read() == open(f"{b_dir}/samples.jsonl").read()
except OSError as e:
    print(json.dumps({"error": str(e)})); sys.exit(1)
print(json.dumps({"images": len(names), "min_psnr_db": round(min(psnr), 2) if psnr else None,
                  "same_samples_jsonl": same_text}))
sys.exit(0 if names and min(psnr) >= need and same_text else 1)
PY
) || gfail=1
    [ "$gfail" = 0 ] && record generation ok $((SECONDS - t0)) "$gfig" ||
        record generation FAIL $((SECONDS - t0)) "${gfig:-{\}}" "captions or samples differ from the CPU's"
else
    record generation FAIL $((SECONDS - t0)) '{}' "no fixture run at $FIXTURE"
fi

# ---- training: 200 steps on each device
if want training; then
    t0=$SECONDS
    run 240 "$TR" "${TRAIN_ARGS[@]}" --device "$DEVICE"
    cp "$T/out" "$T/train_dev.log"
    wait "$TRAIN_CPU"; TRAIN_CPU=""
    { echo "# the CPU reference run:"; cat "$T/train_cpu.log"; } >>"$LOG"
    tfig=$("$PYTHON" - "$T/train_cpu.log" "$T/train_dev.log" <<'PY'
import json, re, sys
def ends(path):
    m = re.search(r"^loss ([\d.]+) -> ([\d.]+)$", open(path).read(), re.M)
    return (float(m.group(1)), float(m.group(2))) if m else None
cpu, dev = ends(sys.argv[1]), ends(sys.argv[2])
ok = bool(cpu and dev) and dev[1] < dev[0] and abs(dev[1] - cpu[1]) <= 0.05 * cpu[1]
print(json.dumps({"cpu_loss": cpu, "device_loss": dev}))
sys.exit(0 if ok else 1)
PY
    ) && record training ok $((SECONDS - t0)) "$tfig" ||
        record training FAIL $((SECONDS - t0)) "${tfig:-{\}}" "the device run's loss does not follow the CPU run's"
fi

# ---- speed: the 0.16B model at B=8, L=2048
t0=$SECONDS
CFG=configs/gpu-0.16b.json
SPEED=(--batch-rows "$SPEED_ROWS" --seq-len "$SPEED_LEN" --device "$DEVICE")
if want speed; then
    sfail=0
    run 150 "$TR" bench --config "$CFG" "${SPEED[@]}" --steps "$SPEED_STEPS" --peak-tflops "$PEAK_TFLOPS" || sfail=1
    BENCH=$(last_json "$T/out")
    run 150 "$TR" train --model "$CFG" "${SPEED[@]}" --steps "$SPEED_TRAIN" --log-every 1 || sfail=1
    sfig=$("$PYTHON" - "$BENCH" "$T/out" "$SPEED_ROWS" "$SPEED_LEN" "$PEAK_TFLOPS" <<'PY'
import json, re, statistics, sys
b = json.loads(sys.argv[1]) if sys.argv[1] else {}
text = open(sys.argv[2]).read()
# train's per-step lines: positions/s and GFLOP/s (the first two steps warm up;
# the dry run's two steps keep the last)
steps = re.findall(r"^step +\d+/\d+ .*?(\d+) positions/s +([\d.]+) GFLOP/s", text, re.M)
steps = steps[2:] if len(steps) > 3 else steps[-1:]
f = {"bench_step_s": b.get("step_s"), "bench_tokens_per_s": b.get("positions_per_s"), "bench_mfu": b.get("mfu"),
     "gflop_per_step": b.get("gflop_per_step")}
if steps:
    f["train_tokens_per_s"] = statistics.median(float(p) for p, _ in steps)
    f["train_step_s"] = int(sys.argv[3]) * int(sys.argv[4]) / f["train_tokens_per_s"]
    f["train_mfu"] = statistics.median(float(g) for _, g in steps) / (float(sys.argv[5]) * 1e3)
print(json.dumps(f))
sys.exit(0 if b and "train_step_s" in f else 1)
PY
    ) || sfail=1
    [ "$sfail" = 0 ] && record speed ok $((SECONDS - t0)) "$sfig" ||
        record speed FAIL $((SECONDS - t0)) "${sfig:-{\}}" "trainer bench or train"
fi

# ---- memcheck and ncu: GPU tools
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
t0=$SECONDS
if ! gpu_stage memcheck "$SAN" 60; then :
elif run 200 "$SAN" --tool memcheck --error-exitcode 3 "$B/tests/cuda/test_kernels" --small &&
     run 120 "$SAN" --tool memcheck --error-exitcode 3 "$B/tests/cuda/test_infer_kernels"; then
    record memcheck ok $((SECONDS - t0)) '{"programs":["test_kernels --small","test_infer_kernels"]}'
elif grep -q 'Device not supported' "$T/out"; then
    record memcheck skip $((SECONDS - t0)) '{}' "compute-sanitizer does not support this device (gVisor)"
else
    record memcheck FAIL $((SECONDS - t0)) '{}' "$(grep -m 3 -E '^=+ (Invalid|Error|Program hit)' "$T/out" | tr '\n' ' ')"
fi

t0=$SECONDS
if ! gpu_stage ncu "$NCU" 45; then :
elif run 240 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$L/ncu.csv" \
        "$TR" bench --config "$CFG" "${SPEED[@]}" --steps 1; then
    # The bench's warm-up step and its one timed step: two steps' kernels.
    nfig=$("$PYTHON" - "$L/ncu.csv" <<'PY' 2>>"$LOG"
import csv, json, sys
unit = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "s": 1e3, "second": 1e3}
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
k, mu, mv = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
tot, cnt = {}, {}
for r in rows:
    name = r[k].split("(")[0][:70]
    tot[name] = tot.get(name, 0.0) + float(r[mv].replace(",", "")) * unit[r[mu]] / 2
    cnt[name] = cnt.get(name, 0) + 0.5
step = sum(tot.values())
print(f"# ncu: {len(rows) // 2} kernels a step, {step:.2f} ms of kernel time a step", file=sys.stderr)
print(f"# {'ms/step':>9} {'share':>6} {'calls':>6}  kernel", file=sys.stderr)
for n, t in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"  {t:9.3f} {100 * t / step:5.1f}% {cnt[n]:6.0f}  {n}", file=sys.stderr)
top = sorted(tot.items(), key=lambda x: -x[1])[:12]
print(json.dumps({"kernel_ms_per_step": round(step, 3), "top": [[n, round(t, 3)] for n, t in top]}))
PY
)
    [ -n "$nfig" ] && record ncu ok $((SECONDS - t0)) "$nfig" ||
        record ncu FAIL $((SECONDS - t0)) '{}' "ncu ran, but its CSV could not be read (see all.log)"
else
    record ncu FAIL $((SECONDS - t0)) '{}' "ncu: $(tail -n 2 "$T/out" | tr '\n' ' ')"
fi

# ---- NCCL data parallel: one GPU per rank
if ! want data_parallel; then :
elif [ "$NGPU" -ge 2 ]; then
    t0=$SECONDS
    DP=(train --model configs/bench.json --steps 20 --seq-len 256 --log-every 1 --device cuda)
    run 90 "$TR" "${DP[@]}" --batch-rows 8 && cp "$T/out" "$T/dp1"
    run 120 mpirun --allow-run-as-root -np 2 --bind-to none "$TR" "${DP[@]}" --batch-rows 4 && cp "$T/out" "$T/dp2"
    "$PYTHON" - "$T/dp1" "$T/dp2" <<'PY' && record data_parallel ok $((SECONDS - t0)) '{}' ||
import re, sys
try:
    l1, l2 = ([float(x) for x in re.findall(r"^step +\d+/\d+ +loss ([\d.]+)", open(p).read(), re.M)] for p in sys.argv[1:])
except OSError:
    sys.exit(1)
sys.exit(0 if len(l1) == len(l2) == 20 and all(abs(a - b) <= 2e-2 * a for a, b in zip(l1, l2)) else 1)
PY
        record data_parallel FAIL $((SECONDS - t0)) '{}' "2 NCCL ranks differ from 1 rank"
else
    record data_parallel skip 0 '{}' "$NGPU GPU: NCCL needs one GPU per rank"
fi

# ---- the PyTorch peer on the same batch (needs a CUDA PyTorch >= 2.5)
t0=$SECONDS
if ! gpu_stage torch "$(command -v "$PYTHON" || echo "$PYTHON")" 100; then :
elif torch_rc=0; run 60 "$PYTHON" bench/torch_cuda_step.py --config "$CFG" --batch-rows "$SPEED_ROWS" --seq-len "$SPEED_LEN" \
        --write-batch "$T/peer.safetensors" &&
     run 120 "$TR" bench --config "$CFG" --batch "$T/peer.safetensors" --device cuda --steps "$SPEED_STEPS" &&
     OURS=$(last_json "$T/out") &&
     { run 300 "$PYTHON" bench/torch_cuda_step.py --config "$CFG" --batch "$T/peer.safetensors" --steps "$SPEED_STEPS" ||
       { torch_rc=$?; false; }; }; then
    THEIRS=$(last_json "$T/out")
    xfig=$("$PYTHON" -c 'import json, sys; o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"trainer_step_s": o["step_s"], "torch_step_s": t["step_s"], "torch_over_trainer": t["step_s"] / o["step_s"]}))' \
        "$OURS" "$THEIRS") && record torch ok $((SECONDS - t0)) "$xfig" || record torch FAIL $((SECONDS - t0)) '{}' "no step times"
elif [ "$torch_rc" = 124 ]; then
    record torch skip $((SECONDS - t0)) '{}' "out of time while PyTorch compiled or ran"
else
    record torch FAIL $((SECONDS - t0)) '{}' "$(tail -n 2 "$T/out" | tr '\n' ' ')"
fi

[ "$failed" -eq 0 ] && say "gpu-check: every stage passed or was skipped on $GPU ($SECONDS s)" ||
    say "gpu-check: some stages FAILED on $GPU ($SECONDS s)"
exit "$failed"
