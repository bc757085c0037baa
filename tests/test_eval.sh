#!/usr/bin/env bash
# test_eval.sh - `trainer eval` on a tiny model overfit on four image-caption
# pairs (tests/tiny_run.sh): it must see the link both ways (caption
# retrieval and prompt retrieval at 100%, large caption and image gains),
# while the same model untrained shows none (gains near zero); the figures do
# not depend on the thread or rank count (bit for bit); the output file is
# the printed JSON; `trainer train --eval-every` appends the same figures to
# metrics.jsonl; bad input exits 2 with one line.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
export OMP_WAIT_POLICY=passive ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
. "$(dirname "$0")/check.sh"
TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

BIN="$BIN" PY="$PY" tests/tiny_run.sh "$t" 2>"$t/tiny_run.err" ||
    { fail "the tiny model is built: $(cat "$t/tiny_run.err")"; exit 1; }
cp "$t/captions.txt" "$t/prompts.txt"
mkdir -p "$t/text" && printf 'a red circle and a blue square.\n\na green ring.\n\n' >"$t/text/part.txt"
EVAL=(eval --vae "$t/vae" --images "$t/img" --n 4 --prompts "$t/prompts.txt" --steps 20 --sampler ddim
      --text "$t/text" --text-docs 8 --seed 7)
fig() { $PY -c "import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

"$TR" "${EVAL[@]}" --ckpt "$t/run" --threads 2 --out "$t/trained.json" >"$t/trained.out" 2>"$t/trained.err"
check "eval of the trained model exits 0 ($(tail -n 1 "$t/trained.err"))" [ -s "$t/trained.json" ]
check "--out holds the printed JSON" cmp -s "$t/trained.json" "$t/trained.out"
cg=$(fig "$t/trained.json" 'd["diffusion_loss"]["caption_gain_pct"]')
ig=$(fig "$t/trained.json" 'd["captioning"]["image_gain_pct"]')
r1=$(fig "$t/trained.json" 'd["captioning"]["retrieval_top1_pct"]')
p1=$(fig "$t/trained.json" 'd["generation"]["prompt_retrieval_top1_pct"]')
check "trained: caption retrieval top-1 $r1% (100 wanted; chance 25%)" $PY -c "import sys; sys.exit(not $r1 == 100)"
check "trained: prompt retrieval of its generated images $p1% (100 wanted)" $PY -c "import sys; sys.exit(not $p1 == 100)"
check "trained: the right caption lowers the diffusion loss by $cg% (> 50)" $PY -c "import sys; sys.exit(not $cg > 50)"
check "trained: the right image lowers the caption loss by $ig% (> 30)" $PY -c "import sys; sys.exit(not $ig > 30)"
check "four timestep buckets with every row counted" $PY -c "
import json, sys; d = json.load(open('$t/trained.json'))['diffusion_loss']
sys.exit(not (len(d['buckets']) == 4 and sum(b['rows'] for b in d['buckets']) == 4 * d['timesteps_per_image']))"
check "text bits per byte and the latent Fréchet distances are finite and positive" $PY -c "
import json, math, sys; d = json.load(open('$t/trained.json'))
v = [d['text']['text_bpb'], d['generation']['latent_fd'], d['generation']['latent_fd_real_halves']]
sys.exit(not all(math.isfinite(x) and x > 0 for x in v))"

# The same model untrained: no link between the modalities.
mkdir -p "$t/untrained"
"$TR" init --config "$t/run/latest/config.json" --out "$t/untrained" --seed 5 >/dev/null
cp "$t/run/latest/tokenizer.model" "$t/run/latest/latent_stats.json" "$t/untrained/"
"$TR" "${EVAL[@]}" --ckpt "$t/untrained" --out "$t/untrained.json" >/dev/null 2>"$t/untrained.err"
ucg=$(fig "$t/untrained.json" 'd["diffusion_loss"]["caption_gain_pct"]')
uig=$(fig "$t/untrained.json" 'd["captioning"]["image_gain_pct"]')
check "untrained: caption gain $ucg% and image gain $uig% near zero (|x| < 2)" \
    $PY -c "import sys; sys.exit(not (abs($ucg) < 2 and abs($uig) < 2))"

# Thread and rank counts: the same figures, bit for bit.
same() { $PY - "$1" "$2" <<'PYEOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for d in (a, b): d.pop("seconds")
sys.exit(a != b)
PYEOF
}
"$TR" "${EVAL[@]}" --ckpt "$t/run" --threads 1 --out "$t/t1.json" >/dev/null 2>&1
check "1 thread gives the figures of 2" same "$t/trained.json" "$t/t1.json"
mpirun --allow-run-as-root --oversubscribe -np 2 "$TR" "${EVAL[@]}" --ckpt "$t/run" --threads 1 --out "$t/r2.json" \
    >/dev/null 2>&1
check "2 MPI ranks give the figures of 1" same "$t/trained.json" "$t/r2.json"

# In training: --eval-every runs the same evaluation on the steps it saves
# (on 2 ranks, from the dataloader) and appends it to metrics.jsonl.
BIN="$BIN" launch/train.sh --ranks 2 --text "$t/text" --latents "$t/lat" --tokenizer "$t/tok.model" \
    --loader-args "--patch-size 2 --seq-len 128 --rows-per-rank 8 --image-fraction 0.6 --caption-first 0.5 --max-caption 16" \
    -- --init-from "$t/run/latest" --steps 6 --lr 1e-3 --warmup 1 --ckpt-dir "$t/ev" --eval-every 3 --vae "$t/vae" \
       --eval-images "$t/img" --eval-n 4 --eval-prompts "$t/prompts.txt" --eval-sampler-steps 20 --eval-text "$t/text" \
    >"$t/ev.log" 2>&1
check "train --eval-every 3: figures at steps 3 and 6 in metrics.jsonl ($(grep -c '"eval"' "$t/ev/metrics.jsonl") lines)" \
    sh -c "[ \"\$(grep '\"eval\"' '$t/ev/metrics.jsonl' | cut -c1-12 | tr '\n' ' ')\" = '{\"step\":3,\"t {\"step\":6,\"t ' ]"
check "... and in the log" grep -q "^eval at step 6: diffusion" "$t/ev.log"
"$TR" eval --ckpt "$t/ev/step_00000006" --vae "$t/vae" --images "$t/img" --n 4 --prompts "$t/prompts.txt" --steps 20 \
    --text "$t/text" --precision bf16 --out "$t/ev6.json" >/dev/null 2>&1    # (the training's precision)
$PY -c "import json, sys; [json.dump(json.loads(l)['eval'], open(sys.argv[2], 'w')) for l in open(sys.argv[1]) if '\"step\":6,\"time' in l]" \
    "$t/ev/metrics.jsonl" "$t/ev6_train.json"
check "the in-training figures of step 6 are those of trainer eval on its checkpoint" same "$t/ev6.json" "$t/ev6_train.json"
launch/plot_metrics.sh "$t/ev/metrics.jsonl" "$t/ev.png" >/dev/null 2>"$t/plot.err"
check "plot_metrics.sh draws the held-out figures too, and no eval line counts as torn" \
    sh -c "[ -s '$t/ev.png' ] && [ -s '$t/ev-eval.png' ] && ! grep -q skipped '$t/plot.err'"
bad "--eval-every without --eval-images" "--eval-images" "$TR" train --config configs/tiny.json --steps 2 --eval-every 1 \
    --ckpt-dir "$t/evbad" --vae "$t/vae"
bad "--eval-images that match nothing, before the first step" "no such files" "$TR" train --config configs/tiny.json \
    --steps 2 --eval-every 1 --ckpt-dir "$t/evbad" --vae "$t/vae" --eval-images "$t/none-*.tar"
check "... and no step was taken" [ ! -e "$t/evbad/step_00000001" ]

# Bad input.
common=(--ckpt "$t/run" --vae "$t/vae")
bad "images that match nothing" "nothing" "$TR" eval "${common[@]}" --images "$t/none-*.tar"
bad "--n 1" "--n" "$TR" eval "${common[@]}" --images "$t/img" --n 1
mkdir -p "$t/empty"
bad "a text folder without .txt files" "no .txt file" "$TR" eval "${common[@]}" --images "$t/img" --text "$t/empty"
echo "a red circle" >"$t/one.txt"
bad "a prompts file of one prompt" "at least 2" "$TR" eval "${common[@]}" --images "$t/img" --prompts "$t/one.txt"
{ echo "a red circle"; printf 'a red circle %.0s' $(seq 60); echo; } >"$t/long.txt"
bad "a prompt longer than the context" "context is 128" "$TR" eval "${common[@]}" --images "$t/img" --prompts "$t/long.txt"
bad "a missing --vae" "--vae" "$TR" eval --ckpt "$t/run" --images "$t/img"
bad "--weights ema on a run without an EMA" "EMA" "$TR" eval "${common[@]}" --images "$t/img" --weights ema
bad "--weights of another kind" "--weights" "$TR" eval "${common[@]}" --images "$t/img" --weights best
exit $((fails > 0))
