#!/usr/bin/env bash
# test_launch.sh - the launch scripts and the trainer's faults, through real
# processes: launch/train.sh runs a loader and 2 trainer ranks to the end;
# Ctrl-C (SIGTERM to the script) makes the ranks finish their step, save
# and exit 0, and the loader stops; a loader killed and restarted mid-run leaves the trainers' losses
# exactly those of an undisturbed run (so they got the same rows: no step
# skipped or repeated); with --restarts, a loader and a rank killed are
# started again and the run ends with the undisturbed losses;
# launch/plot_metrics.sh draws the run's loss curves.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
. "$(dirname "$0")/check.sh"
export BIN OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
DL=$(realpath "$BIN/dataloader"); TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
pids=""
trap 'for p in $pids; do kill -9 $p 2>/dev/null; done; rm -rf "$t"' EXIT

tests/loader_data.sh "$t"
check "the test data is built ($?)" [ $? -eq 0 ]
printf '{"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":64,"max_image_patches":16}\n' >"$t/model.json"
data=(--text "$t/text" --latents "$t/lat" --tokenizer "$t/tok.model" --loader-args "--patch-size 2 --rows-per-rank 2 --seq-len 128")
args=(--config "$t/model.json" --lr 3e-3 --warmup 2 --threads 1 --log-every 1)

launch/train.sh --ranks 2 "${data[@]}" -- "${args[@]}" --steps 12 --ckpt-dir "$t/run" >"$t/run.log" 2>&1
check "launch/train.sh: 2 ranks train to the end against the loader ($?)" grep -q '^step   12/12' "$t/run.log"
check "... and save the last step" [ -d "$t/run/step_00000012" ]
check "... with the tokenizer and the latent statistics in the checkpoint" \
    [ -f "$t/run/step_00000012/tokenizer.model" -a -f "$t/run/step_00000012/latent_stats.json" ]
launch/plot_metrics.sh "$t/run/metrics.jsonl" "$t/loss.png" >/dev/null
check "plot_metrics.sh draws a PNG" sh -c "head -c 8 '$t/loss.png' | od -c | grep -q 'P   N   G'"
printf '{"step":13,"loss":4.2,"lm_lo' >>"$t/run/metrics.jsonl"          # as a run killed mid-line leaves it
launch/plot_metrics.sh "$t/run/metrics.jsonl" "$t/loss2.png" >/dev/null 2>"$t/plot.err"
check "plot_metrics.sh skips a torn line and names it" sh -c "[ -s '$t/loss2.png' ] && grep -q 'skipped 1 unreadable line(s): \[13\]' '$t/plot.err'"
launch/plot_metrics.sh "$t/text/dataset.json" "$t/x.png" >/dev/null 2>&1
check "plot_metrics.sh of a file with no metrics exits 2 ($?)" [ $? -eq 2 ]

# Ctrl-C, sent as SIGTERM (which the script treats the same): a script started
# in the background by a non-interactive shell ignores SIGINT and cannot trap
# it. The ranks finish their step and save; the loader stops.
launch/train.sh --ranks 2 "${data[@]}" -- "${args[@]}" --steps 1000000 --ckpt-dir "$t/int" >"$t/int.log" 2>&1 &
pid=$!; pids="$pids $pid"
for _ in $(seq 600); do grep -q '^step *[2-9][0-9]*/' "$t/int.log" && break; sleep 0.05; done
kill -TERM $pid; wait $pid; rc=$?
check "Ctrl-C (SIGTERM): launch/train.sh exits 0 ($rc)" [ $rc -eq 0 ]
check "Ctrl-C: every rank finished its step and the run saved it" sh -c "grep -q 'stopped by a signal' '$t/int.log' && [ -e '$t/int/latest' ]"
check "Ctrl-C: no loader or trainer is left" sh -c "! pgrep -f '[b]in/(dataloader serve|trainer train).*$t/' >/dev/null"
launch/train.sh --ranks 2 "${data[@]}" -- "${args[@]}" --steps 1000000 --ckpt-dir "$t/int" --resume auto >"$t/more.log" 2>&1 &
pid=$!; pids="$pids $pid"
for _ in $(seq 600); do grep -q '^step' "$t/more.log" && break; sleep 0.05; done
kill -TERM $pid; wait $pid
check "a rerun with --resume auto continues from the saved step" grep -q 'resuming .*int/step_' "$t/more.log"
launch/train.sh --ranks 2 "${data[@]/--seq-len 128/--seq-len 128 --seed 9}" -- "${args[@]}" --steps 1000000 \
    --ckpt-dir "$t/int" --resume auto >"$t/other.log" 2>&1
check "resuming on other loader data is refused (exit $?)" grep -q 'trained on loader data [0-9a-f]*, but the loader now serves [0-9a-f]*' "$t/other.log"

# The loader killed and restarted mid-run: the same losses as without. A
# wider model than above, so that a step takes milliseconds even on a fast
# machine and the run cannot end between its step 2 and the kill.
printf '{"hidden_size":128,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":256,"max_image_patches":16}\n' >"$t/wide.json"
args=(--config "$t/wide.json" --lr 3e-3 --warmup 2 --threads 1 --log-every 1)
serve() { "$DL" serve --text "$t/text" --latents "$t/lat" --tokenizer "$t/tok.model" --patch-size 2 --rows-per-rank 2 \
              --seq-len 128 --endpoint "tcp://127.0.0.1:$1" >"$t/serve$1.out" 2>&1 & pids="$pids $!"; loader=$!; }
port=$((20000 + RANDOM % 20000))
serve $port
mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS -x ASAN_OPTIONS \
    "$TR" train --loader "tcp://127.0.0.1:$port" "${args[@]}" --steps 40 --ckpt-dir "$t/calm" >"$t/calm.log" 2>&1
kill $loader; wait $loader 2>/dev/null
serve $port
mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS -x ASAN_OPTIONS \
    "$TR" train --loader "tcp://127.0.0.1:$port" "${args[@]}" --steps 40 --ckpt-dir "$t/restart" >"$t/restart.log" 2>&1 &
run=$!; pids="$pids $run"
for _ in $(seq 1500); do grep -q '^step *[2-9]/' "$t/restart.log" && break; sleep 0.02; done
kill -9 $loader; wait $loader 2>/dev/null
check "loader restart: the loader was killed before the run's end" [ ! -e "$t/restart/metrics.jsonl" -o "$(wc -l <"$t/restart/metrics.jsonl")" -lt 30 ]
# the trainers wait for rows meanwhile (2 s timeout) and say so; under load that can take longer
for _ in $(seq 400); do grep -q 'waiting for the dataloader' "$t/restart.log" && break; sleep 0.05; done
serve $port
wait $run
check "loader restart: both runs end, 40 steps each ($?)" \
    [ "$(wc -l <"$t/calm/metrics.jsonl")" -eq 40 -a "$(wc -l <"$t/restart/metrics.jsonl")" -eq 40 ]
check "loader restart: the trainers said they were waiting" grep -q 'waiting for the dataloader at tcp://127.0.0.1:' "$t/restart.log"
# From metrics.jsonl, which rank 0 writes itself: in the log, mpirun may
# splice another rank's "waiting" line into a step line.
check "loader restart: every step's 40 losses equal the undisturbed run's" \
    diff <(sed 's/,"lr".*//' "$t/calm/metrics.jsonl") <(sed 's/,"lr".*//' "$t/restart/metrics.jsonl")
kill $loader 2>/dev/null

# --restarts: the loader and then a rank killed with kill -9; train.sh starts
# each again (the trainers with --resume auto from their newest checkpoint),
# and the last loss logged for every step is the undisturbed run's.
launch/train.sh --ranks 2 --restarts 3 "${data[@]}" -- "${args[@]}" --steps 40 --ckpt-dir "$t/re" --ckpt-every 5 \
    >"$t/re.log" 2>&1 &
pid=$!; pids="$pids $pid"
at_step() { for _ in $(seq 1500); do grep -q "^{\"step\":$1," "$t/re/metrics.jsonl" 2>/dev/null && return; sleep 0.02; done; }
at_step 8; pkill -9 -f "^$DL serve .*$t/text"
at_step 20; pkill -9 -n -f "^$TR train .*$t/re "
wait $pid; rc=$?
check "--restarts: the run ends with exit 0 ($rc) after restarting the loader and the trainers" \
    sh -c "[ $rc -eq 0 ] && grep -q 'restart 1/3: dataloader 1 exited' '$t/re.log' && grep -q 'restart 2/3: the trainers exited' '$t/re.log'"
last_losses() { awk -F'[:,]' '/^\{"step":[0-9]+,"loss":[^,]+,/ { loss[$2] = $4 } END { for (s = 1; s <= 40; s++) print s, loss[s] }' "$1"; }
check "--restarts: the last loss logged for every step equals the undisturbed run's" \
    diff <(last_losses "$t/calm/metrics.jsonl") <(last_losses "$t/re/metrics.jsonl")
[ $fails -eq 0 ]
