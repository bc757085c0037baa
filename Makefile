# Transfusion training system - top-level build.
#
#   make                 build bin/trainer and bin/vae_service (CPU)
#   make test            build and run every test; ends with "N passed, N failed"
#   make test SANITIZE=1 the same under AddressSanitizer + UBSan (build/asan/)
#   make fuzz            build and run the safetensors header fuzzer briefly
#   make bench           trainer and VAE service against their peers (PyTorch, dwebp),
#                        checkpoint save/load against dd
ifeq ($(origin CC),default)
  CC := gcc
endif
ARCH    ?= -march=native
CFLAGS  ?= -O3 $(ARCH)
CFLAGS  += -std=c11 -D_GNU_SOURCE -fopenmp -Wall -Wextra -MMD -MP
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null)
CFLAGS  += $(MPI_CFLAGS)
LDLIBS  := -ldnnl -lcjson -lwebp -lstb -lzmq $(MPI_LIBS) -lm
FUZZ_SECONDS ?= 60

ifeq ($(SANITIZE),1)
  CFLAGS  += -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
  BUILD   := build/asan
  BIN     := build/asan/bin
else
  BUILD   := build/release
  BIN     := bin
endif

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
define link
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(LDLIBS)
endef
CORE_OBJ    := $(call obj,$(wildcard common/*.c nn/*.c nn/cpu/*.c))
TRAINER_OBJ := $(call obj,$(filter-out trainer/main.c,$(wildcard trainer/*.c)) $(wildcard checkpoint/*.c))
VAE_OBJ     := $(call obj,$(filter-out vae_service/main.c,$(wildcard vae_service/*.c)))
TESTS       := $(patsubst tests/%.c,$(BIN)/tests/%,$(wildcard tests/test_*.c))

all: $(BIN)/trainer $(BIN)/vae_service $(BIN)/bench_image_decode $(BIN)/bench_checkpoint

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BIN)/trainer: $(BUILD)/trainer/main.o $(TRAINER_OBJ) $(CORE_OBJ)
	$(link)

$(BIN)/vae_service: $(BUILD)/vae_service/main.o $(VAE_OBJ) $(CORE_OBJ)
	$(link)

$(BIN)/bench_image_decode: $(BUILD)/bench/bench_image_decode.o $(VAE_OBJ) $(CORE_OBJ)
	$(link)

$(BIN)/bench_checkpoint: $(BUILD)/bench/bench_checkpoint.o $(TRAINER_OBJ) $(CORE_OBJ)
	$(link)

$(BIN)/tests/%: $(BUILD)/tests/%.o $(TRAINER_OBJ) $(VAE_OBJ) $(CORE_OBJ)
	$(link)

test: $(BIN)/trainer $(BIN)/vae_service $(TESTS)
	BIN=$(BIN) tests/run.sh

fuzz: build/fuzz_safetensors
	build/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -timeout=5 -rss_limit_mb=2048 \
	    -artifact_prefix=build/ build/fuzz_corpus tests/fuzz_corpus

build/fuzz_safetensors: tests/fuzz_safetensors.c common/safetensors.c common/atomic_file.c common/error.c
	@mkdir -p build/fuzz_corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined $^ -o $@ -lcjson

bench: all
	bench/bench_vs_torch.sh
	bench/bench_vae.sh
	bench/bench_checkpoint.sh

clean:
	rm -rf build bin

.PHONY: all test fuzz bench clean
.PRECIOUS: $(BUILD)/%.o
-include $(shell find build -name '*.d' 2>/dev/null)
