#!/usr/bin/env bash
# plot_metrics.sh - the curves of a training run as PNGs, from the run's
# CKPT_DIR/metrics.jsonl (one JSON object per step, written by rank 0):
#   OUT.png       LM loss, diffusion loss and the total against the step; with
#                 --eval-every, the held-out diffusion loss (own caption) and
#                 caption loss (after its own image) as points
#   OUT-eval.png  (with --eval-every) the held-out figures against the step:
#                 caption gain, image gain, caption and prompt retrieval top-1
#   launch/plot_metrics.sh CKPT_DIR/metrics.jsonl [OUT.png]   (default: beside the metrics, loss.png)
. "$(dirname "$0")/help.sh"
script_help "$@"
set -euo pipefail
in=${1:?usage: plot_metrics.sh METRICS.jsonl [OUT.png]}
out=${2:-$(dirname "$in")/loss.png}
[ -s "$in" ] || { echo "error: $in: missing or empty" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "error: gnuplot not found (Debian package gnuplot-nox)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A resumed run appends again from its checkpoint's step: keep each step's last line.
/usr/bin/python3 - "$in" "$tmp" <<'PYEOF'
import json, sys
# A line torn by a killed run is skipped and named; a file with no metrics at all is an error.
rows, evals, torn = {}, {}, []
for n, line in enumerate(open(sys.argv[1]), 1):
    try:
        m = json.loads(line)
        if "eval" in m:
            e = m["eval"]
            gen = e.get("generation", {})
            evals[int(m["step"])] = (e["diffusion_loss"]["own_caption"], e["captioning"]["own_image_loss"],
                                     e["diffusion_loss"]["caption_gain_pct"], e["captioning"]["image_gain_pct"],
                                     e["captioning"]["retrieval_top1_pct"], gen.get("prompt_retrieval_top1_pct", "NaN"),
                                     e["captioning"]["chance_top1_pct"])
        else:
            rows[int(m["step"])] = (m["loss"], m["lm_loss"], m["diffusion_loss"])
    except (ValueError, KeyError, TypeError):
        torn.append(n)
if torn:
    print(f"plot_metrics: {sys.argv[1]}: skipped {len(torn)} unreadable line(s): {torn[:10]}", file=sys.stderr)
if not rows:
    print(f"error: {sys.argv[1]}: no metrics lines", file=sys.stderr)
    sys.exit(2)
with open(sys.argv[2] + "/steps.tsv", "w") as f:
    for s in sorted(rows):
        print(s, *rows[s], sep="\t", file=f)
with open(sys.argv[2] + "/eval.tsv", "w") as f:
    for s in sorted(evals):
        print(s, *evals[s], sep="\t", file=f)
PYEOF
heldout=""
[ -s "$tmp/eval.tsv" ] && heldout=", \"$tmp/eval.tsv\" using 1:2 with linespoints pt 7 title \"held-out diffusion loss (own caption)\", \
     \"\" using 1:3 with linespoints pt 5 title \"held-out caption loss (after its image)\""
gnuplot <<GP
set terminal png size 900,500
set output "$out"
set title "$(dirname "$in")"
set xlabel "step"
set ylabel "loss"
set key top right
set grid
set logscale y
plot "$tmp/steps.tsv" using 1:2 with lines lw 2 title "loss (LM + lambda x diffusion)", \
     "" using 1:3 with lines title "LM loss", \
     "" using 1:4 with lines title "diffusion loss"$heldout
GP
echo "wrote $out"
[ -s "$tmp/eval.tsv" ] || exit 0
gnuplot <<GP
set terminal png size 900,700
set output "${out%.png}-eval.png"
set multiplot layout 2,1 title "held-out figures, $(dirname "$in")"
set grid
set key top left
set ylabel "gain %"
plot "$tmp/eval.tsv" using 1:4 with linespoints pt 7 title "caption gain (diffusion loss, right vs wrong caption)", \
     "" using 1:5 with linespoints pt 5 title "image gain (caption loss, right vs wrong image)", 0 with lines dt 2 notitle
set xlabel "step"
set ylabel "top-1 %"
plot "$tmp/eval.tsv" using 1:6 with linespoints pt 7 title "caption retrieval (of 16)", \
     "" using 1:7 with linespoints pt 5 title "prompt retrieval of generated images (of 16)", \
     "" using 1:8 with lines dt 2 title "chance"
unset multiplot
GP
echo "wrote ${out%.png}-eval.png"
