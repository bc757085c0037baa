#!/usr/bin/env bash
# bench_render.sh - the image data build's rasterizer (bin/render_images:
# librsvg and libwebp in-process, one thread per worker) against what it
# replaced: `rsvg-convert -a -w S -h S -b white | cwebp -lossless`, two
# processes per image. The same N square SVGs (twemoji, from data/cache:
# run data/fetch-images.sh first), 64 px, THREADS workers on both sides (the
# commands under xargs -P); prints images/s of each and their ratio, and
# checks that both wrote the same pixels. Env: N (600), THREADS (nproc),
# REPEATS (3, median).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-600} THREADS=${THREADS:-$(nproc)} REPEATS=${REPEATS:-3} S=64
src=$(ls -d data/cache/src/twemoji-svg-*/ 2>/dev/null | head -n 1)
[ -n "$src" ] || { echo "bench_render: no twemoji SVGs in data/cache/src (run data/fetch-images.sh)" >&2; exit 2; }
for tool in rsvg-convert cwebp bin/render_images; do
    command -v "$tool" >/dev/null || { echo "bench_render: $tool not found (scripts/install-deps.sh, make)" >&2; exit 2; }
done
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
find "$src" -name '*.svg' | sort >"$t/all"
head -n "$N" "$t/all" >"$t/in"
n=$(wc -l <"$t/in")
mkdir -p "$t/new" "$t/old"
awk -v o="$t/new" -v s=$S '{f=$0; sub(".*/", "", f); print $0 "\t" o "/" f ".webp\t" s}' "$t/in" >"$t/jobs"
old() { xargs -P "$THREADS" -I{} sh -c 'rsvg-convert -a -w '$S' -h '$S' -b white "$1" | cwebp -quiet -lossless -o "$2/$(basename "$1").webp" -- -' _ {} "$t/old" <"$t/in"; }
new() { bin/render_images --threads "$THREADS" <"$t/jobs"; }
secs() { local t0=$EPOCHREALTIME; "$@"; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
o=$(for _ in $(seq "$REPEATS"); do secs old; done | median)
r=$(for _ in $(seq "$REPEATS"); do secs new; done | median)
/usr/bin/python3 - "$t/old" "$t/new" <<'PY'
import os, sys
import numpy as np
from PIL import Image
a, b = sys.argv[1:]
names = sorted(os.listdir(a))
diff = max(int(np.abs(np.asarray(Image.open(f"{a}/{f}").convert("RGB"), dtype=np.int32) -
                   np.asarray(Image.open(f"{b}/{f}").convert("RGB"), dtype=np.int32)).max()) for f in names)
print(f"pixels: {len(names)} images, largest difference {diff}")
sys.exit(diff != 0 or len(names) != len(os.listdir(b)))
PY
awk -v n="$n" -v o="$o" -v r="$r" -v th="$THREADS" -v s="$S" 'BEGIN {
    printf "rsvg-convert | cwebp: %.0f images/s; render_images: %.0f images/s\n", n / o, n / r
    printf "{\"images\":%d,\"threads\":%d,\"size\":%d,\"old_s\":%.3f,\"new_s\":%.3f,\"ratio\":%.2f}\n", n, th, s, o, r, o / r }'
