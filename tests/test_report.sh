#!/usr/bin/env bash
# test_report.sh - launch/report.sh on a tiny model overfit on four
# image-caption pairs (tests/tiny_run.sh), its images packed as the train,
# val and test shards: the report has every section and picture; the sample
# grid has a row per prompt and a column pair per checkpoint; the captions
# it prints are the model's (here the true ones, which it learned); a run
# folder without metrics exits 2. And launch/ablation_table.py on made-up
# evaluations of two arms.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
export OMP_WAIT_POLICY=passive ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
. "$(dirname "$0")/check.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

BIN="$BIN" PY="$PY" tests/tiny_run.sh "$t" 2>"$t/tiny_run.err" ||
    { fail "the tiny model is built: $(cat "$t/tiny_run.err")"; exit 1; }
mkdir -p "$t/R" "$t/data"
ln -s "$t/run" "$t/R/ckpt"; ln -s "$t/vae" "$t/R/vae"
for split in train val test; do tar cf "$t/data/$split-00000.tar" -C "$t/img" .; done
cp "$t/captions.txt" "$t/prompts.txt"
BIN="$BIN" launch/report.sh "$t/R" --data "$t/data" --prompts "$t/prompts.txt" >"$t/report.log" 2>&1
check "report.sh exits 0 ($(tail -n 1 "$t/report.log"))" [ -s "$t/R/report.md" ]
for png in loss samples captions-val captions-test; do
    check "report/$png.png is a PNG" sh -c "head -c 8 '$t/R/report/$png.png' | od -c | grep -q 'P   N   G'"
done
for section in "## Loss curves" "## Samples" "## Captions of held-out images" "## Settings and speed"; do
    check "report.md has '$section'" grep -qF "$section" "$t/R/report.md"
done
steps=$(ls -d "$t/run"/step_* | wc -l)
check "samples.png: 4 prompt rows, the training image and 2 samples of each of $steps checkpoint(s)" $PY -c "
from PIL import Image; import sys
w, h = Image.open('$t/R/report/samples.png').size
sys.exit(not (w == 2 * ((1 + 2 * $steps) * 68 + 4) and h == 2 * (16 + 4 * 68 + 4)))"
for i in 0 1 2 3; do
    want=$(cat "$t/img/k$i.txt")
    check "the captions table prints the model's caption of k$i ('$want', as trained)" \
        grep -qF "| $want | $want |" "$t/R/report.md"
done
check "the settings table names the model and the batch" \
    sh -c "grep -q '^| model | 0.[0-9]* M parameters' '$t/R/report.md' && grep -q '^| batch | 1 ranks x 1 x 8 rows x 128 positions' '$t/R/report.md'"
# The ablation table: arms' mean over seeds, and the paper's direction.
$PY - "$t/abl" <<'PYEOF'
import json, os, sys
for arm, loss in (("base", 0.20), ("causal", 0.25)):
    for seed in (0, 1):
        d = os.path.join(sys.argv[1], f"{arm}-s{seed}", "ckpt")
        os.makedirs(d)
        open(os.path.join(d, "metrics.jsonl"), "w").write('{"step":10,"time_s":60,"step_s":0.2}\n')
        e = {"diffusion_loss": {"own_caption": loss + 0.01 * seed, "caption_gain_pct": 1.0},
             "captioning": {"image_gain_pct": 2.0, "retrieval_top1_pct": 10.0},
             "generation": {"latent_fd": 100.0, "prompt_retrieval_top1_pct": 12.5}}
        for split in ("val", "test"):
            json.dump(e, open(os.path.join(d, "..", f"{split}.json"), "w"))
PYEOF
launch/ablation_table.py "$t/abl" >"$t/abl.md" 2>"$t/abl.err"
check "ablation table: the arms' mean over 2 seeds, each seed in brackets" grep -qF "| val diffusion loss | 0.2050 (0.2000, 0.2100) | 0.2550 (0.2500, 0.2600) |" "$t/abl.md"
check "ablation table: bidirectional's lower loss is 'as the paper', equal FDs 'no difference'" \
    sh -c "grep '^| causal -> bidirectional' '$t/abl.md' | grep -q 'val diffusion loss 0.255 -> 0.205 (0.25..0.26 -> 0.2..0.21; as the paper).*latent FD (val) 100 -> 100 (100..100 -> 100..100; no difference)'"
check "ablation table: rows of arms not run are left out" sh -c "! grep -q '^| noise limit' '$t/abl.md'"

mkdir -p "$t/norun"
bad "a folder that is no training run" "metrics.jsonl" launch/report.sh "$t/norun"
exit $((fails > 0))
