#!/usr/bin/env bash
# bench_vs_torch.sh - training-step speed of the C trainer against an eager
# PyTorch peer (tests/torch_ref.py bench: forward, backward, clip, AdamW, float32)
# on the reference config configs/bench.json (V=8192, d=384, 6 layers, ffn 1024,
# 8x8x8 latents, 16-patch images), B=8 rows of L=256, about half of the positions
# in images.
#
# Both sides time the same batch file (made once by torch_ref.py make-batch
# --mode bench) under the same OpenMP wait policy (OMP_WAIT_POLICY, default
# passive, the trainer's own default). For each thread count T (THREADS,
# default "1 2") and each of REPEATS runs (default 3), runs `$BIN/trainer
# bench ... --threads T` and the torch bench with OMP_NUM_THREADS=T (the two
# sides interleaved), each for STEPS steps (default 5; both report the median
# step time after one warmup). Prints the median per setting, the ratio at
# equal threads (torch_step_s / trainer_step_s at each T), the best setting of
# each side, speedup = torch_best_step_s / trainer_best_step_s, and the
# trainer's GFLOP/s against the machine's 530 GFLOP/s
# FP32 peak (2 AVX-512 cores; docs/benchmarks.md). The last line is one JSON summary.
# CFG (default configs/bench.json) times another model config the same way.
set -u
BIN=${BIN:-bin}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
STEPS=${STEPS:-5}
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-"1 2"}
ROWS=8
LEN=256
CFG=${CFG:-configs/bench.json}
PEAK=530

if [ ! -x "$BIN/trainer" ]; then echo "error: $BIN/trainer not found (build it first)" >&2; exit 1; fi
if [ ! -f "$CFG" ]; then echo "error: $CFG missing" >&2; exit 1; fi

RES=$(mktemp)
BATCH=$(mktemp --suffix=.safetensors)
trap 'rm -f "$RES" "$RES.err" "$BATCH"' EXIT
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
"$PY" tests/torch_ref.py make-batch --config "$CFG" --out "$BATCH" --rows $ROWS --seq-len $LEN --mode bench >/dev/null ||
    { echo "error: torch_ref.py make-batch failed" >&2; exit 1; }
echo "both sides: the batch $BATCH ($ROWS x $LEN), OMP_WAIT_POLICY=$OMP_WAIT_POLICY"

last_json() { grep '^{' | tail -n 1; }

for r in $(seq 1 "$REPEATS"); do
    for t in $THREADS; do
        out=$(OMP_NUM_THREADS=$t "$BIN/trainer" bench --config "$CFG" --batch-rows $ROWS \
              --seq-len $LEN --steps "$STEPS" --threads "$t" --batch "$BATCH" 2>"$RES.err" | last_json)
        if [ -z "$out" ]; then echo "error: trainer bench (T=$t) printed no JSON:" >&2; tail -n 5 "$RES.err" >&2; exit 1; fi
        echo "trainer $t $out" >>"$RES"
        echo "run $r/$REPEATS trainer T=$t: $out"
        out=$(OMP_NUM_THREADS=$t "$PY" tests/torch_ref.py bench --config "$CFG" --batch-rows $ROWS \
              --seq-len $LEN --steps "$STEPS" --threads "$t" --batch "$BATCH" 2>"$RES.err" | last_json)
        if [ -z "$out" ]; then echo "error: torch bench (T=$t) printed no JSON:" >&2; tail -n 5 "$RES.err" >&2; exit 1; fi
        echo "torch $t $out" >>"$RES"
        echo "run $r/$REPEATS torch   T=$t: $out"
    done
done

"$PY" - "$RES" "$PEAK" "$ROWS" "$LEN" <<'PYEOF'
import json, statistics, sys
res, peak, rows, length = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runs = {}
for line in open(res):
    side, t, js = line.split(" ", 2)
    runs.setdefault((side, int(t)), []).append(json.loads(js))
med = {}
print(f"\nB={rows} L={length}, median over {len(next(iter(runs.values())))} runs:")
for (side, t), rs in sorted(runs.items()):
    m = {"step_s": statistics.median(r["step_s"] for r in rs)}
    for k in ("gflops_per_s", "peak_rss_mb", "memory_ratio"):
        if all(k in r for r in rs):
            m[k] = statistics.median(float(r[k]) for r in rs)
    med[(side, t)] = m
    extra = ""
    if "gflops_per_s" in m:
        extra += f"  {m['gflops_per_s']:7.1f} GFLOP/s ({100 * m['gflops_per_s'] / peak:.1f}% of {peak:.0f})"
    if "peak_rss_mb" in m:
        extra += f"  peak RSS {m['peak_rss_mb']:.0f} MB"
    if "memory_ratio" in m:
        extra += f" ({m['memory_ratio']:.2f}x state + activations)"
    print(f"  {side:8s} T={t}: {m['step_s']:.4f} s/step  {rows * length / m['step_s']:9.1f} positions/s{extra}")
equal = {t: med[("torch", t)]["step_s"] / med[("trainer", t)]["step_s"]
         for (side, t) in med if side == "trainer" and ("torch", t) in med}
for t, r in sorted(equal.items()):
    print(f"at T={t}: torch / trainer = {med[('torch', t)]['step_s']:.4f} / {med[('trainer', t)]['step_s']:.4f} = {r:.2f}x")
best = {}
for side in ("trainer", "torch"):
    k = min((k for k in med if k[0] == side), key=lambda k: med[k]["step_s"])
    best[side] = k
    print(f"best {side}: T={k[1]} {med[k]['step_s']:.4f} s/step")
tb, cb = med[best["torch"]]["step_s"], med[best["trainer"]]["step_s"]
g = med[best["trainer"]].get("gflops_per_s")
print(f"speedup = torch_best_step_s / trainer_best_step_s = {tb:.4f} / {cb:.4f} = {tb / cb:.2f}x")
if g is not None:
    print(f"trainer GFLOP/s at its best setting: {g:.1f} = {100 * g / peak:.1f}% of the {peak:.0f} GFLOP/s FP32 peak")
print(json.dumps({"speedup": tb / cb, "speedup_at_threads": {str(t): r for t, r in sorted(equal.items())}, "trainer_best_step_s": cb, "trainer_best_threads": best["trainer"][1],
                  "torch_best_step_s": tb, "torch_best_threads": best["torch"][1],
                  "trainer_gflops_per_s": g, "peak_gflops_per_s": peak,
                  "median_step_s": {f"{s}_T{t}": m["step_s"] for (s, t), m in sorted(med.items())}}))
PYEOF
