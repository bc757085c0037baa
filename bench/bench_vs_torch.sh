#!/usr/bin/env bash
# bench_vs_torch.sh - training-step speed of the C trainer against an eager
# PyTorch peer (tests/torch_ref.py bench: forward, backward, clip, AdamW) on
# the CPU, in two precisions, on the reference config configs/bench.json
# (V=8192, d=384, 6 layers, ffn 1024, 8x8x8 latents, 16-patch images), B=8
# rows of L=256, about half of the positions in images.
#
# Both sides time the same batch file (made once by torch_ref.py make-batch
# --mode bench) under the same OpenMP wait policy (GOMP_SPINCOUNT=1000, the
# trainer's own default, unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set;
# both sides use GNU OpenMP). In each of REPEATS rounds (default 5),
# for each thread count T (THREADS, default "1 2") and each precision P
# (PRECISIONS, default "fp32 bf16"), it runs `$BIN/trainer bench ...
# --threads T --precision P` and then `tests/torch_ref.py bench ... --threads T
# --precision P` with OMP_NUM_THREADS=T (fp32: eager float32; bf16:
# torch.autocast("cpu", dtype=torch.bfloat16)), each for STEPS steps (default
# 5; both report the median step time after one warmup). Then, once per
# precision, `$BIN/trainer bench ... --threads <largest T> --profile` gives the
# kernel table (stderr) from which the share of the step outside the GEMMs
# (every kernel whose name neither contains "linear" nor starts with gemm,
# plus the time outside kernels; the fused passes such as
# rmsnorm_linear_forward count as GEMMs, their element-wise part included) is
# printed, with its top 4 (forward and backward of one kernel counted
# together).
#
# Prints, per (side, P, T): the median step time over the repeats and its
# min-max spread, positions/s, and GFLOP/s (the trainer's FLOP count per step
# for both sides: the same work) against both peaks of this machine,
# PEAK_FP32=530 and PEAK_BF16=1060 GFLOP/s (docs/benchmarks.md). Then the
# ratios torch/trainer at equal P and T, best against best (any P, any T, and
# per P), the bf16/fp32 speedup of each side (fp32 step / bf16 step at each T
# and best against best) and the trainer's thread scaling (step_T1 / step_T).
# The last line is one JSON summary ("speedup" = torch_best_step_s /
# trainer_best_step_s, best against best).
#
# The peer's BLAS: Debian's torch calls the system libblas.so.3, which on a
# fresh machine is the reference BLAS (about 20x slower than OpenBLAS: an
# unfair peer in fp32). If OpenBLAS is installed
# (/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3), the peer alone
# runs with that directory first on LD_LIBRARY_PATH and with
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, so that OpenBLAS picks its
# AVX-512 kernels (460 against 250 GFLOP/s here); the system's BLAS
# alternative is left as it is. Without it a WARNING says the fp32 peer runs
# on the reference BLAS; to fix: apt-get install libopenblas0-pthread, then
# update-alternatives --set libblas.so.3-x86_64-linux-gnu
# /usr/lib/x86_64-linux-gnu/blas/libblas.so.3 and update-alternatives --set
# liblapack.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/lapack/liblapack.so.3
# (the rest of the system keeps the reference BLAS/LAPACK). The peer's BLAS
# (the "blas" libraries mapped in its process) is printed, with a warning if
# it is not OpenBLAS.
#
# Knobs: CFG (default configs/bench.json) times another model config the same
# way; BIN (default bin) is where the trainer is; THREADS, PRECISIONS,
# REPEATS, STEPS, OMP_WAIT_POLICY / GOMP_SPINCOUNT as above.
set -u
BIN=${BIN:-bin}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
STEPS=${STEPS:-5}
REPEATS=${REPEATS:-5}
THREADS=${THREADS:-"1 2"}
PRECISIONS=${PRECISIONS:-"fp32 bf16"}
ROWS=8
LEN=256
CFG=${CFG:-configs/bench.json}
# 2 AVX-512 cores; bf16 = the VDPBF16PS rate (twice the FP32 FMA rate)
PEAK_FP32=530
PEAK_BF16=1060
OPENBLAS_DIR=/usr/lib/x86_64-linux-gnu/openblas-pthread

if [ ! -x "$BIN/trainer" ]; then echo "error: $BIN/trainer not found (build it first)" >&2; exit 1; fi
if [ ! -f "$CFG" ]; then echo "error: $CFG missing" >&2; exit 1; fi
TMAX=$(printf '%s\n' $THREADS | sort -n | tail -n 1)

# the peer's environment: OpenBLAS with its AVX-512 kernels when installed
if [ -f "$OPENBLAS_DIR/libblas.so.3" ]; then
    PEER_ENV=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
              "LD_LIBRARY_PATH=$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    echo "torch peer: LD_LIBRARY_PATH=$OPENBLAS_DIR (OpenBLAS), OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset"
else
    PEER_ENV=(env)
    echo "WARNING: $OPENBLAS_DIR/libblas.so.3 not found: the fp32 torch peer runs on the system" \
         "libblas.so.3 (on a fresh machine the reference BLAS, about 20x too slow). Fix:" \
         "apt-get install libopenblas0-pthread, then update-alternatives --set libblas.so.3-x86_64-linux-gnu" \
         "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3 and update-alternatives --set" \
         "liblapack.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/lapack/liblapack.so.3" \
         "(the rest of the system keeps the reference BLAS/LAPACK)"
fi

RES=$(mktemp)
BATCH=$(mktemp --suffix=.safetensors)
trap 'rm -f "$RES" "$RES".* "$BATCH"' EXIT
if [ -n "${OMP_WAIT_POLICY:-}" ]; then policy="OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
else export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-1000}; policy="GOMP_SPINCOUNT=$GOMP_SPINCOUNT"; fi
"$PY" tests/torch_ref.py make-batch --config "$CFG" --out "$BATCH" --rows $ROWS --seq-len $LEN --mode bench >/dev/null ||
    { echo "error: torch_ref.py make-batch failed" >&2; exit 1; }
echo "both sides: the batch $BATCH ($ROWS x $LEN), $policy"

last_json() { grep '^{' | tail -n 1; }

# run_one SIDE P T: one timed run of SIDE (trainer or torch), its JSON appended to $RES
run_one() {
    local side=$1 p=$2 t=$3 out
    if [ "$side" = trainer ]; then
        out=$(OMP_NUM_THREADS=$t "$BIN/trainer" bench --config "$CFG" --batch-rows $ROWS --seq-len $LEN \
              --steps "$STEPS" --threads "$t" --batch "$BATCH" --precision "$p" 2>"$RES.err" | last_json)
    else
        out=$(OMP_NUM_THREADS=$t "${PEER_ENV[@]}" "$PY" tests/torch_ref.py bench --config "$CFG" --batch-rows $ROWS \
              --seq-len $LEN --steps "$STEPS" --threads "$t" --batch "$BATCH" --precision "$p" 2>"$RES.err" | last_json)
    fi
    if [ -z "$out" ]; then echo "error: $side bench ($p, T=$t) printed no JSON:" >&2; tail -n 5 "$RES.err" >&2; exit 1; fi
    echo "$side $p $t $out" >>"$RES"
    printf 'run %s/%s %-7s %s T=%s: %s\n' "$r" "$REPEATS" "$side" "$p" "$t" "$out"
}

for r in $(seq 1 "$REPEATS"); do
    for t in $THREADS; do
        for p in $PRECISIONS; do
            run_one trainer "$p" "$t"
            run_one torch "$p" "$t"
        done
    done
done

# the kernel profile of each precision at the largest thread count
for p in $PRECISIONS; do
    OMP_NUM_THREADS=$TMAX "$BIN/trainer" bench --config "$CFG" --batch-rows $ROWS --seq-len $LEN --steps "$STEPS" \
        --threads "$TMAX" --batch "$BATCH" --precision "$p" --profile >/dev/null 2>"$RES.prof.$p"
    if [ $? -ne 0 ] || ! grep -q '%$' "$RES.prof.$p"; then
        echo "error: trainer bench --profile ($p, T=$TMAX) printed no kernel table:" >&2; tail -n 5 "$RES.prof.$p" >&2; exit 1
    fi
done

"$PY" - "$RES" "$ROWS" "$LEN" "$PEAK_FP32" "$PEAK_BF16" "$TMAX" $PRECISIONS <<'PYEOF'
import json, re, statistics, sys
res, rows, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
peak = {"fp32": float(sys.argv[4]), "bf16": float(sys.argv[5])}
tmax, precisions = int(sys.argv[6]), sys.argv[7:]
runs = {}
for line in open(res):
    side, p, t, js = line.split(" ", 3)
    runs.setdefault((side, p, int(t)), []).append(json.loads(js))
# the work of one step, the trainer's FLOP count (gflops_per_s x step_s has
# more digits than its rounded gflop_per_step), the same for both sides
tr = [r for (s, _, _), rs in runs.items() if s == "trainer" for r in rs]
gflop = statistics.median(r["gflops_per_s"] * r["step_s"] if "gflops_per_s" in r else r["gflop_per_step"] for r in tr)
blas = sorted({r.get("blas", "?") for (s, _, _), rs in runs.items() if s == "torch" for r in rs})

med = {}
n = len(next(iter(runs.values())))
print(f"\nB={rows} L={length}, median step over {n} runs (min-max), "
      f"{gflop:.3f} GFLOP/step (the trainer's count, both sides); peaks {peak['fp32']:.0f} fp32, {peak['bf16']:.0f} bf16 GFLOP/s")
for k in sorted(runs, key=lambda k: (k[0] != "trainer", precisions.index(k[1]), k[2])):
    side, p, t = k
    steps = [r["step_s"] for r in runs[k]]
    m = {"step_s": statistics.median(steps), "min": min(steps), "max": max(steps)}
    m["gflops_per_s"] = gflop / m["step_s"]
    if all("peak_rss_mb" in r for r in runs[k]):
        m["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs[k])
    med[k] = m
    g = m["gflops_per_s"]
    line = (f"  {side:7s} {p} T={t}: {m['step_s']:.4f} s/step ({m['min']:.4f}-{m['max']:.4f} over {len(steps)} runs)"
            f"  {rows * length / m['step_s']:9.1f} positions/s  {g:7.1f} GFLOP/s"
            f" ({100 * g / peak['fp32']:.1f}% of fp32 peak, {100 * g / peak['bf16']:.1f}% of bf16 peak)")
    if "peak_rss_mb" in m:
        line += f"  peak RSS {m['peak_rss_mb']:.0f} MB"
    print(line)
print(f"torch peer's BLAS: {', '.join(blas)}")
if not any("openblas" in b for b in blas):
    print("WARNING: the torch peer does not run on OpenBLAS (see this script's header): its fp32 times are not a fair peer")

def step(side, p, t):
    return med[(side, p, t)]["step_s"]

print("\ntorch / trainer at equal precision and threads:")
equal = {}
for (side, p, t) in med:
    if side == "trainer" and ("torch", p, t) in med:
        equal[f"{p}_T{t}"] = step("torch", p, t) / step("trainer", p, t)
        print(f"  {p} T={t}: {step('torch', p, t):.4f} / {step('trainer', p, t):.4f} = {equal[f'{p}_T{t}']:.2f}x")

def best(side, p=None):
    return min((k for k in med if k[0] == side and (p is None or k[1] == p)), key=lambda k: med[k]["step_s"])

bt, bc = best("torch"), best("trainer")
tb, cb = med[bt]["step_s"], med[bc]["step_s"]
print(f"best against best: torch {bt[1]} T={bt[2]} {tb:.4f} / trainer {bc[1]} T={bc[2]} {cb:.4f}"
      f" = {tb / cb:.2f}x (speedup)")
per_prec = {}
for p in precisions:
    t_, c_ = best("torch", p), best("trainer", p)
    per_prec[p] = med[t_]["step_s"] / med[c_]["step_s"]
    print(f"  {p} best against best: torch T={t_[2]} {med[t_]['step_s']:.4f} / trainer T={c_[2]}"
          f" {med[c_]['step_s']:.4f} = {per_prec[p]:.2f}x")

bf_over_fp = {}
if "fp32" in precisions and "bf16" in precisions:
    print("bf16 speedup (fp32 step / bf16 step):")
    for side in ("trainer", "torch"):
        d = {f"T{t}": step(side, "fp32", t) / step(side, "bf16", t)
             for (s, p, t) in med if s == side and p == "fp32" and (side, "bf16", t) in med}
        d["best"] = med[best(side, "fp32")]["step_s"] / med[best(side, "bf16")]["step_s"]
        bf_over_fp[side] = d
        print(f"  {side:7s} " + ", ".join(f"{k} {v:.2f}x" for k, v in d.items()))

scaling = {}
threads = sorted({t for (_, _, t) in med})
if 1 in threads and len(threads) > 1:
    print("trainer thread scaling (step_T1 / step_T):")
    for p in precisions:
        scaling[p] = {f"T{t}": step("trainer", p, 1) / step("trainer", p, t) for t in threads if t > 1}
        print(f"  {p}: " + ", ".join(f"{k} {v:.2f}x" for k, v in scaling[p].items()))

# the kernel tables: "name calls ms/step share%" ("(outside kernels)" has no calls)
row = re.compile(r"^(\S.*?)\s+(?:[\d.]+\s+)?([\d.]+)\s+([\d.]+)%\s*$")
outside, outside_top = {}, {}
print(f"share of the trainer's step outside the GEMMs (--profile, T={tmax}):")
for p in precisions:
    groups, total_pct = {}, 0.0
    for line in open(f"{res}.prof.{p}"):
        mt = row.match(line.strip())
        if not mt or "linear" in mt.group(1) or mt.group(1).startswith("gemm"):
            continue
        name = re.sub(r"_(forward|backward)$", "", mt.group(1))
        groups[name] = groups.get(name, 0.0) + float(mt.group(3))
        total_pct += float(mt.group(3))
    top = dict(sorted(groups.items(), key=lambda kv: -kv[1])[:4])
    outside[p], outside_top[p] = round(total_pct, 1), {k: round(v, 1) for k, v in top.items()}
    print(f"  {p}: outside GEMMs {total_pct:.1f}% (" + ", ".join(f"{k} {v:.1f}%" for k, v in top.items()) + ")")

print(json.dumps({"speedup": tb / cb, "speedup_by_precision": per_prec, "speedup_at": equal,
                  "trainer_best_step_s": cb, "trainer_best_precision": bc[1], "trainer_best_threads": bc[2],
                  "torch_best_step_s": tb, "torch_best_precision": bt[1], "torch_best_threads": bt[2],
                  "bf16_speedup": bf_over_fp, "trainer_thread_scaling": scaling,
                  "gflop_per_step": gflop, "trainer_gflops_per_s": med[bc]["gflops_per_s"],
                  "peak_gflops_per_s": peak, "torch_blas": ",".join(blas),
                  "outside_gemm_pct": outside, "outside_gemm_top_pct": outside_top,
                  "median_step_s": {f"{s}_{p}_T{t}": m["step_s"] for (s, p, t), m in sorted(med.items())},
                  "spread_step_s": {f"{s}_{p}_T{t}": [m["min"], m["max"]] for (s, p, t), m in sorted(med.items())}}))
PYEOF
