#!/usr/bin/env bash
# fetch-images.sh - builds the project's image-caption dataset (about 18.9k
# emoji and Tux Paint stamps with English captions) as WebDataset tar shards:
#
#   data/images-S/{train,val,test,ood}-NNNNN.tar   KEY.webp, KEY.txt, KEY.json
#   data/images-S/manifest.json                    counts per split and source
#   data/images-S/LICENSES.md, licenses/           licence and attribution
#
# Sources (pinned; see data/README.md): npm openmoji, @twemoji/svg,
# @svgmoji/noto, fluentui-emoji (fetched once with `npm pack` into data/cache/npm
# and checked against the sha512 below), Debian tuxpaint-stamps-default.
# The held-out concepts of data/heldout_concepts.tsv (test, ood) never go to
# train; val is 3% of the other images, chosen by a fixed hash of the key.
# The pictures are rasterized by bin/render_images (data/render_images.c),
# built here with make when it is missing or older than its source.
#
# Usage: data/fetch-images.sh [--size S] [--limit N] [--out DIR] [--jobs J]
#   --size S    image side in pixels (default 64)
#   --limit N   at most N images per source, for quick tests; the default
#               output folder is then data/images-S-limN
#   --out DIR   output folder (default data/images-S)
#   --jobs J    rasterizer threads (default: number of cores)
# A re-run whose output is complete and up to date does nothing.
# RENDER_IMAGES=PATH uses that render_images program instead (not rebuilt).
. "$(dirname "$0")/../launch/help.sh"
script_help "$@"
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3

size=64
limit=0
out=""
jobs="$(nproc 2>/dev/null || echo 2)"
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size="${2:?--size needs a value}"; shift 2 ;;
        --size=*) size="${1#*=}"; shift ;;
        --limit) limit="${2:?--limit needs a value}"; shift 2 ;;
        --limit=*) limit="${1#*=}"; shift ;;
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        --jobs) jobs="${2:?--jobs needs a value}"; shift 2 ;;
        --jobs=*) jobs="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fetch-images: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for v in size limit jobs; do
    case "${!v}" in ''|*[!0-9]*) echo "fetch-images: --$v must be a non-negative integer" >&2; exit 2 ;; esac
done
if [ "$size" -lt 8 ] || [ "$size" -gt 4096 ]; then echo "fetch-images: --size must be 8..4096" >&2; exit 2; fi
[ "$jobs" -ge 1 ] || jobs=1
if [ -z "$out" ]; then
    out="$here/images-$size"
    [ "$limit" -gt 0 ] && out="$here/images-$size-lim$limit"
fi
cache="$here/cache"
root="$(dirname "$here")"
renderer="${RENDER_IMAGES:-$root/bin/render_images}"

# name@version and the sha512 integrity the npm registry publishes for it.
NPM_PACKAGES=(
    "openmoji@17.0.0 sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w=="
    "@twemoji/svg@15.0.0 sha512-ZSPef2B6nBaYnfgdTbAy4jgW95o7pi2xPGwGCU+WMTxo7J6B1lMPTWwSq/wTuiMq+N0khQ90CcvYp1wFoQpo/w=="
    "@svgmoji/noto@3.2.0 sha512-JgtNciB06hMDI1Pb1N2IgLh44XRMZUUNwBANzjY5jXTPqOCu1A1VA35ENvUsRhEUZOm8I+hbdAEHkwMVqxLeIQ=="
    "fluentui-emoji@1.3.0 sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw=="
)

builder=("$PY" "$here/build_images.py" --size "$size" --limit "$limit" --out "$out"
         --cache "$cache" --jobs "$jobs" --heldout "$here/heldout_concepts.tsv" --renderer "$renderer"
         --script-hash "$(sha256sum "$0" | cut -c1-64)")

# 0. Nothing to do when the output is complete for these settings.
[ -x "$PY" ] || { echo "fetch-images: $PY is required (Debian python3)" >&2; exit 1; }
if "${builder[@]}" check; then
    exit 0
fi

start=$(date +%s)

# 1. Debian tools and the Tux Paint stamps; the renderer's build dependencies
#    only when it has to be built.
build_renderer=0
if [ -z "${RENDER_IMAGES:-}" ] && { [ ! -x "$renderer" ] || [ "$here/render_images.c" -nt "$renderer" ]; }; then
    build_renderer=1
fi
need=()
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -d /usr/share/tuxpaint/stamps ] || need+=(tuxpaint-stamps-default)
if [ "$build_renderer" = 1 ]; then
    command -v make >/dev/null 2>&1 && command -v gcc >/dev/null 2>&1 || need+=(build-essential)
    command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
    pkg-config --exists librsvg-2.0 cairo 2>/dev/null || need+=(librsvg2-dev)
    pkg-config --exists libwebp 2>/dev/null || need+=(libwebp-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "fetch-images: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if [ "$build_renderer" = 1 ]; then
    echo "fetch-images: compiling ${renderer#"$root"/}"
    # MAKEFLAGS of an enclosing make (SANITIZE=1, CUDA=1) would move the target
    # to another folder: this is always the plain build.
    if ! env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -C "$root" -s bin/render_images >&2; then
        echo "fetch-images: could not build bin/render_images (make bin/render_images; it needs gcc, pkg-config, librsvg2-dev and libwebp-dev)" >&2
        exit 1
    fi
fi
[ -x "$renderer" ] || { echo "fetch-images: renderer $renderer missing or not executable" >&2; exit 1; }

# 2. npm packages: download once, verify, unpack once.
sha512_of() { # prints the npm-style integrity string of a file
    "$PY" -c 'import base64,hashlib,sys; print("sha512-"+base64.b64encode(hashlib.sha512(open(sys.argv[1],"rb").read()).digest()).decode())' "$1"
}
mkdir -p "$cache/npm" "$cache/src"
for entry in "${NPM_PACKAGES[@]}"; do
    spec="${entry%% *}"; want="${entry#* }"
    name="${spec%@*}"; version="${spec##*@}"
    tgz="$cache/npm/$(echo "$name" | sed 's/^@//; s#/#-#')-$version.tgz"   # npm pack's file name
    if [ -f "$tgz" ] && [ "$(sha512_of "$tgz")" = "$want" ]; then
        echo "fetch: $spec cached, sha512 ok"
    else
        rm -f "$tgz"
        echo "fetch: npm pack $spec"
        tmpd="$(mktemp -d "$cache/npm/.pack.XXXXXX")"
        (cd "$tmpd" && npm pack --silent "$spec" >/dev/null) || { rm -rf "$tmpd"; echo "fetch-images: npm pack $spec failed" >&2; exit 1; }
        got="$(sha512_of "$tmpd/$(basename "$tgz")")"
        if [ "$got" != "$want" ]; then
            rm -rf "$tmpd"
            echo "fetch-images: $spec integrity mismatch: got $got, want $want" >&2
            exit 1
        fi
        mv "$tmpd/$(basename "$tgz")" "$tgz"
        rm -rf "$tmpd"
        echo "fetch: $spec ok ($(du -h "$tgz" | cut -f1), sha512 verified)"
    fi
    dir="$cache/src/$(basename "$tgz" .tgz)"
    if [ ! -f "$dir/.complete" ] || [ "$(cat "$dir/.complete")" != "$want" ]; then
        rm -rf "$dir" "$dir.tmp"
        mkdir -p "$dir.tmp"
        tar -xzf "$tgz" -C "$dir.tmp" --no-same-owner
        echo "$want" > "$dir.tmp/.complete"
        mv "$dir.tmp" "$dir"
        echo "fetch: unpacked $spec"
    fi
done

# 3. Plan, rasterize (in parallel), write the shards.
"${builder[@]}" build
echo "fetch-images: done in $(( $(date +%s) - start )) s"
