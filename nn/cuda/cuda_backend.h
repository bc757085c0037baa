/* cuda_backend.h - what the CUDA backend's files share: the cuda_* kernels
 * (cuda_NAME implements nn_NAME of kernels.def on device buffers), the
 * device state, and the buffer table by which kernels learn each argument's
 * type. Plain C, so that the C files of the backend (its table, NCCL) and
 * the .cu files agree on it. */
#ifndef NN_CUDA_BACKEND_H
#define NN_CUDA_BACKEND_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../kernels.h"
#include "../buffer_table.h"

#define NN_V(name, params, args) void cuda_##name params;
#define NN_R(type, name, params, args) type cuda_##name params;
#define NN_FUSED(name, params, args) /* none: the plain kernels in turn */
#include "../kernels.def"
#undef NN_V
#undef NN_R
#undef NN_FUSED

void cuda_init(void);
/* NCCL for the buffer collectives of dist.h (more than one rank). */
void cuda_nccl_init(void);

/* Dies with the failing call and CUDA's message. */
void cuda_check(cudaError_t e, const char *what, const char *file, int line);
#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)

extern cudaStream_t cuda_stream; /* every kernel runs on it, in order */
extern buf_table cuda_buffers;

/* The entry of a backend pointer; dies naming `what` for any other pointer. */
buf_entry *cuda_buffer(const void *p, const char *what);
/* 1 for a float32 buffer, 0 for a bfloat16 one; dies for anything else. */
int cuda_is_f32(const void *p, const char *what);
/* A bfloat16 pointer to the same elements: p itself in a bfloat16 buffer,
 * else into the float32 buffer's mirror (made, from the buffer's contents, on
 * first use). */
const void *cuda_bf16_view(const void *p, const char *what);
/* After a kernel wrote n float32 elements at p: brings the mirror of p's
 * buffer up to date, if it has one. */
void cuda_mirror_sync(const float *p, size_t n);
/* Scratch device memory of at least `bytes` in one of a few slots, valid
 * until the next call for the same slot (kernels run in stream order, so a
 * buffer may be reused as soon as the next kernel is queued). */
enum {
    SCRATCH_SUM,
    SCRATCH_ROWS,
    SCRATCH_SORT,
    SCRATCH_CONV_X,  /* conv.cu: float32 copies of x, y (or dy), dx, the weights and dw; cuDNN's workspace */
    SCRATCH_CONV_Y,
    SCRATCH_CONV_DX,
    SCRATCH_CONV_W,
    SCRATCH_CONV_DW,
    SCRATCH_CONV_WS,
    SCRATCH_STATS,   /* image.cu: per-image, per-channel sums of GroupNorm's backward */
    SCRATCH_SLOTS
};
void *cuda_scratch(int slot, size_t bytes);

/* Blocks of `threads` covering n items (at least 1). */
static inline unsigned cuda_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b ? b : 1);
}

#ifdef __cplusplus
}
#endif

#endif
