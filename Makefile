# Transfusion training system - top-level build.
#
#   make                 build bin/trainer, bin/vae_service and bin/dataloader (CPU)
#   make test            build and run every test; ends with "N passed, N failed"
#   make test SANITIZE=1 the same under AddressSanitizer + UBSan (build/asan/)
#   make CUDA=1          the same programs with the CUDA backend too (--device cuda; bin/cuda/), and
#                        its kernel tests (bin/cuda/tests/cuda/, run by bench/gpu-check.sh on a GPU)
#   make gpu-bundle      build/gpu-bundle.tar.xz: the CUDA build for any x86-64-v3 host, the shared
#                        libraries it needs besides glibc and CUDA, and a tiny trained run, for
#                        bench/gpu-check.sh on a GPU machine without this project's libraries
#   make cli-docs        rewrite the command summaries in README.md and the program folders' READMEs
#                        from the programs' flag tables (tests/test_cli.sh fails when they are stale)
#   make fuzz            build and run the fuzzers briefly (safetensors header, dataloader requests)
#   make bench           trainer, VAE service and dataloader against their peers (PyTorch, dwebp, ZeroMQ,
#                        spm_encode), checkpoint save/load against dd, 1 against 2 trainer ranks,
#                        generation with and without the KV cache and guidance, the image data's
#                        rasterizer against rsvg-convert | cwebp
ifeq ($(origin CC),default)
  CC := gcc
endif
ARCH    ?= -march=native
CFLAGS  ?= -O3 $(ARCH)
# -fno-math-errno: sqrtf then compiles to the instruction, so loops with it
# (AdamW) vectorize (8x faster there); the results are the same bits, as
# IEEE square roots are exact and -std=c11 contracts no multiply-adds.
CFLAGS  += -std=c11 -D_GNU_SOURCE -fopenmp -fno-math-errno -Wall -Wextra -MMD -MP
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null)
CFLAGS  += $(MPI_CFLAGS)
CXXFLAGS ?= -O2 $(ARCH)
CXXFLAGS += -std=c++17 -Wall -Wextra -MMD -MP
LDLIBS  := -ldnnl -lcjson -lwebp -lstb -lzmq -llapacke $(MPI_LIBS) -lm
SPM_LIBS := -lsentencepiece -lsentencepiece_train -lstdc++
FUZZ_SECONDS ?= 60

ifeq ($(SANITIZE),1)
  CFLAGS  += -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  CXXFLAGS += -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
  BUILD   := build/asan
  BIN     := build/asan/bin
else ifeq ($(CUDA),1)
  BUILD   := build/cuda
  BIN     := bin/cuda
else
  BUILD   := build/release
  BIN     := bin
endif

# The CUDA backend: sm_90a (H100/H200) code plus PTX that newer GPUs compile.
CUDA_HOME ?= /usr/local/cuda
NVCC      := $(CUDA_HOME)/bin/nvcc
NVCCFLAGS ?= -O3 -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90
NVCCFLAGS += -std=c++17 -D_GNU_SOURCE -Xcompiler -Wall,-Wextra -MMD -MP
CUDA_OBJ  :=
ifeq ($(CUDA),1)
  ifeq ($(wildcard $(NVCC)),)
    $(error CUDA=1: no nvcc at $(NVCC) (install the CUDA toolkit or set CUDA_HOME))
  endif
  CFLAGS    += -DNN_CUDA -I$(CUDA_HOME)/include
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lcudnn -lnccl -lstdc++
  CUDA_OBJ  := $(patsubst %.cu,$(BUILD)/%.o,$(wildcard nn/cuda/*.cu)) $(patsubst %.c,$(BUILD)/%.o,$(wildcard nn/cuda/*.c))
endif

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
define link
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(LDLIBS)
endef
# One object list per library; each program links the libraries it calls.
COMMON_OBJ  := $(call obj,$(wildcard common/*.c))
NN_OBJ      := $(call obj,$(wildcard nn/*.c nn/cpu/*.c)) $(CUDA_OBJ)
CKPT_OBJ    := $(call obj,$(wildcard checkpoint/*.c))
VAE_OBJ     := $(call obj,$(wildcard vae/*.c))
TOK_OBJ     := $(BUILD)/tokenizer/spm_shim.o
DLC_OBJ     := $(call obj,$(wildcard dataloader_client/*.c))
# The programs' own objects (main.o apart: tests and benchmarks link the rest).
TRAINER_OBJ := $(call obj,$(filter-out trainer/main.c,$(wildcard trainer/*.c)))
VAESVC_OBJ  := $(call obj,$(filter-out vae_service/main.c,$(wildcard vae_service/*.c)))
DL_OBJ      := $(call obj,$(filter-out dataloader/main.c,$(wildcard dataloader/*.c)))
TESTS       := $(patsubst tests/%.c,$(BIN)/tests/%,$(wildcard tests/test_*.c))

all: $(BIN)/trainer $(BIN)/vae_service $(BIN)/dataloader $(BIN)/bench_image_decode $(BIN)/bench_dataloader $(BIN)/bench_checkpoint
ifeq ($(CUDA),1)
all: $(patsubst tests/%.c,$(BIN)/tests/%,$(wildcard tests/cuda/test_*.c))
endif

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The SentencePiece shim is the project's only C++ (besides the CUDA kernels).
$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BIN)/trainer: LDLIBS += $(SPM_LIBS)
$(BIN)/trainer: $(BUILD)/trainer/main.o $(TRAINER_OBJ) $(CKPT_OBJ) $(DLC_OBJ) $(VAE_OBJ) $(TOK_OBJ) $(NN_OBJ) $(COMMON_OBJ)
	$(link)

$(BIN)/vae_service: $(BUILD)/vae_service/main.o $(VAESVC_OBJ) $(VAE_OBJ) $(CKPT_OBJ) $(NN_OBJ) $(COMMON_OBJ)
	$(link)

$(BIN)/dataloader: LDLIBS += $(SPM_LIBS)
$(BIN)/dataloader: $(BUILD)/dataloader/main.o $(DL_OBJ) $(DLC_OBJ) $(TOK_OBJ) $(COMMON_OBJ)
	$(link)

$(BIN)/bench_image_decode: $(BUILD)/bench/bench_image_decode.o $(VAE_OBJ) $(NN_OBJ) $(COMMON_OBJ)
	$(link)

$(BIN)/bench_dataloader: LDLIBS += $(SPM_LIBS)
$(BIN)/bench_dataloader: $(BUILD)/bench/bench_dataloader.o $(DL_OBJ) $(DLC_OBJ) $(TOK_OBJ) $(COMMON_OBJ)
	$(link)

$(BIN)/bench_checkpoint: $(BUILD)/bench/bench_checkpoint.o $(CKPT_OBJ) $(NN_OBJ) $(COMMON_OBJ)
	$(link)

# The image data build's rasterizer (data/fetch-images.sh): librsvg + cairo + libwebp only.
all: $(BIN)/render_images
$(BUILD)/data/render_images.o: CFLAGS += $(shell pkg-config --cflags librsvg-2.0 cairo)
$(BIN)/render_images: $(BUILD)/data/render_images.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(shell pkg-config --libs librsvg-2.0 cairo) -lwebp

$(BIN)/tests/%: LDLIBS += $(SPM_LIBS)
$(BIN)/tests/%: $(BUILD)/tests/%.o $(TRAINER_OBJ) $(VAESVC_OBJ) $(DL_OBJ) $(CKPT_OBJ) $(DLC_OBJ) $(VAE_OBJ) $(TOK_OBJ) \
                $(NN_OBJ) $(COMMON_OBJ)
	$(link)

test: $(BIN)/trainer $(BIN)/vae_service $(BIN)/dataloader $(BIN)/bench_dataloader $(TESTS)
	BIN=$(BIN) tests/run.sh

cli-docs: $(BIN)/trainer $(BIN)/vae_service $(BIN)/dataloader
	BIN=$(BIN) docs/cli_docs.sh

# Its own build folder: the flags differ from a CUDA=1 build for this machine.
gpu-bundle:
	$(MAKE) CUDA=1 ARCH=-march=x86-64-v3 BUILD=build/gpu BIN=build/gpu/bin all
	bench/gpu-bundle.sh build/gpu/bin

# Each fuzzer gets half of FUZZ_SECONDS.
FUZZERS := safetensors dl_request
fuzz: $(patsubst %,build/fuzz_%,$(FUZZERS))
	for f in $(FUZZERS); do \
	    mkdir -p build/fuzz_corpus/$$f && \
	    build/fuzz_$$f -max_total_time=$$(( $(FUZZ_SECONDS) / 2 )) -timeout=5 -rss_limit_mb=2048 \
	        -artifact_prefix=build/ build/fuzz_corpus/$$f tests/fuzz_corpus/$$f || exit 1; \
	done

build/fuzz_%: tests/fuzz_%.c
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address,undefined $^ -o $@ -lcjson

build/fuzz_safetensors: common/safetensors.c common/atomic_file.c common/error.c
build/fuzz_dl_request: dataloader_client/wire.c common/crc32c.c common/error.c

bench: all
	bench/bench_vs_torch.sh
	bench/bench_unet.sh
	bench/bench_vae.sh
	bench/bench_dataloader.sh
	bench/bench_checkpoint.sh
	bench/bench_train_scaling.sh
	bench/bench_sample.sh
	bench/bench_render.sh

clean:
	rm -rf build bin

.PHONY: all test fuzz bench clean gpu-bundle cli-docs
.PRECIOUS: $(BUILD)/%.o
-include $(shell find build -name '*.d' 2>/dev/null)
