/* attention_rows.cu - CUDA backend: attention of new rows over a KV cache
 * (nn_attention_rows, kernels.def), the attention of generation.
 *
 * Its sizes are small (up to a few hundred new rows, a few thousand keys per
 * query, head_dim up to 128), so a simple kernel serves: one block per
 * (query row, head) walks the query's key range [lo, hi] in tiles of
 * ROWS_TILE keys with an online softmax (running max and sum, as flash
 * attention), so no key count limits its shared memory. In a tile each warp
 * scores keys (its lanes split head_dim, coalesced, then a shuffle sum);
 * then each thread updates the output dimensions it owns over the tile's
 * values (coalesced across threads). Buffers are read and written in their
 * own type through tview (bfloat16 activations), the math is float32. */
#include "typed.cuh"

#include <math.h>

#define ROWS_THREADS 128
#define ROWS_TILE 64

__global__ void __launch_bounds__(ROWS_THREADS)
    attn_rows(tview out, tview q, tview kv, const int32_t *lo, const int32_t *hi, int H, int hd, float scale) {
    extern __shared__ float sm[];
    float *qs = sm, *acc = sm + hd, *p = sm + 2 * hd; /* q * scale, output sums [hd]; tile scores */
    int r = blockIdx.x, h = blockIdx.y, d = H * hd, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t stride = 3 * (size_t)d; /* q | k | v rows */
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        qs[c] = ld(q, r * stride + h * hd + c) * scale;
        acc[c] = 0.0f;
    }
    __syncthreads();
    int k1 = hi[r];
    float m = -INFINITY, l = 0.0f;
    for (int t0 = lo[r]; t0 <= k1; t0 += ROWS_TILE) {
        int nt = min(ROWS_TILE, k1 - t0 + 1);
        for (int j = warp; j < nt; j += ROWS_THREADS / 32) {
            size_t k = (t0 + j) * stride + d + h * hd;
            float s = 0.0f;
            for (int c = lane; c < hd; c += 32) s += qs[c] * ld(kv, k + c);
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) p[j] = s;
        }
        __syncthreads();
        float mt = m;
        for (int j = 0; j < nt; j++) mt = fmaxf(mt, p[j]);
        __syncthreads(); /* every thread has its max before p changes */
        for (int j = threadIdx.x; j < nt; j += blockDim.x) p[j] = expf(p[j] - mt);
        __syncthreads();
        float alpha = expf(m - mt), sum = 0.0f; /* alpha 0 on the first tile (m = -inf) */
        for (int j = 0; j < nt; j++) sum += p[j];
        l = l * alpha + sum;
        for (int c = threadIdx.x; c < hd; c += blockDim.x) {
            size_t v = (size_t)t0 * stride + 2 * d + h * hd + c;
            float a = acc[c] * alpha;
            for (int j = 0; j < nt; j++) a += p[j] * ld(kv, v + j * stride);
            acc[c] = a;
        }
        m = mt;
        __syncthreads(); /* p is read before the next tile writes it */
    }
    for (int c = threadIdx.x; c < hd; c += blockDim.x) st(out, (size_t)r * d + h * hd + c, acc[c] / l);
}

/* The kernel reads lo and hi on the device: a host array would fault there. */
static void need_i32(const int32_t *p, const char *what) {
    if (cuda_buffer(p, what)->type != BUF_I32)
        die("cuda attention_rows: %s must be an int32 buffer (nn_alloc_i32)", what);
}

extern "C" void cuda_attention_rows(float *out, const float *q, const float *kv, const int32_t *lo, const int32_t *hi,
                                    int n, int H, int head_dim) {
    if (n == 0) return;
    need_i32(lo, "attention_rows lo");
    need_i32(hi, "attention_rows hi");
    size_t smem = sizeof(float) * (2 * (size_t)head_dim + ROWS_TILE);
    CUDA_LAUNCH(attn_rows, dim3(n, H), ROWS_THREADS, smem, tv(out, "attention_rows out"), tv(q, "attention_rows q"),
                tv(kv, "attention_rows kv"), lo, hi, H, head_dim, 1.0f / sqrtf((float)head_dim));
}
