# check.sh - the reporting helpers of the shell tests, sourced: `ok NAME`,
# `fail NAME` (counted in $fails) and `check NAME COMMAND...` (ok when the
# command succeeds). tests/run.sh counts the "ok" and "FAIL" lines.
fails=0
ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }
