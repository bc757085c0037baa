#!/usr/bin/env bash
# bench_checkpoint.sh - a checkpoint's save and load time against the raw
# disk write speed, in one run on this machine: `dd conv=fsync` of the same
# number of bytes into the same folder, then bin/bench_checkpoint (weights +
# Adam m, v of a synthetic model of MB megabytes of weights; default 64, so
# 192 MB per save). REPEATS (default 3) runs, medians. DIR (default a temp
# folder under /tmp) picks the disk. Prints MB/s of each and the ratios.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
MB=${MB:-64}
REPEATS=${REPEATS:-3}
[ -x "$BIN/bench_checkpoint" ] || { echo "error: $BIN/bench_checkpoint not found (run make)" >&2; exit 1; }
t=$(mktemp -d ${DIR:+"$DIR/bench_ckpt.XXXXXX"})
trap 'rm -rf "$t"' EXIT
total=$((3 * MB))
dd_s=()
for ((k = 0; k < REPEATS; k++)); do
    start=$(date +%s.%N)
    dd if=/dev/zero of="$t/dd" bs=1M count=$total conv=fsync 2>/dev/null
    dd_s+=("$(echo "$(date +%s.%N) - $start" | bc -l)")
    rm -f "$t/dd"
done
dd_med=$(printf '%s\n' "${dd_s[@]}" | sort -g | sed -n "$((REPEATS / 2 + 1))p")
json=$("$BIN/bench_checkpoint" --dir "$t/ckpt" --mb "$MB" --repeats "$REPEATS") || exit 1
python3 - "$json" "$dd_med" "$total" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); dd_s = float(sys.argv[2]); mb = r["bytes"] / 2**20
dd_rate, save_rate, load_rate = float(sys.argv[3]) / dd_s, mb / r["save_s"], mb / r["load_s"]
print(f"dd conv=fsync : {dd_rate:8.1f} MB/s ({sys.argv[3]} MB in {dd_s:.3f} s)")
print(f"checkpoint save: {save_rate:8.1f} MB/s ({mb:.0f} MB in {r['save_s']:.3f} s), {save_rate / dd_rate:.2f}x dd")
print(f"checkpoint load: {load_rate:8.1f} MB/s ({mb:.0f} MB in {r['load_s']:.3f} s, page cache, CRC32C of every file), {load_rate / dd_rate:.2f}x dd")
print(json.dumps({"mb": round(mb), "dd_mb_s": round(dd_rate, 1), "save_mb_s": round(save_rate, 1),
                  "load_mb_s": round(load_rate, 1), "save_vs_dd": round(save_rate / dd_rate, 3)}))
PY
