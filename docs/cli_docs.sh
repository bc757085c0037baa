#!/usr/bin/env bash
# cli_docs.sh - the command summaries in the READMEs, generated from the
# programs' flag tables (common/cli.h) so that they cannot drift:
#   README.md                 a table of the commands of trainer, vae_service and
#                             dataloader with their one-line summaries (PROG --help)
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

# The commands of $1, "NAME<TAB>SUMMARY" a line: the list of `$1 --help`,
# whose first column is 16 wide ("tokenizer train" is one name).
commands_of() {
    "$BIN/$1" --help | sed -n '/^commands:/,/^$/{/^  /p}' | cut -c3- | sed -E 's/^(.{16}) /\1\t/; s/ *\t/\t/'
}

# The blocks' new text on stdout.
program_table() {
    printf '| command | what it does |\n|---|---|\n'
    for p in trainer vae_service dataloader; do
        commands_of $p | while IFS=$'\t' read -r cmd summary; do printf '| `%s %s` | %s |\n' "$p" "$cmd" "$summary"; done
    done
}
command_help() {
    commands_of "$1" | cut -f1 |
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
    tmp=$(mktemp "$file.XXXXXX")   # beside the file: the mv is a rename
    awk -v new="$new" '
        /<!-- commands:end -->/ { inside = 0 }
        !inside { print }
        /<!-- commands:begin -->/ { inside = 1; print new }' "$file" >"$tmp"
    grep -q '<!-- commands:begin -->' "$file" || { echo "error: $file: no <!-- commands:begin --> line" >&2; exit 2; }
    if cmp -s "$tmp" "$file"; then rm -f "$tmp"; return; fi
    if [ $check -eq 1 ]; then echo "$file: the command summary is stale (make cli-docs)"; stale=1; rm -f "$tmp"
    else mv "$tmp" "$file"; echo "rewrote $file"; fi
}

# (fill reads a redirection, not a pipe: in a pipeline it would run in a
# subshell, and its `stale=1` would be lost)
fill README.md < <(program_table)
for p in trainer vae_service dataloader; do fill $p/README.md < <(command_help $p); done
exit $stale
