#!/usr/bin/env bash
# run.sh - runs every test (bin/tests/test_* programs and tests/test_*.sh
# scripts) and prints the closing line "N passed, N failed".
# A test reports each check as a line "ok NAME" or "FAIL NAME: why"; a test
# that exits non-zero without printing a FAIL line counts as one failure, and
# one that runs past TEST_TIMEOUT seconds (default 1200: the sanitizer build
# is several times slower) is stopped, with its process group, and fails.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
limit=${TEST_TIMEOUT:-1200}
passed=0; failed=0
for t in "$BIN"/tests/test_* tests/test_*.sh; do
    [ -f "$t" ] || continue
    name=$(basename "$t")
    log=$(mktemp)
    start=$(date +%s)
    # timeout signals the whole process group it runs in: a test's servers too
    if [[ "$t" == *.sh ]]; then BIN="$BIN" timeout -k 10 "$limit" bash "$t" >"$log" 2>&1
    else timeout -k 10 "$limit" "$t" >"$log" 2>&1; fi
    rc=$?
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "FAIL $name: timed out after $limit s" >>"$log"
    p=$(grep -c '^ok ' "$log"); f=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $name: exited $rc" >>"$log"; fi
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $name: ran no check" >>"$log"; fi
    passed=$((passed + p)); failed=$((failed + f))
    printf '%-32s %3d ok %3d failed  (%ds)\n' "$name" "$p" "$f" "$(( $(date +%s) - start ))"
    if [ "$f" -ne 0 ]; then grep -E '^FAIL ' "$log" | sed 's/^/    /'; tail -n 5 "$log" | sed 's/^/    | /'; fi
    rm -f "$log"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
