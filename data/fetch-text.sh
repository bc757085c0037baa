#!/usr/bin/env bash
# fetch-text.sh - builds the project's text corpus (about 3.8 M words) from
# Debian packages, as documents separated by blank lines:
#
#   data/text/train/PART.txt     the first 97% of each part's documents
#   data/text/heldout/PART.txt   the last 3%, for evaluation
#   data/text/manifest.json      packages, counts and sha256 per file (written last)
#   data/text/LICENSES.md, licenses/   each part's licence and its copyright file
#
# Parts (see data/README.md): bible (King James, one document
# per chapter), austen (Jane Austen's six novels, one per paragraph), wordnet
# (one gloss per synset), fortunes (the non-offensive sets, one per fortune),
# jargon (the Jargon File, one per paragraph), devil (The Devil's Dictionary,
# one per entry). The .deb files are fetched once with `apt-get download`
# into data/cache/deb, checked against the sha256 below and unpacked with
# dpkg-deb (not installed); only Rscript (r-base-core), which reads the
# Austen package's data, is installed when missing.
#
# Usage: data/fetch-text.sh [--out DIR]
# A re-run whose output is complete and up to date does nothing.
. "$(dirname "$0")/../launch/help.sh"
script_help "$@"
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3
out="$here/text"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fetch-text: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
cache="$here/cache/deb"

# package=version and the sha256 of its .deb (Debian 12 "bookworm").
DEBS=(
    "bible-kjv=4.38 75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d"
    "bible-kjv-text=4.38 d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"
    "r-cran-janeaustenr=1.0.0-1 df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
    "wordnet-base=1:3.0-37 61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752"
    "fortunes=1:1.99.1-7.3 41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5"
    "fortunes-min=1:1.99.1-7.3 9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07"
    "jargon-text=4.4.7-4.1 17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb"
    "dict-devil=1.0-13.1 6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154"
)
script_hash="$(cat "$0" "$here/build_text.py" | sha256sum | cut -c1-64)"
builder=("$PY" "$here/build_text.py" --root "$cache/root" --out "$out" --script-hash "$script_hash")

[ -x "$PY" ] || { echo "fetch-text: $PY is required (Debian python3)" >&2; exit 1; }
if "${builder[@]}" check; then
    exit 0
fi
start=$(date +%s)

if ! command -v Rscript >/dev/null 2>&1; then
    echo "fetch-text: installing r-base-core (Rscript)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends r-base-core
fi

mkdir -p "$cache"
for entry in "${DEBS[@]}"; do
    spec="${entry%% *}"; want="${entry#* }"
    name="${spec%%=*}"
    deb="$cache/$name.deb"
    if [ -f "$deb" ] && [ "$(sha256sum "$deb" | cut -c1-64)" = "$want" ]; then
        echo "fetch: $spec cached, sha256 ok"
    else
        tmpd="$(mktemp -d "$cache/.get.XXXXXX")"
        # apt-get download writes as the _apt user where it can; a private
        # folder it cannot enter only makes it warn.
        (cd "$tmpd" && apt-get download -q "$spec" >/dev/null 2>&1) || { rm -rf "$tmpd"; echo "fetch-text: apt-get download $spec failed" >&2; exit 1; }
        got="$(sha256sum "$tmpd"/*.deb | cut -c1-64)"
        if [ "$got" != "$want" ]; then
            rm -rf "$tmpd"
            echo "fetch-text: $spec sha256 mismatch: got $got, want $want" >&2
            exit 1
        fi
        mv "$tmpd"/*.deb "$deb"
        rm -rf "$tmpd"
        echo "fetch: $spec ok (sha256 verified)"
    fi
    if [ ! -f "$cache/root/.$name" ] || [ "$(cat "$cache/root/.$name")" != "$want" ]; then
        mkdir -p "$cache/root"
        dpkg-deb -x "$deb" "$cache/root"
        echo "$want" > "$cache/root/.$name"
    fi
done

"${builder[@]}" build
echo "fetch-text: done in $(( $(date +%s) - start )) s"
