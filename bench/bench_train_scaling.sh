#!/usr/bin/env bash
# bench_train_scaling.sh - data-parallel training on this machine, in one run:
#   1. positions/s of 1 rank x 1 thread against 2 ranks x 1 thread, each rank
#      with the same rows (configs/bench.json, 8 rows x 256 positions,
#      generated): scaling = pos/s(2 ranks) / (2 x pos/s(1 rank));
#   2. the share of the gradient reduction hidden behind backward: the time
#      ranks wait for it with buckets started during backward, against
#      --no-overlap (every bucket after backward): hidden = 1 - on / off.
# Step times are medians over the steps after the first two (metrics.jsonl);
# REPEATS (default 2) runs per setting, ranges printed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
REPEATS=${REPEATS:-2}; STEPS=${STEPS:-12}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
export OMP_WAIT_POLICY=passive
MPI=(mpirun --allow-run-as-root --oversubscribe --bind-to core -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY)
args=(train --config configs/bench.json --batch-rows 8 --seq-len 256 --steps "$STEPS" --threads 1 --log-every 1000)

# median of a metrics field over steps 3..: prints it
field() { /usr/bin/python3 -c "
import json, statistics, sys
v = [json.loads(l)[sys.argv[2]] for l in open(sys.argv[1])][2:]
print(f"{statistics.median(v):.4g}")" "$1" "$2"; }

for r in $(seq "$REPEATS"); do
    OMP_NUM_THREADS=1 "$BIN/trainer" "${args[@]}" --ckpt-dir "$t/one$r" >/dev/null 2>&1
    "${MPI[@]}" -np 2 "$BIN/trainer" "${args[@]}" --ckpt-dir "$t/two$r" >/dev/null 2>&1
    "${MPI[@]}" -np 2 "$BIN/trainer" "${args[@]}" --ckpt-dir "$t/off$r" --no-overlap >/dev/null 2>&1
    p1=$(field "$t/one$r/metrics.jsonl" positions_per_s); p2=$(field "$t/two$r/metrics.jsonl" positions_per_s)
    on=$(field "$t/two$r/metrics.jsonl" reduce_wait_s); off=$(field "$t/off$r/metrics.jsonl" reduce_wait_s)
    step=$(field "$t/two$r/metrics.jsonl" step_s)
    echo "run $r: 1 rank $p1 positions/s, 2 ranks $p2 positions/s: scaling $(/usr/bin/python3 -c "print(f'{$p2 / (2 * $p1):.3f}')");" \
         "reduction wait per step: overlapped $on s, after backward $off s: hidden $(/usr/bin/python3 -c "print(f'{1 - $on / $off:.2f}' if $off > 0 else 'n/a')")" \
         "(2-rank step $step s)"
done
