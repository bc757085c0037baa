#!/usr/bin/env bash
# plot_metrics.sh - the loss curves of a training run as one PNG: LM loss,
# diffusion loss and the total against the step, from the run's
# CKPT_DIR/metrics.jsonl (one JSON object per step, written by rank 0).
#   launch/plot_metrics.sh CKPT_DIR/metrics.jsonl [OUT.png]   (default: beside the metrics)
set -euo pipefail
in=${1:?usage: plot_metrics.sh METRICS.jsonl [OUT.png]}
out=${2:-$(dirname "$in")/loss.png}
[ -s "$in" ] || { echo "error: $in: missing or empty" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "error: gnuplot not found (Debian package gnuplot-nox)" >&2; exit 1; }
tsv=$(mktemp)
trap 'rm -f "$tsv"' EXIT
# A resumed run appends again from its checkpoint's step: keep each step's last line.
/usr/bin/python3 - "$in" >"$tsv" <<'PYEOF'
import json, sys
# A line torn by a killed run is skipped and named; a file with no metrics at all is an error.
rows, torn = {}, []
for n, line in enumerate(open(sys.argv[1]), 1):
    try:
        m = json.loads(line)
        rows[int(m["step"])] = (m["loss"], m["lm_loss"], m["diffusion_loss"])
    except (ValueError, KeyError, TypeError):
        torn.append(n)
if torn:
    print(f"plot_metrics: {sys.argv[1]}: skipped {len(torn)} unreadable line(s): {torn[:10]}", file=sys.stderr)
if not rows:
    print(f"error: {sys.argv[1]}: no metrics lines", file=sys.stderr)
    sys.exit(2)
for s in sorted(rows):
    print(s, *rows[s], sep="\t")
PYEOF
gnuplot <<GP
set terminal png size 900,500
set output "$out"
set title "$(dirname "$in")"
set xlabel "step"
set ylabel "loss"
set key top right
set grid
plot "$tsv" using 1:2 with lines lw 2 title "loss (LM + lambda x diffusion)", \
     "" using 1:3 with lines title "LM loss", \
     "" using 1:4 with lines title "diffusion loss"
GP
echo "wrote $out"
