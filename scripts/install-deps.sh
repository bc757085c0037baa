#!/usr/bin/env bash
# install-deps.sh - installs the Debian 12 packages the project needs, skipping
# those already present. Used by the README's quickstart and by .ci/run.
set -euo pipefail

packages=(
    build-essential     # gcc, make
    pkg-config
    clang               # libFuzzer target
    libclang-rt-14-dev  # libFuzzer and sanitizer runtimes for clang
    libcjson-dev        # JSON headers of safetensors and configs
    libdnnl-dev         # oneDNN: GEMM of the CPU backend
    liblapacke-dev      # symmetric eigensolver of `trainer eval`'s Fréchet distance
    libwebp-dev         # WebP decode (datasets) and encode (decoded latents)
    librsvg2-dev        # librsvg + cairo: data/render_images.c rasterizes the image data set
    webp                # dwebp, cwebp: peers of bench/bench_vae.sh and bench/bench_render.sh
    librsvg2-bin        # rsvg-convert: the peer of bench/bench_render.sh
    libstb-dev          # PNG/JPEG decode, resizing, PNG grids
    libzmq3-dev         # vae_service serve, dataloader serve and client
    libsentencepiece-dev # dataloader tokenizer (C++ library behind a C shim)
    sentencepiece       # spm_encode: the tokenize-speed peer of bench/bench_dataloader.sh
    libopenmpi-dev      # data-parallel ranks under mpirun
    openmpi-bin
    python3-torch       # PyTorch references (tests, benchmark peers)
    python3-numpy
    python3-pil         # PNG/WebP comparisons of the sampling tests and the GPU check
    gnuplot-nox         # launch/plot_metrics.sh: loss curves as PNG
    procps              # pgrep/pkill: the launch and resume tests find and stop their processes
)
# make CUDA=1 (CI builds it) also needs NVIDIA's CUDA 13 toolkit with cuBLASLt and
# NCCL under /usr/local/cuda (CUDA_HOME): not Debian packages, not installed here.

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages present"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
