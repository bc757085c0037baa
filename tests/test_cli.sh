#!/usr/bin/env bash
# test_cli.sh - the command line of every program, from its flag tables
# (common/cli.h): `PROG --help` and `PROG COMMAND --help` (and -h) print the
# help on stdout and exit 0 (which also checks every default against its
# own range); a bad flag, value, range, choice or a missing required flag is
# one line on stderr naming the flag, with the usage, and exit 2; the launch
# and data scripts answer --help with their header and start nothing; the
# READMEs' command summaries are those the tables generate (make cli-docs).
set -u
BIN=${BIN:-bin}
. "$(dirname "$0")/check.sh"
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

for p in trainer vae_service dataloader bench_dataloader; do
    "$BIN/$p" --help >"$t/help" 2>&1
    check "$p --help exits 0 ($?) with the usage and its commands" \
        sh -c "head -1 '$t/help' | grep -q '^usage: $p COMMAND' && grep -q '^commands:' '$t/help'"
    "$BIN/$p" -h >"$t/h" 2>&1
    check "$p -h is --help" cmp -s "$t/help" "$t/h"
    "$BIN/$p" >"$t/none.out" 2>"$t/none.err"
    check "$p without a command exits 2 ($?) with one line of usage" \
        sh -c "[ ! -s '$t/none.out' ] && [ \$(wc -l <'$t/none.err') -eq 1 ] && grep -q 'usage: $p COMMAND' '$t/none.err'"
    bad "$p with an unknown command" "unknown command 'bogus'" "$BIN/$p" bogus
    sed -n '/^commands:/,/^$/{/^  /p}' "$t/help" | cut -c3-18 | sed 's/ *$//' >"$t/commands"
    check "$p lists its commands" [ -s "$t/commands" ]
    while read -r cmd; do
        # shellcheck disable=SC2086
        "$BIN/$p" $cmd --help >"$t/c.out" 2>"$t/c.err"
        rc=$?
        check "$p $cmd --help exits 0 ($rc): usage, summary, flags with help lines" \
            sh -c "[ $rc -eq 0 ] && [ ! -s '$t/c.err' ] && head -1 '$t/c.out' | grep -q '^usage: $p $cmd ' &&
                   grep -q '^flags:' '$t/c.out' && ! grep -q '^  --[a-z-]* *\$' '$t/c.out'"
        # shellcheck disable=SC2086
        bad "$p $cmd: an unknown flag" "unknown argument '--no-such-flag'; usage: $p $cmd" "$BIN/$p" $cmd --no-such-flag
    done <"$t/commands"
done

# Values checked against the tables before anything runs.
TR=$BIN/trainer
bad "an integer below its range" "--steps 0: expected an integer >= 1" "$TR" train --steps 0
bad "not an integer" "--steps 2.5: expected an integer >= 1" "$TR" train --steps 2.5
bad "a number outside an open range" "--lr 0: expected a number > 0" "$TR" train --lr 0
bad "a number outside a closed interval" "--caption-first 1.5: expected a number in [0, 1]" \
    "$BIN/dataloader" serve --text x --tokenizer y --caption-first 1.5
bad "not a number" "--top-p abc: expected a number in (0, 1]" "$TR" sample --top-p abc
bad "a choice not listed" "--sampler euler: expected ddpm or ddim" "$TR" sample --sampler euler
bad "a flag without its value" "--steps needs a value" "$TR" train --steps
bad "a missing required flag" "missing --config" "$TR" init --out "$t/x"
bad "a positional argument" "unknown argument 'stray'" "$BIN/vae_service" encode stray
bad "a flag given twice (neither value would be right to take)" "--precision given more than once" \
    "$TR" bench --config configs/bench.json --precision fp32 --precision bf16
bad "a switch given twice" "--profile given more than once" "$TR" bench --config x --profile --profile
"$TR" train --steps 1 --threads 1 --config /nonexistent.json --help >"$t/h" 2>&1
check "--help wins over the other flags (exit $?), and nothing runs" grep -q '^usage: trainer train' "$t/h"

# The scripts: --help prints the header and starts nothing.
for s in launch/train.sh launch/pipeline.sh launch/learn.sh launch/ablate.sh launch/report.sh \
         launch/plot_metrics.sh data/fetch-images.sh data/fetch-text.sh docs/cli_docs.sh; do
    # in a session of its own, so that what it leaves behind can be told
    # from other programs running on the machine
    setsid timeout 10 bash "$s" --help >"$t/s.out" 2>"$t/s.err" &
    sid=$!
    wait $sid
    rc=$?
    check "$s --help exits 0 ($rc) with its header" \
        sh -c "[ $rc -eq 0 ] && [ ! -s '$t/s.err' ] && head -1 '$t/s.out' | grep -q '^$(basename "$s") - '"
    left=$(pgrep -c -s "$sid" || true)
    check "... and leaves no process running ($left)" [ "$left" -eq 0 ]
done

check "the READMEs' command summaries are the tables' (docs/cli_docs.sh --check)" \
    env BIN="$BIN" docs/cli_docs.sh --check
[ $fails -eq 0 ]
