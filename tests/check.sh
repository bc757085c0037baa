# check.sh - the reporting helpers of the shell tests, sourced: `ok NAME`,
# `fail NAME` (counted in $fails), `check NAME COMMAND...` (ok when the
# command succeeds) and `bad NAME TEXT COMMAND...` (ok when the command exits
# 2 with exactly one stderr line containing TEXT: the project's bad-input
# contract). tests/run.sh counts the "ok" and "FAIL" lines.
fails=0
ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }
bad() {
    local name=$1 want=$2 err rc lines; shift 2
    err=$(mktemp)
    "$@" >/dev/null 2>"$err"
    rc=$?; lines=$(wc -l <"$err")
    if [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && grep -qF -- "$want" "$err"; then ok "$name: exit 2, one line ($(cat "$err"))"
    else fail "$name: rc $rc, $lines lines: $(head -c 300 "$err")"; fi
    rm -f "$err"
}
