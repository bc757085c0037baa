/* reduce.cuh - deterministic reductions of the CUDA backend: a fixed grid
 * and fixed orders, so a sum does not depend on scheduling (as the CPU's). */
#ifndef NN_CUDA_REDUCE_CUH
#define NN_CUDA_REDUCE_CUH

#include "typed.cuh"

#define SUM_BLOCKS 512 /* blocks of the partial sums, whatever n */
#define SUM_THREADS 256

/* Sum over the block of each thread's v (blockDim.x a multiple of 32, at
 * most 1024); every thread gets the total. */
template <typename T> __device__ T block_sum(T v) {
    __shared__ T part[32];
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, nw = blockDim.x / 32;
    __syncthreads(); /* part may be in use by a previous call */
    if (threadIdx.x % 32 == 0) part[w] = v;
    __syncthreads();
    T t = 0;
    for (int i = 0; i < nw; i++) t += part[i]; /* same order in every thread */
    return t;
}

/* dst[j] += sum_i src[i, j] * (x ? x[i, j] * r[i] : 1) over N rows of d;
 * dst float32 (a gradient). */
void cuda_colsum_add(float *dst, tview src, const tview *x, const float *r, int N, int d);
/* The total of SUM_BLOCKS float64 partial sums on the device, on the host. */
double cuda_total(const double *partials);

#endif
