#!/usr/bin/env bash
# gpu-check.sh - the CUDA backend's check on a machine with an NVIDIA H100 or
# H200 (issue 7), in order, each stage under its own time limit:
#   1. build: make CUDA=1 (bin/cuda/; SKIP_BUILD=1 takes the one there); every
#      shared library of the trainer and the kernel tests must resolve
#   2. kernels: bin/cuda/tests/cuda/test_kernels, every CUDA kernel and the
#      model's loss and gradients against the CPU backend (2e-2 relative);
#      then the same under compute-sanitizer memcheck when it is installed
#   3. parity: `trainer loss` --device cuda against --device cpu on the same
#      checkpoint and batch file: loss and every gradient tensor within 2e-2
#   4. training: 200 steps of configs/bench.json on each device (the CPU
#      run starts after the build and runs beside stages 2-3); the CUDA run
#      must lower the loss and end within 5% of the CPU run's last loss
#   5. data parallel (only with 2 or more GPUs): 2 ranks over NCCL against 1
#      rank with twice the rows, 20 steps, the same losses within 2e-2
#   6. speed: `trainer bench --device cuda` on configs/gpu-0.16b.json (0.16B
#      parameters, B=8 x L=2048) and the same model and step in PyTorch
#      (bench/torch_cuda_step.py: torch.compile + flex attention) on the same
#      batch file; prints tokens/s, MFU against PEAK_TFLOPS (989: H100 SXM
#      dense bf16) and torch_step_s / trainer_step_s (targets: MFU >= 0.40,
#      ratio > 1)
# PYTHON (default python3) must have numpy and PyTorch: tests/torch_ref.py
# imports torch to write stage 3's batch file and compare its gradients, and
# stage 6 needs a CUDA PyTorch >= 2.5 (flex attention). Prints "ok STAGE" or
# "FAIL STAGE: why" per stage, a JSON summary last; exits 1 if any failed.
#
# A GPU image without the build's libraries (oneDNN, cJSON, libwebp, stb,
# ZeroMQ, Open MPI, SentencePiece; NCCL under CUDA_HOME) cannot run stage 1.
# Then build where they are, for any x86-64 host, and carry bin/cuda and the
# libraries that are not the C runtime's or CUDA's:
#   rm -rf build/cuda bin/cuda && make -j2 CUDA=1 ARCH=-march=x86-64-v3
#   mkdir -p gpu-libs && ldd bin/cuda/trainer bin/cuda/tests/cuda/test_kernels | awk '/=> \//{print $3}' |
#     sort -u | grep -v -E '/lib(c|m|dl|pthread|rt|resolv|stdc\+\+|gcc_s|gomp|z|cudart|cublasLt|nccl)\.so' | xargs -I{} cp -L {} gpu-libs/
# and run SKIP_BUILD=1 LD_LIBRARY_PATH=$PWD/gpu-libs bench/gpu-check.sh there.
# CUDA libraries missing under CUDA_HOME are taken from PYTHON's NVIDIA wheels
# (site-packages/nvidia/*/lib: PyTorch's NCCL, cuBLAS and CUDA runtime).
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
JOBS=${JOBS:-$(nproc)}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# Stage logs: in LOG_DIR when given (on the lent device machine LOG_DIR=$OUT,
# whose files come back even when the command is killed at its time limit),
# else with the work files.
L=${LOG_DIR:-$T}
mkdir -p "$L" || exit 1
TR=bin/cuda/trainer
failed=0
fail() { echo "FAIL $1: $2"; failed=1; }
# stage NAME SECONDS CMD...: runs CMD with a time limit, output in $L/NAME.log.
stage() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$L/$name.log" 2>&1
    local rc=$?
    echo "# $name: exit $rc in $((SECONDS - t0)) s"
    if [ "$rc" -ne 0 ]; then tail -n 15 "$L/$name.log" | sed 's/^/    | /'; fi
    return "$rc"
}
last_json() { grep '^{' "$1" | tail -n 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "FAIL gpu: nvidia-smi"; exit 1; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
NGPU=$(nvidia-smi -L | wc -l)

# 1. build (or SKIP_BUILD=1: the carried bin/cuda), then every shared library must resolve
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    echo "# build: skipped (SKIP_BUILD=1)"
elif stage build 420 make -j"$JOBS" CUDA=1; then
    echo "ok build"
else
    fail build "make CUDA=1"; exit 1
fi
BINS=("$TR" bin/cuda/tests/cuda/test_kernels)
for b in "${BINS[@]}"; do [ -x "$b" ] || { fail build "$b is missing"; exit 1; }; done
missing_libs() { ldd "${BINS[@]}" | awk '/not found/ {print $1}' | sort -u | tr '\n' ' '; }
if [ -n "$(missing_libs)" ]; then
    for d in $("$PYTHON" -c 'import glob, site; print(*[d for p in site.getsitepackages() for d in glob.glob(p + "/nvidia/*/lib")])'); do
        LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    done
    export LD_LIBRARY_PATH
fi
if [ -n "$(missing_libs)" ]; then fail build "shared libraries not found: $(missing_libs)"; exit 1; fi

# Stage 4's CPU reference run needs no GPU: it runs beside stages 2 and 3.
TRAIN_ARGS=(train --model configs/bench.json --steps 200 --batch-rows 8 --seq-len 256 --lr 1e-3 --log-every 50)
stage train_cpu 240 "$TR" "${TRAIN_ARGS[@]}" --device cpu &
TRAIN_CPU=$!

# 2. kernel tests
stage kernels 180 bin/cuda/tests/cuda/test_kernels
kernels_rc=$?
grep -E '^(ok|FAIL) ' "$L/kernels.log"
if [ "$kernels_rc" -ne 0 ] || grep -q '^FAIL ' "$L/kernels.log" || ! grep -q '^ok ' "$L/kernels.log"; then
    fail kernels "see above"
else
    echo "ok kernels"
fi

# 2b. the same under compute-sanitizer: out-of-bounds and misaligned accesses
SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
if [ "$kernels_rc" -eq 124 ]; then
    echo "# memcheck: not run (the kernel tests timed out: it would too)"
elif [ -x "$SAN" ]; then
    if stage memcheck 300 "$SAN" --tool memcheck --error-exitcode 3 bin/cuda/tests/cuda/test_kernels; then
        echo "ok memcheck"
    elif grep -q 'Device not supported' "$L/memcheck.log"; then
        echo "# memcheck: not run (compute-sanitizer does not support this device, as on gVisor machines)"
    else
        grep -m 5 -E '^=+ (Invalid|Error|Program hit)' "$L/memcheck.log"; fail memcheck "compute-sanitizer found errors"
    fi
else
    echo "# memcheck: not run (no compute-sanitizer)"
fi

# 3. parity of `trainer loss` on one checkpoint and batch
"$TR" init --config configs/bench.json --out "$T/ck" --seed 3 >/dev/null &&
    "$PYTHON" tests/torch_ref.py make-batch --config configs/bench.json --out "$T/batch.safetensors" --rows 4 \
        --seq-len 256 --seed 1 >/dev/null || fail parity "could not write the checkpoint or batch"
for dev in cpu cuda; do
    stage "loss_$dev" 120 "$TR" loss --ckpt "$T/ck" --batch "$T/batch.safetensors" --grads "$T/grads_$dev.safetensors" \
        --device "$dev" || fail parity "trainer loss --device $dev"
done
LOSS_CPU=$(last_json "$L/loss_cpu.log"); LOSS_CUDA=$(last_json "$L/loss_cuda.log")
echo "loss cpu:  $LOSS_CPU"; echo "loss cuda: $LOSS_CUDA"
if [ -n "$LOSS_CPU" ] && [ -n "$LOSS_CUDA" ] && "$PYTHON" - "$LOSS_CPU" "$LOSS_CUDA" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
bad = [k for k in ("loss", "lm_loss", "diffusion_loss", "grad_norm") if abs(b[k] - a[k]) > 2e-2 * abs(a[k])]
bad += [k for k in ("n_lm", "n_latent") if a[k] != b[k]]
print("parity: " + ("differs in " + ", ".join(bad) if bad else "loss, terms, counts and grad_norm within 2e-2"))
sys.exit(1 if bad else 0)
PY
then
    if "$PYTHON" tests/torch_ref.py compare --ref "$T/grads_cpu.safetensors" --test "$T/grads_cuda.safetensors" \
        --rtol 2e-2 >"$L/compare.log" 2>&1; then echo "ok parity"; else tail -n 5 "$L/compare.log"; fail parity "gradients"; fi
else
    fail parity "loss"
fi

# 4. 200 training steps on each device
stage train_cuda 240 "$TR" "${TRAIN_ARGS[@]}" --device cuda || fail training "trainer train --device cuda"
wait "$TRAIN_CPU" || fail training "trainer train --device cpu"
for dev in cuda cpu; do grep -E '^step|->' "$L/train_$dev.log" | sed "s/^/$dev: /"; done
if "$PYTHON" - "$L/train_cpu.log" "$L/train_cuda.log" <<'PY'
import re, sys
def ends(path):
    m = re.search(r"^loss ([\d.]+) -> ([\d.]+)$", open(path).read(), re.M)
    return (float(m.group(1)), float(m.group(2))) if m else None
cpu, gpu = ends(sys.argv[1]), ends(sys.argv[2])
ok = bool(cpu and gpu) and gpu[1] < gpu[0] and abs(gpu[1] - cpu[1]) <= 0.05 * cpu[1]
print(f"training: cpu {cpu}, cuda {gpu}")
sys.exit(0 if ok else 1)
PY
then echo "ok training"; else fail training "the CUDA run's loss does not follow the CPU run's"; fi

# 5. NCCL data parallel (needs a GPU per rank)
if [ "$NGPU" -ge 2 ]; then
    stage dp1 120 "$TR" train --model configs/bench.json --steps 20 --batch-rows 8 --seq-len 256 --log-every 1 \
        --device cuda
    stage dp2 180 mpirun --allow-run-as-root -np 2 --bind-to none "$TR" train --model configs/bench.json \
        --steps 20 --batch-rows 4 --seq-len 256 --log-every 1 --device cuda
    if "$PYTHON" - "$L/dp1.log" "$L/dp2.log" <<'PY'
import re, sys
l1, l2 = ([float(x) for x in re.findall(r"^step +\d+/\d+ +loss ([\d.]+)", open(p).read(), re.M)] for p in sys.argv[1:])
ok = len(l1) == len(l2) == 20 and all(abs(a - b) <= 2e-2 * a for a, b in zip(l1, l2))
print(f"data parallel: 1 rank {l1[-1:]} 2 ranks {l2[-1:]}")
sys.exit(0 if ok else 1)
PY
    then echo "ok data_parallel"; else fail data_parallel "2 NCCL ranks differ from 1 rank"; fi
else
    echo "# data_parallel: not run ($NGPU GPU; NCCL needs one GPU per rank)"
fi

# 6. speed against PyTorch on the same batch
CFG=configs/gpu-0.16b.json
"$PYTHON" bench/torch_cuda_step.py --config "$CFG" --batch-rows 8 --seq-len 2048 --write-batch "$T/bench.safetensors" ||
    fail speed "could not write the bench batch"
stage bench 180 "$TR" bench --config "$CFG" --batch "$T/bench.safetensors" --steps 10 --device cuda \
    --peak-tflops "$PEAK_TFLOPS" || fail speed "trainer bench"
stage torch 300 "$PYTHON" bench/torch_cuda_step.py --config "$CFG" --batch "$T/bench.safetensors" --steps 10 ||
    fail speed "torch_cuda_step.py"
OURS=$(last_json "$L/bench.log"); THEIRS=$(last_json "$L/torch.log")
echo "trainer: $OURS"; echo "torch:   $THEIRS"
if [ -n "$OURS" ] && [ -n "$THEIRS" ]; then
    if "$PYTHON" - "$OURS" "$THEIRS" "$GPU" "$PEAK_TFLOPS" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = t["step_s"] / o["step_s"]
s = {"gpu": sys.argv[3], "peak_tflops": float(sys.argv[4]), "tokens_per_s": o["positions_per_s"],
     "mfu": o["mfu"], "step_s": o["step_s"], "torch_step_s": t["step_s"], "torch_over_trainer": ratio,
     "mfu_target_met": o["mfu"] >= 0.40, "faster_than_torch": ratio > 1}
print(json.dumps(s))
PY
    then echo "ok speed"; else fail speed "the summary"; fi
fi
[ "$failed" -eq 0 ] && echo "gpu-check: all stages passed on $GPU" || echo "gpu-check: some stages FAILED on $GPU"
exit "$failed"
