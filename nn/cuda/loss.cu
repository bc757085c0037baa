/* loss.cu - CUDA backend: cross-entropy fused with its gradient (one block
 * per row of logits), squared error, and the sum of squares (gradient norm),
 * all summed in float64 in a fixed order (reduce.cuh). */
#include "reduce.cuh"

#include <float.h>

__global__ void cross_entropy_rows(double *loss, tview z, const int32_t *targets, int V, float grad_scale) {
    size_t i = blockIdx.x, row = i * V;
    __shared__ float zt;
    if (threadIdx.x == 0) zt = ld(z, row + targets[i]);
    float mx = -FLT_MAX;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, ld(z, row + j));
    for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    __shared__ float wmax[32];
    if (threadIdx.x % 32 == 0) wmax[threadIdx.x / 32] = mx;
    __syncthreads();
    for (int w = 0; w < (int)blockDim.x / 32; w++) mx = fmaxf(mx, wmax[w]);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += __expf(ld(z, row + j) - mx);
    float lse = mx + logf(block_sum(sum)); /* block_sum syncs: zt is visible */
    if (threadIdx.x == 0) loss[i] = (double)(lse - zt);
    if (grad_scale == 0.0f) return;
    int t = targets[i];
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        st(z, row + j, grad_scale * (__expf(ld(z, row + j) - lse) - (j == t ? 1.0f : 0.0f)));
}

/* partial[b] = sum over block b's share of f(i), in a fixed order. */
__global__ void sum_rows_double(double *partial, const double *v, size_t n) {
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += v[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

static double *partials(size_t extra_doubles) {
    return (double *)cuda_scratch(SCRATCH_SUM, sizeof(double) * (SUM_BLOCKS + 1 + extra_doubles));
}

extern "C" double cuda_cross_entropy(float *logits, const int32_t *targets, int n, int V, float grad_scale) {
    if (n == 0) return 0.0;
    double *part = partials(n), *loss = part + SUM_BLOCKS + 1;
    CUDA_LAUNCH(cross_entropy_rows, n, 512, 0, loss, tv(logits, "cross_entropy logits"), targets, V, grad_scale);
    CUDA_LAUNCH(sum_rows_double, SUM_BLOCKS, SUM_THREADS, 0, part, loss, n);
    return cuda_total(part);
}

/* Sum of (x - y)^2 (y optional); with grad_scale, dx = grad_scale * 2 (x - y),
 * written after the element is read (dx may be x). */
__global__ void squared_diff(double *partial, tview x, tview y, int has_y, tview dx, float grad_scale, size_t n) {
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float e = ld(x, i) - (has_y ? ld(y, i) : 0.0f);
        s += (double)e * e;
        if (grad_scale != 0.0f) st(dx, i, grad_scale * 2.0f * e);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

static double squared(float *dx, const float *x, const float *y, size_t n, float grad_scale) {
    if (n == 0) return 0.0;
    double *part = partials(0);
    tview tx = tv(x, "squared x");
    CUDA_LAUNCH(squared_diff, SUM_BLOCKS, SUM_THREADS, 0, part, tx, y ? tv(y, "squared y") : tx, y != NULL,
                dx ? tv(dx, "squared dx") : tx, grad_scale, n);
    return cuda_total(part);
}

extern "C" double cuda_squared_error(float *dpred, const float *pred, const float *target, size_t n, float grad_scale) {
    return squared(grad_scale != 0.0f ? dpred : NULL, pred, target, n, grad_scale);
}

extern "C" double cuda_sum_squared_diff(const float *x, const float *y, size_t n) {
    return squared(NULL, x, y, n, 0.0f);
}
