#!/usr/bin/env bash
# gpu-bundle.sh BIN_DIR - packs what bench/gpu-check.sh needs on a GPU machine
# whose image has CUDA and Python but none of this project's Debian libraries
# into one file, build/gpu-bundle.tar.xz (`make gpu-bundle` builds BIN_DIR
# for any x86-64-v3 host, then calls this):
#   bin/trainer, bin/tests/cuda/test_*   the CUDA build
#   lib/       every shared library they load that is neither glibc's nor
#              CUDA's (oneDNN, cJSON, libwebp, stb, ZeroMQ, Open MPI,
#              SentencePiece, libgomp, libstdc++ ...), found with ldd. cuDNN
#              counts as CUDA's: its engines (hundreds of MiB, loaded with
#              dlopen) do not fit; gpu-check.sh finds it on the GPU machine,
#              else in PyTorch's NVIDIA wheels (nvidia/cudnn/lib)
#   fixture/   a tiny model overfit on four image-caption pairs
#              (tests/tiny_run.sh), its VAE and images: the generation stage
# At most 40 MiB, so that the working tree sent to the GPU machine with it
# stays under that machine's 64 MiB. `gpu-bundle.sh --system-libs` prints
# the pattern of the libraries left out (tests/check_gpu_bundle.sh uses it).
set -euo pipefail
SYSTEM_LIBS='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libcudart|libcublasLt|libcublas|libcudnn|libnccl|libcuda)\.so'
if [ "${1:-}" = --system-libs ]; then echo "$SYSTEM_LIBS"; exit 0; fi
BIN=${1:?usage: bench/gpu-bundle.sh BIN_DIR}
MAX_MIB=40
cd "$(dirname "$0")/.."
out=build/gpu-bundle.tar.xz
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin/tests/cuda" "$stage/lib"
cp "$BIN/trainer" "$stage/bin/"
cp "$BIN"/tests/cuda/test_* "$stage/bin/tests/cuda/"
bins=("$stage/bin/trainer" "$stage"/bin/tests/cuda/test_*)
ldd "${bins[@]}" | awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
    if ! grep -qE "$SYSTEM_LIBS" <<<"$name"; then cp -L "$path" "$stage/lib/$name"; fi
done
if ldd "${bins[@]}" | grep -q 'not found'; then
    echo "gpu-bundle: unresolved libraries here: $(ldd "${bins[@]}" | grep 'not found' | sort -u | tr -s ' \n' ' ')" >&2
    exit 1
fi
echo "gpu-bundle: $(ls "$stage/lib" | wc -l) libraries, $(du -sm "$stage/lib" | cut -f1) MiB; building the fixture"
BIN="$BIN" STEPS=600 tests/tiny_run.sh "$stage/tiny" >/dev/null
mkdir -p "$stage/fixture"
cp -rL "$stage/tiny/run/latest" "$stage/fixture/run"
cp -r "$stage/tiny/vae" "$stage/tiny/img" "$stage/fixture/"
rm -rf "$stage/tiny"
tar -C "$stage" -cf - bin lib fixture | xz -T2 -6 >"$out.tmp"
mib=$(( ($(stat -c %s "$out.tmp") + 1048575) / 1048576 ))
if [ "$mib" -gt "$MAX_MIB" ]; then rm -f "$out.tmp"; echo "gpu-bundle: $mib MiB, more than $MAX_MIB" >&2; exit 1; fi
mv "$out.tmp" "$out"
echo "gpu-bundle: wrote $out ($mib MiB)"
