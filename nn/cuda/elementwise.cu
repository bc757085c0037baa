/* elementwise.cu - CUDA backend: RMSNorm, RoPE, SiLU, SwiGLU, residual add,
 * row gathers and scatters, gradient scaling and AdamW. Every tensor is read
 * and written in its buffer's type with float32 arithmetic. */
#include "reduce.cuh"

#include <cub/device/device_radix_sort.cuh>

#define THREADS 256
#define LAUNCH(kernel, n, ...) CUDA_LAUNCH(kernel, cuda_blocks((n), THREADS), THREADS, 0, __VA_ARGS__)

/* ---- RMSNorm: one block per row ---- */

__device__ float row_inv_rms(tview x, size_t row, int d, float eps) {
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = ld(x, row * d + j);
        ss += v * v;
    }
    return rsqrtf(block_sum(ss) / d + eps);
}

__global__ void rmsnorm_fwd(tview y, tview x, const float *w, int d, float eps) {
    size_t i = blockIdx.x;
    float r = row_inv_rms(x, i, d, eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) st(y, i * d + j, ld(x, i * d + j) * r * w[j]);
}

__global__ void rmsnorm_bwd(tview dx, float *rs, tview dy, tview x, const float *w, int d, float eps) {
    size_t i = blockIdx.x;
    float r = row_inv_rms(x, i, d, eps), dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += ld(dy, i * d + j) * w[j] * ld(x, i * d + j);
    dot = block_sum(dot);
    float c = dot * r * r * r / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        size_t k = i * d + j;
        st(dx, k, ld(dx, k) + r * w[j] * ld(dy, k) - ld(x, k) * c);
    }
    if (threadIdx.x == 0) rs[i] = r;
}

extern "C" void cuda_rmsnorm_forward(float *y, const float *x, const float *w, int N, int d, float eps) {
    if (N == 0) return;
    if (!cuda_is_f32(w, "rmsnorm w")) die("cuda backend: norm weights must be float32");
    CUDA_LAUNCH(rmsnorm_fwd, N, THREADS, 0, tv(y, "rmsnorm y"), tv(x, "rmsnorm x"), w, d, eps);
}

extern "C" void cuda_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int N,
                                      int d, float eps) {
    if (N == 0) return;
    float *rs = (float *)cuda_scratch(SCRATCH_ROWS, sizeof(float) * N);
    tview tdy = tv(dy, "rmsnorm dy"), tx = tv(x, "rmsnorm x");
    CUDA_LAUNCH(rmsnorm_bwd, N, THREADS, 0, tv(dx, "rmsnorm dx"), rs, tdy, tx, w, d, eps);
    cuda_colsum_add(dw, tdy, &tx, rs, N, d);
}

/* ---- RoPE (rotate_half): one thread per pair (row, head, j < half) ---- */

__global__ void rope_kernel(tview x, int stride, const int32_t *pos, int N, int n_heads, int half, const float *cos_tab,
                            const float *sin_tab, float sign) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)N * n_heads * half) return;
    int j = t % half, h = (t / half) % n_heads;
    size_t i = t / ((size_t)half * n_heads);
    float c = cos_tab[(size_t)pos[i] * half + j], s = sign * sin_tab[(size_t)pos[i] * half + j];
    size_t a = i * stride + (size_t)h * 2 * half + j, b = a + half;
    float a0 = ld(x, a), b0 = ld(x, b);
    st(x, a, a0 * c - b0 * s);
    st(x, b, b0 * c + a0 * s);
}

extern "C" void cuda_rope(float *x, int stride, const int32_t *pos, int N, int n_heads, int head_dim,
                          const float *cos_tab, const float *sin_tab, int inverse) {
    size_t n = (size_t)N * n_heads * (head_dim / 2);
    if (n == 0) return;
    LAUNCH(rope_kernel, n, tv(x, "rope x"), stride, pos, N, n_heads, head_dim / 2, cos_tab, sin_tab,
           inverse ? -1.0f : 1.0f);
}

/* ---- activations ---- */

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

__global__ void swiglu_fwd(tview act, tview gu, int N, int f) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)N * f) return;
    size_t i = t / f, j = t % f, g = i * 2 * f + j;
    float gv = ld(gu, g);
    st(act, t, gv * sigmoid(gv) * ld(gu, g + f));
}

__global__ void swiglu_bwd(tview dgu, tview dact, tview gu, int N, int f) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)N * f) return;
    size_t i = t / f, j = t % f, g = i * 2 * f + j;
    float gv = ld(gu, g), u = ld(gu, g + f), da = ld(dact, t), s = sigmoid(gv);
    st(dgu, g + f, da * gv * s);
    st(dgu, g, da * u * (s + gv * s * (1.0f - s)));
}

extern "C" void cuda_swiglu_forward(float *act, const float *gu, int N, int f) {
    if (N && f) LAUNCH(swiglu_fwd, (size_t)N * f, tv(act, "swiglu act"), tv(gu, "swiglu gu"), N, f);
}

extern "C" void cuda_swiglu_backward(float *dgu, const float *dact, const float *gu, int N, int f) {
    if (N && f)
        LAUNCH(swiglu_bwd, (size_t)N * f, tv(dgu, "swiglu dgu"), tv(dact, "swiglu dact"), tv(gu, "swiglu gu"), N, f);
}

__global__ void silu_fwd(tview y, tview x, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) {
        float v = ld(x, i);
        st(y, i, v * sigmoid(v));
    }
}

__global__ void silu_bwd(tview dx, tview dy, tview x, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ld(x, i), s = sigmoid(v);
    st(dx, i, ld(dy, i) * (s + v * s * (1.0f - s)));
}

__global__ void add_kernel(tview y, tview x, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) st(y, i, ld(y, i) + ld(x, i));
}

extern "C" void cuda_silu_forward(float *y, const float *x, size_t n) {
    if (n) LAUNCH(silu_fwd, n, tv(y, "silu y"), tv(x, "silu x"), n);
}

extern "C" void cuda_silu_backward(float *dx, const float *dy, const float *x, size_t n) {
    if (n) LAUNCH(silu_bwd, n, tv(dx, "silu dx"), tv(dy, "silu dy"), tv(x, "silu x"), n);
}

extern "C" void cuda_add(float *y, const float *x, size_t n) {
    if (n) LAUNCH(add_kernel, n, tv(y, "add y"), tv(x, "add x"), n);
}

/* ---- gathers and scatters ---- */

__global__ void gather_kernel(tview dst, tview src, const int32_t *idx, int n, int d) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t < (size_t)n * d) st(dst, t, ld(src, (size_t)idx[t / d] * d + t % d));
}

__global__ void scatter_kernel(tview dst, tview src, const int32_t *idx, int n, int d) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t < (size_t)n * d) st(dst, (size_t)idx[t / d] * d + t % d, ld(src, t));
}

extern "C" void cuda_gather_rows(float *dst, const float *src, const int32_t *idx, int n, int d) {
    if (n && d) LAUNCH(gather_kernel, (size_t)n * d, tv(dst, "gather dst"), tv(src, "gather src"), idx, n, d);
}

extern "C" void cuda_scatter_rows(float *dst, const float *src, const int32_t *idx, int n, int d) {
    if (n && d) LAUNCH(scatter_kernel, (size_t)n * d, tv(dst, "scatter dst"), tv(src, "scatter src"), idx, n, d);
}

__global__ void iota_kernel(int32_t *v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = i;
}

/* Block s adds the run of equal destinations that starts at sorted position
 * s (other blocks return): its rows in increasing i (the sort is stable), so
 * the sum has a fixed order whatever the repeats. */
__global__ void scatter_add_runs(tview dst, tview src, const int32_t *key, const int32_t *row, int n, int d) {
    int s = blockIdx.x;
    if (s > 0 && key[s] == key[s - 1]) return;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int t = s; t < n && key[t] == key[s]; t++) acc += ld(src, (size_t)row[t] * d + c);
        size_t o = (size_t)key[s] * d + c;
        st(dst, o, ld(dst, o) + acc);
    }
}

extern "C" void cuda_scatter_add_rows(float *dst, const float *src, const int32_t *idx, int n, int d) {
    if (n == 0 || d == 0) return;
    size_t temp = 0;
    cub::DeviceRadixSort::SortPairs(NULL, temp, (const int32_t *)NULL, (int32_t *)NULL, (const int32_t *)NULL,
                                    (int32_t *)NULL, n, 0, 32, cuda_stream);
    size_t ints = ((size_t)3 * n + 63) / 64 * 64; /* sorted keys, rows, sorted rows */
    int32_t *keys = (int32_t *)cuda_scratch(SCRATCH_SORT, ints * 4 + temp);
    int32_t *rows = keys + n, *rows_sorted = keys + 2 * n;
    void *tmp = keys + ints;
    LAUNCH(iota_kernel, (size_t)n, rows, n);
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(tmp, temp, idx, keys, rows, rows_sorted, n, 0, 32, cuda_stream));
    CUDA_LAUNCH(scatter_add_runs, n, 128, 0, tv(dst, "scatter_add dst"), tv(src, "scatter_add src"), keys, rows_sorted,
                n, d);
}

/* ---- optimizer ---- */

__global__ void scale_kernel(float *x, float s, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

extern "C" void cuda_scale(float *x, float s, size_t n) {
    if (!n) return;
    if (!cuda_is_f32(x, "scale x")) die("cuda backend: nn_scale needs a float32 buffer");
    LAUNCH(scale_kernel, n, x, s, n);
    cuda_mirror_sync(x, n);
}

/* The bfloat16 copy of the parameters (the mirror GEMMs read) is written in
 * the same pass. */
__global__ void adamw_kernel(float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v, size_t n, float lr,
                             float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i], mi = beta1 * m[i] + (1.0f - beta1) * gi, vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float pi = p[i];
    pi -= lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * pi);
    p[i] = pi;
    if (p16) p16[i] = __float2bfloat16_rn(pi);
}

extern "C" void cuda_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                           float eps, float wd, float bc1, float bc2) {
    if (!n) return;
    const void *args[] = {p, g, m, v};
    for (int k = 0; k < 4; k++)
        if (!cuda_is_f32(args[k], "adamw")) die("cuda backend: AdamW needs float32 parameters, gradients, moments");
    buf_entry *e = cuda_buffer(p, "adamw p");
    __nv_bfloat16 *p16 = e->mirror ? (__nv_bfloat16 *)e->mirror + buf_index(e, p) : NULL;
    LAUNCH(adamw_kernel, n, p, p16, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2);
}
