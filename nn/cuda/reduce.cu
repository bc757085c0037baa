/* reduce.cu - column sums (bias and norm-weight gradients) and the final
 * step of every float64 sum, both in a fixed order (reduce.cuh). */
#include "reduce.cuh"

#define COL_ROWS 64 /* rows per partial column sum */

__global__ void colsum_partial(float *part, tview src, tview x, int has_x, const float *r, int N, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x, i0 = blockIdx.y * COL_ROWS;
    if (j >= d) return;
    float s = 0.0f;
    for (int i = i0; i < i0 + COL_ROWS && i < N; i++) {
        size_t k = (size_t)i * d + j;
        s += has_x ? ld(src, k) * ld(x, k) * r[i] : ld(src, k);
    }
    part[(size_t)blockIdx.y * d + j] = s;
}

__global__ void colsum_finish(float *dst, const float *part, int chunks, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; c++) s += part[(size_t)c * d + j];
    dst[j] += s;
}

void cuda_colsum_add(float *dst, tview src, const tview *x, const float *r, int N, int d) {
    if (!cuda_is_f32(dst, "column sum dst")) die("cuda backend: a weight or bias gradient must be float32");
    int chunks = (N + COL_ROWS - 1) / COL_ROWS;
    if (chunks == 0 || d == 0) return;
    float *part = (float *)cuda_scratch(SCRATCH_SUM, sizeof(float) * (size_t)chunks * d);
    dim3 grid(cuda_blocks(d, 128), chunks);
    CUDA_LAUNCH(colsum_partial, grid, 128, 0, part, src, x ? *x : src, x != NULL, r, N, d);
    CUDA_LAUNCH(colsum_finish, cuda_blocks(d, 128), 128, 0, dst, part, chunks, d);
}

__global__ void total_kernel(double *out, const double *part) {
    double v = 0.0;
    for (int i = threadIdx.x; i < SUM_BLOCKS; i += blockDim.x) v += part[i];
    v = block_sum(v);
    if (threadIdx.x == 0) *out = v;
}

double cuda_total(const double *partials) {
    double *d = (double *)(partials + SUM_BLOCKS), h; /* callers leave room for it */
    CUDA_LAUNCH(total_kernel, 1, SUM_THREADS, 0, d, partials);
    CUDA_CHECK(cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, cuda_stream));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream));
    return h;
}
