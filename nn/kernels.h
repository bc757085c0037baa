/* kernels.h - the backend interface: every numeric kernel the model uses.
 *
 * The model (trainer/model.c) is written once against these functions; a
 * backend implements all of them for its device (nn/cpu/ for the CPU,
 * nn/cuda/ for NVIDIA GPUs, built with `make CUDA=1`), and nn_init_device
 * picks one at run time (backend.h). The kernels are listed, with what each
 * computes, in kernels.def; each nn_* function calls the selected backend's.
 *
 * Determinism: for the same inputs and thread count every CPU kernel gives
 * bitwise the same result; reductions run in a fixed order. */
#ifndef NN_KERNELS_H
#define NN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- setup ---- */
/* Call first in main(). On the CPU it lets idle OpenMP threads spin only
 * briefly before they sleep (GOMP_SPINCOUNT=1000, unless the user set
 * OMP_WAIT_POLICY or GOMP_SPINCOUNT): the runtime's default long spin cost
 * up to 10x on a machine whose cores are shared with other processes, as
 * the services beside a trainer are, while sleeping at once (passive) pays
 * a futex wake-up per parallel region, 7% of a small model's 2-thread step.
 * The runtime reads the variables once at load, so this re-executes the
 * program with it set. */
void nn_startup(char **argv);
void nn_init(int threads); /* the CPU backend; threads <= 0: library default */
/* Selects the backend by name ("cpu", "cuda", or "cpu-device": the CPU's
 * kernels on a device backend's code path, for tests) and precision, and
 * initializes it; an unknown or unavailable device or precision is bad input
 * (exit 2). Call after dist_init. Precision NULL is the device's own: fp32 on
 * the CPU, bf16 on CUDA. "bf16" on the CPU runs the matrix products (linear
 * layers, attention, lm_head) on bf16 operands with float32 accumulation;
 * everything else, parameters, gradients and optimizer state included, stays
 * float32 (docs/conventions.md, "Precision"). */
void nn_init_device(const char *device, const char *precision, int threads);
int nn_threads(void);
/* 1 when the selected backend's buffers are host memory (the CPU): then
 * nn_alloc'd floats can be read and written directly and no copies are needed. */
int nn_host_memory(void);

/* Shape of a convolution (the VAE's kernels, kernels.def). Feature maps are
 * [n, H, W, C] ("NHWC"): a pixel's channels are adjacent. That is the layout
 * oneDNN's direct convolutions read and write natively (a channel-major map
 * cost two reorders per convolution, 15-20% of a VAE pass), a 1x1
 * convolution is a linear layer over pixels, and the rows of an attention
 * layer over pixels are the map itself. */
typedef struct {
    int c_in, c_out, n, h, w; /* input: [n, h, w, c_in] */
    int k, stride;            /* square kernel */
    int pad_t, pad_l, pad_b, pad_r;
    /* 1: a k > 1 or strided convolution reads its inputs rounded to bfloat16
     * (float32 accumulation and outputs), twice as fast where the CPU has
     * bf16 dot products; shapes without such a kernel stay float32. */
    int bf16;
    /* 1: w holds the same values call after call (inference), so a forward
     * may transform it once and keep the result. A float32 3x3 stride-1
     * forward then runs as Winograd F(4x4, 3x3), with 4x fewer
     * multiplications; the kept form is compared with w on every call, so a
     * changed w is never read stale. */
    int fixed_weights;
} conv_shape;

static inline int conv_out_h(const conv_shape *s) { return (s->h + s->pad_t + s->pad_b - s->k) / s->stride + 1; }
static inline int conv_out_w(const conv_shape *s) { return (s->w + s->pad_l + s->pad_r - s->k) / s->stride + 1; }

#define NN_V(name, params, args) void nn_##name params;
#define NN_R(type, name, params, args) type nn_##name params;
#include "kernels.def"
#undef NN_V
#undef NN_R

#endif
