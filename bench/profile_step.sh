#!/usr/bin/env bash
# profile_step.sh - where the CPU time of one training step goes, by `perf`
# (sampling, independent of the trainer's own --profile clocks): the share
# of oneDNN's GEMM micro-kernels, of the operand copies and packing around
# them, of the trainer's own kernels, of the OpenMP runtime (threads waiting
# at barriers) and of the kernel, at the reference config configs/bench.json
# (B=8 rows of L=256), in each precision.
#
# For each trainer binary in BINS (default "bin"; give an older build's
# bin/ as well to see before and after) and each precision in PRECISIONS
# (default "fp32 bf16"), it times `trainer bench --threads THREADS` (default
# 2) with one timed step (the set-up: weights, batch, warm-up step, and one
# step), then records it with 1 + STEPS (default 15) under `perf record -e
# cpu-clock -D <that time and one step more>`: the samples start after
# the set-up, so start-up costs such as page zeroing do not show. oneDNN
# names its JIT code for perf (DNNL_JIT_PROFILE=2 writes /tmp/perf-PID.map,
# removed afterwards); JIT code it does not name is "oneDNN JIT (unnamed)":
# in float32, some of dnnl_sgemm's kernels.
#
# Prints per precision: the share of the recorded CPU time (both threads)
# and CPU milliseconds per step (the share times the recorded run's median
# step and the thread count) for each group and for the largest symbols,
# one column per binary. Needs perf (Debian: linux-perf) and
# kernel.perf_event_paranoid <= 2 for a process of one's own.
#
# Knobs: BINS, PRECISIONS, THREADS, STEPS, CFG (default configs/bench.json),
# FREQ (samples per second per thread, default 1999), TOP (symbols listed,
# default 16).
set -u
BINS=$(for b in ${BINS:-bin}; do case $b in /*) echo "$b" ;; *) echo "$PWD/$b" ;; esac; done)
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
PRECISIONS=${PRECISIONS:-"fp32 bf16"}
THREADS=${THREADS:-2}
STEPS=${STEPS:-15}
CFG=${CFG:-configs/bench.json}
FREQ=${FREQ:-1999}
TOP=${TOP:-16}

command -v perf >/dev/null || { echo "error: perf not found (apt-get install linux-perf)" >&2; exit 1; }
for b in $BINS; do [ -x "$b/trainer" ] || { echo "error: $b/trainer not found (build it first)" >&2; exit 1; }; done
[ -f "$CFG" ] || { echo "error: $CFG missing" >&2; exit 1; }

t=$(mktemp -d)
trap 'find /tmp -maxdepth 1 -name "perf-*.map" -newer "$t/start" -delete 2>/dev/null; rm -rf "$t"' EXIT
touch "$t/start"

# bench BIN P STEPS OUT [PERF...]: one bench run (under PERF... if given), its JSON in OUT.json
bench() {
    local bin=$1 p=$2 steps=$3 out=$4; shift 4
    DNNL_JIT_PROFILE=2 OMP_NUM_THREADS=$THREADS "$@" "$bin/trainer" bench --config "$CFG" --batch-rows 8 \
        --seq-len 256 --steps "$steps" --threads "$THREADS" --precision "$p" >"$out.json" 2>"$out.err" ||
        { echo "error: $bin/trainer bench ($p, $steps steps${1:+, under $1}) failed:" >&2; tail -n 3 "$out.err" >&2; exit 1; }
}

# record BIN P OUT: perf's samples per (dso, symbol) after the set-up, as "count<TAB>dso<TAB>symbol"
record() {
    local bin=$1 p=$2 out=$3 t0 setup_ms
    t0=$EPOCHREALTIME
    bench "$bin" "$p" 1 "$out.setup"
    # a step's time more as margin: under perf the set-up may take longer
    setup_ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v s="$(grep '^{' "$out.setup.json" | sed 's/.*"step_s":\([0-9.]*\).*/\1/')" \
               'BEGIN { printf "%d", (b - a + s) * 1000 }')
    bench "$bin" "$p" $((1 + STEPS)) "$out" perf record -q -e cpu-clock -F "$FREQ" -D "$setup_ms" -o "$t/perf.data" --
    perf report -i "$t/perf.data" --stdio --sort dso,sym -F sample,dso,sym 2>/dev/null |
        sed -n 's/^ *\([0-9][0-9]*\)  *\(.*[^ ]\)  *\[.\] \(.*\)$/\1\t\2\t\3/p' >"$out"
    [ -s "$out" ] || { echo "error: perf report of $bin/trainer bench ($p) gave no samples" >&2; exit 1; }
}

for p in $PRECISIONS; do
    i=0
    for b in $BINS; do
        record "$b" "$p" "$t/$p.$i"
        i=$((i + 1))
    done
done

"$PY" - "$t" "$FREQ" "$TOP" "$THREADS" "$PRECISIONS" $BINS <<'PYEOF'
import collections, json, re, sys
tmp, freq, top, threads, precisions = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    sys.argv[5].split()
bins = sys.argv[6:]

def symbol(dso, sym):
    """The row a sample counts in: one name per function (OpenMP's outlined
    bodies and GCC's clones folded into their function)."""
    unnamed = sym.startswith("0x")
    if dso.startswith("[JIT]"):
        return "oneDNN JIT (unnamed)" if unnamed else "oneDNN " + sym
    if dso == "[kernel.kallsyms]":
        return "kernel"
    if dso.startswith("libgomp"):
        return "OpenMP runtime"
    if unnamed:
        return dso.split(".so")[0]
    return re.sub(r"\.(_omp_fn|part|constprop|isra|cold)(\.\d+)?", "", sym)

def group(name):
    if name.startswith("oneDNN"):
        if "copy" in name or "reorder" in name or "transpose" in name:
            return "operand copies and packing"
        return "GEMM micro-kernels (oneDNN)" if "gemm" in name or "unnamed" in name else "oneDNN, other"
    if name in ("kernel", "OpenMP runtime"):
        return name
    if re.match(r"(cpu_)?round_|pack_blocked|bf16_pairs", name):   # operands rounded or laid out for oneDNN
        return "operand copies and packing"
    return "the trainer's kernels and the rest"

def counts(prefix):
    c = collections.Counter()
    for line in open(prefix):
        n, dso, sym = line.rstrip("\n").split("\t")
        c[symbol(dso, sym)] += int(n)
    return c

def step_s(prefix):
    js = [l for l in open(prefix + ".json") if l.startswith("{")]
    return json.loads(js[-1])["step_s"]

def cell(n, total, ms_per_sample):
    return f"{100 * n / total:8.1f}% {n * ms_per_sample:7.1f} ms"

for p in precisions:
    runs = [counts(f"{tmp}/{p}.{i}") for i in range(len(bins))]
    totals = [sum(r.values()) for r in runs]
    steps_s = [step_s(f"{tmp}/{p}.{i}") for i in range(len(bins))]
    # CPU ms per step of one sample: the run's CPU time per step spread over its samples
    scale = [s * 1e3 * threads / tot for s, tot in zip(steps_s, totals)]
    print(f"\n{p}, {threads} threads: share of the recorded CPU time, CPU ms per step")
    print("  median step under perf: " + ", ".join(f"{b} {s:.3f} s ({tot} samples, {tot / (s * threads * freq):.1f} steps)"
                                                   for b, s, tot in zip(bins, steps_s, totals)))
    header = "".join(f"{b[-19:]:>19s}" for b in bins)
    groups = [collections.Counter() for _ in runs]
    for g, r in zip(groups, runs):
        for k, v in r.items():
            g[group(k)] += v
    for title, rows in (("group", groups), ("symbol", runs)):
        print(f"  {title:42s}{header}")
        names = sorted(set().union(*rows), key=lambda k: -max(r[k] / tot for r, tot in zip(rows, totals)))
        for name in names[:top]:
            print(f"  {name[:42]:42s}" + "".join(cell(r[name], tot, sc) for r, tot, sc in zip(rows, totals, scale)))
PYEOF
