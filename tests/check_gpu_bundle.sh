#!/usr/bin/env bash
# check_gpu_bundle.sh [BUNDLE] - the GPU check's bundle (make gpu-bundle;
# default build/gpu-bundle.tar.xz) is complete: unpacked, with only its lib/
# folder on LD_LIBRARY_PATH in a clean environment (env -i), every library
# of every program resolves, and each one either lies in lib/ or is glibc's
# or CUDA's (bench/gpu-bundle.sh --system-libs): on a GPU machine that has
# none of this project's Debian libraries, nothing else is needed. Also: at
# most 40 MiB, and the fixture run is there. .ci/run runs it after `make
# gpu-bundle` (it needs nvcc, so `make test` does not).
set -u
source tests/check.sh
BUNDLE=${1:-build/gpu-bundle.tar.xz}
[ -f "$BUNDLE" ] || { fail "gpu bundle: $BUNDLE not found (make gpu-bundle)"; exit 1; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
tar -C "$t" -xJf "$BUNDLE"
system=$(bench/gpu-bundle.sh --system-libs)
mib=$(( ($(stat -c %s "$BUNDLE") + 1048575) / 1048576 ))
check "the bundle is $mib MiB (at most 40)" [ "$mib" -le 40 ]
progs=("$t/bin/trainer" "$t"/bin/tests/cuda/test_*)
check "it holds the trainer and ${#progs[@]} programs in all, the kernel tests among them" \
    [ -x "$t/bin/trainer" -a -x "$t/bin/tests/cuda/test_kernels" ]
check "it holds libgomp (OpenMP) and oneDNN" [ -f "$t/lib/libgomp.so.1" -a -f "$t/lib/libdnnl.so.2" ]
check "it holds the generation fixture (a run, its VAE, images)" \
    [ -f "$t/fixture/run/config.json" -a -f "$t/fixture/run/tokenizer.model" -a -d "$t/fixture/vae" -a -f "$t/fixture/img/k0.png" ]
for p in "${progs[@]}"; do
    out=$(env -i LD_LIBRARY_PATH="$t/lib" /usr/bin/ldd "$p" 2>&1)
    stray=$(awk '/=>/ {print $1, $3}' <<<"$out" | while read -r name path; do
        [ "$path" = "not" ] && { echo "$name (not found)"; continue; }
        case $path in "$t/lib/"*) ;; *) grep -qE "$system" <<<"$name" || echo "$name ($path)" ;; esac
    done | tr '\n' ' ')
    check "$(basename "$p"): every library resolves from the bundle, glibc or CUDA${stray:+; not: $stray}" [ -z "$stray" ]
done
[ "$fails" -eq 0 ]
