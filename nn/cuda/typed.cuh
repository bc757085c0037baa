/* typed.cuh - device-side access to a backend buffer in its own type
 * (bfloat16 activations, float32 parameters and statistics): kernels take a
 * tview per tensor argument and compute in float32. */
#ifndef NN_CUDA_TYPED_CUH
#define NN_CUDA_TYPED_CUH

#include "cuda_backend.h"

#include <cuda_bf16.h>

extern "C" {
#include "../../common/error.h"
}

struct tview {
    void *p;
    int f32; /* 1: float32, 0: bfloat16 */
};

__device__ __forceinline__ float ld(const tview &v, size_t i) {
    return v.f32 ? ((const float *)v.p)[i] : __bfloat162float(((const __nv_bfloat16 *)v.p)[i]);
}

__device__ __forceinline__ void st(const tview &v, size_t i, float x) {
    if (v.f32)
        ((float *)v.p)[i] = x;
    else
        ((__nv_bfloat16 *)v.p)[i] = __float2bfloat16_rn(x);
}

/* Every kernel launch goes through CUDA_LAUNCH: a bad launch (grid, shared
 * memory) dies at once, named by its kernel and line; with
 * CUDA_LAUNCH_BLOCKING=1 in the environment the stream is also synchronized
 * after each launch, so a kernel that faults is named itself instead of the
 * next call that happens to sync. */
void cuda_launched(const char *kernel, const char *file, int line);
#define CUDA_LAUNCH(kernel, grid, block, smem, ...)                                                                    \
    do {                                                                                                               \
        kernel<<<(grid), (block), (smem), cuda_stream>>>(__VA_ARGS__);                                                 \
        cuda_launched(#kernel, __FILE__, __LINE__);                                                                    \
    } while (0)

/* The view of a float tensor argument (host side). */
static inline tview tv(const void *p, const char *what) { return tview{(void *)p, cuda_is_f32(p, what)}; }

#endif
