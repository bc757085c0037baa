#!/usr/bin/env bash
# cli_docs.sh - the command summaries in the READMEs, generated from the
# programs' flag tables (common/cli.h) so that they cannot drift:
#   README.md                 `PROG --help` of trainer, vae_service, dataloader
#   trainer/README.md, ...    `PROG COMMAND --help` of each of its commands
# each between the lines <!-- commands:begin --> and <!-- commands:end -->.
#   docs/cli_docs.sh          rewrites the blocks (make cli-docs)
#   docs/cli_docs.sh --check  exits 1, naming the file, when a block is stale
. "$(dirname "$0")/../launch/help.sh"
script_help "$@"
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
check=0
[ "${1:-}" = --check ] && check=1
stale=0

# The block's new text on stdout.
program_help() { for p in trainer vae_service dataloader; do printf '```\n'; "$BIN/$p" --help; printf '```\n'; done; }
command_help() {
    # the names are the list's first column, 16 wide ("tokenizer train" is one)
    "$BIN/$1" --help | sed -n '/^commands:/,/^$/{/^  /p}' | cut -c3-18 | sed 's/ *$//' |
        while read -r cmd; do
            printf '### `%s %s`\n```\n' "$1" "$cmd"
            # shellcheck disable=SC2086
            "$BIN/$1" $cmd --help
            printf '```\n\n'
        done
}

# Replaces the block of $1 with stdin.
fill() {
    local file=$1 new tmp
    new=$(cat)
    tmp=$(mktemp)
    awk -v new="$new" '
        /<!-- commands:end -->/ { inside = 0 }
        !inside { print }
        /<!-- commands:begin -->/ { inside = 1; print new }' "$file" >"$tmp"
    grep -q '<!-- commands:begin -->' "$file" || { echo "error: $file: no <!-- commands:begin --> line" >&2; exit 2; }
    if cmp -s "$tmp" "$file"; then rm -f "$tmp"; return; fi
    if [ $check -eq 1 ]; then echo "$file: the command summary is stale (make cli-docs)"; stale=1; rm -f "$tmp"
    else mv "$tmp" "$file"; echo "rewrote $file"; fi
}

program_help | fill README.md
for p in trainer vae_service dataloader; do command_help $p | fill $p/README.md; done
exit $stale
