/* ema.cu - CUDA backend: the weights' exponential moving average
 * (nn_ema_update, kernels.def), one pass over float32 buffers. The average
 * is never read by a GEMM, so it has no bfloat16 mirror to keep in step. */
#include "typed.cuh"

#define THREADS 256

__global__ void ema_kernel(float *ema, const float *w, size_t n, float k) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) ema[i] += k * (w[i] - ema[i]);
}

extern "C" void cuda_ema_update(float *ema, const float *w, size_t n, float decay) {
    if (!n) return;
    if (!cuda_is_f32(ema, "ema_update ema") || !cuda_is_f32(w, "ema_update w"))
        die("cuda backend: nn_ema_update needs float32 buffers (the master weights and their average)");
    CUDA_LAUNCH(ema_kernel, cuda_blocks(n, THREADS), THREADS, 0, ema, w, n, 1.0f - decay);
}
