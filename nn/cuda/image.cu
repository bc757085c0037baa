/* image.cu - CUDA backend: the kernels of NHWC maps besides convolution
 * (conv.cu): GroupNorm (forward, fused with SiLU, backward), nearest 2x
 * upsampling, the moves between patches and maps, AdaGN's scale and shift,
 * channel slices, column sums and the transpose. Every tensor is read and
 * written in its buffer's type with float32 arithmetic; the GroupNorm
 * statistics, its weights and gradients are float32.
 *
 * Every sum has a fixed order (reduce.cuh), no atomics: GroupNorm's sums are
 * one block per (image, group), each thread over a fixed stride of the
 * group's elements in float32, then the block's tree in float64; per-channel
 * sums (GroupNorm's backward, scale_shift's dss) are columns of threads over
 * fixed pixel strides, then the column's partials in thread order; sums over
 * images run in image order. */
#include "reduce.cuh"

#define THREADS 256
#define LAUNCH(kernel, n, ...) CUDA_LAUNCH(kernel, cuda_blocks((n), THREADS), THREADS, 0, __VA_ARGS__)

/* After a kernel wrote n elements at v: a float32 buffer's bfloat16 mirror,
 * if it has one, follows (GEMMs read it: scale_shift's dss is the dy of the
 * time_emb_proj's linear_backward). A no-op for bfloat16 buffers. */
static void mirror_after(const tview &v, size_t n) {
    if (v.f32 && n) cuda_mirror_sync((const float *)v.p, n);
}

__device__ __forceinline__ float silu_of(float v) { return v / (1.0f + __expf(-v)); }

/* ---- GroupNorm: one block per (image, group) ----
 * Element e < hw * cpg of group g in image i: pixel e / cpg, channel
 * g * cpg + e % cpg (neighbouring threads read neighbouring channels). */

__device__ __forceinline__ size_t gn_at(int i, int g, int e, int hw, int C, int cpg) {
    return ((size_t)i * hw + e / cpg) * C + (size_t)g * cpg + e % cpg;
}

/* Two passes (mean, then squared deviations), as the CPU: a one-pass
 * variance loses digits when the mean is large against the spread. */
__global__ void gn_fwd(tview y, float *mean, float *rstd, tview x, const float *w, const float *b, int C, int hw,
                       int groups, float eps, int silu) {
    int i = blockIdx.x / groups, g = blockIdx.x % groups, cpg = C / groups, m = hw * cpg;
    double count = (double)m;
    float s = 0.0f;
    for (int e = threadIdx.x; e < m; e += blockDim.x) s += ld(x, gn_at(i, g, e, hw, C, cpg));
    float mu = (float)(block_sum((double)s) / count);
    s = 0.0f;
    for (int e = threadIdx.x; e < m; e += blockDim.x) {
        float d = ld(x, gn_at(i, g, e, hw, C, cpg)) - mu;
        s += d * d;
    }
    float r = (float)(1.0 / sqrt(block_sum((double)s) / count + eps));
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = mu;
        rstd[blockIdx.x] = r;
    }
    for (int e = threadIdx.x; e < m; e += blockDim.x) { /* y = x * a + (b - mu * a), a = rstd * w */
        int c = g * cpg + e % cpg;
        float a = r * w[c], v = ld(x, gn_at(i, g, e, hw, C, cpg)) * a + (b[c] - mu * a);
        st(y, gn_at(i, g, e, hw, C, cpg), silu ? silu_of(v) : v);
    }
}

static void gn_check(const void *mean, const void *rstd, const void *w, const void *b, int C, int groups) {
    if (groups < 1 || C % groups) die("cuda backend: group_norm: %d channels in %d groups", C, groups);
    if (!cuda_is_f32(mean, "group_norm mean") || !cuda_is_f32(rstd, "group_norm rstd") ||
        !cuda_is_f32(w, "group_norm w") || !cuda_is_f32(b, "group_norm b"))
        die("cuda backend: group_norm: statistics, weights and their gradients must be float32");
}

static void gn_forward(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int C,
                       int n, int hw, int groups, float eps, int silu) {
    if (n == 0 || hw == 0) return;
    gn_check(mean, rstd, w, b, C, groups);
    tview ty = tv(y, "group_norm y");
    CUDA_LAUNCH(gn_fwd, n * groups, THREADS, 0, ty, mean, rstd, tv(x, "group_norm x"), w, b, C, hw, groups, eps, silu);
    mirror_after(ty, (size_t)n * hw * C);
}

extern "C" void cuda_group_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *w,
                                        const float *b, int C, int n, int hw, int groups, float eps) {
    gn_forward(y, mean, rstd, x, w, b, C, n, hw, groups, eps, 0);
}

extern "C" void cuda_group_norm_silu_forward(float *act, float *mean, float *rstd, const float *x, const float *w,
                                             const float *b, int C, int n, int hw, int groups, float eps) {
    gn_forward(act, mean, rstd, x, w, b, C, n, hw, groups, eps, 1);
}

/* Per-channel sums over the pixels of image i, for channels [c0, c0 + cols)
 * at most blockDim.x of them: thread t takes channel c0 + t % cols over
 * pixels t / cols, + rows, ... (rows = blockDim.x / cols threads a channel),
 * then thread j < cols adds its channel's rows partials in order. part is
 * shared, 2 * blockDim.x doubles; u and v get the two sums of channel
 * c0 + threadIdx.x in thread threadIdx.x < cols. f(p, j, a, b) adds pixel
 * p's two summands of the slice's channel j to a and b. */
template <typename F>
__device__ void channel_sums(double *part, int cols, int hw, F f, double *u, double *v) {
    int rows = blockDim.x / cols, t = threadIdx.x, j = t % cols, r = t / cols;
    float a = 0.0f, b = 0.0f;
    if (r < rows)
        for (int p = r; p < hw; p += rows) f(p, j, a, b);
    __syncthreads(); /* part may be in use by a previous call */
    part[t] = a;
    part[blockDim.x + t] = b;
    __syncthreads();
    if (t < cols) {
        double su = 0.0, sv = 0.0;
        for (int q = 0; q < rows; q++) {
            su += part[q * cols + t];
            sv += part[blockDim.x + q * cols + t];
        }
        *u = su;
        *v = sv;
    }
}

/* As the CPU (cpu_group_norm_backward): with r = rstd and, over the group,
 * mg = sum_c w S1 / count, mgx = sum_c w S2 r / count,
 *   dx = dy * r w - (x - mean) * r^2 mgx - r mg
 * from the per-channel sums S1 = sum(dy), S2 = sum(dy * (x - mean)), kept
 * in s12[i, C] pairs for the weights' sums over images. */
__global__ void gn_bwd(tview dx, double *s12, tview dy, tview x, const float *mean, const float *rstd, const float *w,
                       int C, int hw, int groups) {
    __shared__ double part[2 * THREADS];
    __shared__ double coef[2];
    int i = blockIdx.x / groups, g = blockIdx.x % groups, cpg = C / groups;
    float mu = mean[blockIdx.x], r = rstd[blockIdx.x];
    for (int c0 = 0; c0 < cpg; c0 += blockDim.x) {
        int cols = cpg - c0 < (int)blockDim.x ? cpg - c0 : (int)blockDim.x, cb = g * cpg + c0;
        double u = 0.0, v = 0.0;
        channel_sums(
            part, cols, hw,
            [&](int p, int j, float &a, float &b) {
                size_t k = ((size_t)i * hw + p) * C + cb + j;
                float gy = ld(dy, k);
                a += gy;
                b += gy * (ld(x, k) - mu);
            },
            &u, &v);
        if ((int)threadIdx.x < cols) {
            size_t k = (size_t)i * C + cb + threadIdx.x;
            s12[2 * k] = u;
            s12[2 * k + 1] = v;
        }
    }
    __syncthreads(); /* s12 of this group complete (global writes of this block) */
    if (threadIdx.x == 0) {
        double mg = 0.0, mgx = 0.0, count = (double)cpg * hw;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            size_t k = (size_t)i * C + c;
            mg += w[c] * s12[2 * k];
            mgx += w[c] * s12[2 * k + 1] * r;
        }
        coef[0] = mg / count;
        coef[1] = mgx / count;
    }
    __syncthreads();
    float bc = (float)(r * r * coef[1]), cc = (float)(-r * coef[0]);
    for (int e = threadIdx.x; e < hw * cpg; e += blockDim.x) {
        int c = g * cpg + e % cpg;
        size_t k = gn_at(i, g, e, hw, C, cpg);
        st(dx, k, ld(dy, k) * (r * w[c]) - (ld(x, k) - mu) * bc + cc);
    }
}

/* dw[c] += sum_i S2[i, c] * rstd[i, g(c)], db[c] += sum_i S1[i, c], images in order. */
__global__ void gn_bwd_weights(float *dw, float *db, const double *s12, const float *rstd, int C, int n, int groups) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int cpg = C / groups;
    double sw = 0.0, sb = 0.0;
    for (int i = 0; i < n; i++) {
        size_t k = (size_t)i * C + c;
        sw += s12[2 * k + 1] * rstd[i * groups + c / cpg];
        sb += s12[2 * k];
    }
    dw[c] += (float)sw;
    db[c] += (float)sb;
}

extern "C" void cuda_group_norm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                                         const float *mean, const float *rstd, const float *w, int C, int n, int hw,
                                         int groups) {
    if (n == 0) return;
    gn_check(mean, rstd, w, w, C, groups);
    if (!cuda_is_f32(dw, "group_norm dw") || !cuda_is_f32(db, "group_norm db"))
        die("cuda backend: group_norm: weight gradients must be float32");
    double *s12 = (double *)cuda_scratch(SCRATCH_STATS, sizeof(double) * 2 * (size_t)n * C);
    CUDA_CHECK(cudaMemsetAsync(s12, 0, sizeof(double) * 2 * (size_t)n * C, cuda_stream)); /* hw == 0: zero sums */
    tview tdx = tv(dx, "group_norm dx");
    if (hw > 0)
        CUDA_LAUNCH(gn_bwd, n * groups, THREADS, 0, tdx, s12, tv(dy, "group_norm dy"), tv(x, "group_norm x"), mean,
                    rstd, w, C, hw, groups);
    mirror_after(tdx, (size_t)n * hw * C);
    LAUNCH(gn_bwd_weights, (size_t)C, dw, db, s12, rstd, C, n, groups);
}

/* ---- nearest 2x upsampling ---- */

__global__ void up2_fwd(tview y, tview x, int n, int h, int w, int C) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)n * 4 * h * w * C) return;
    int c = t % C, X = (t / C) % (2 * w), Y = (t / ((size_t)C * 2 * w)) % (2 * h);
    size_t i = t / ((size_t)C * 4 * w * h);
    st(y, t, ld(x, ((i * h + Y / 2) * w + X / 2) * C + c));
}

/* The CPU's order: (2y, 2x) + (2y, 2x + 1) + (2y + 1, 2x) + (2y + 1, 2x + 1). */
__global__ void up2_bwd(tview dx, tview dy, int n, int h, int w, int C) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)n * h * w * C) return;
    int c = t % C, xx = (t / C) % w, yy = (t / ((size_t)C * w)) % h;
    size_t i = t / ((size_t)C * w * h), row = (size_t)2 * w * C;
    size_t a = ((i * 2 * h + 2 * yy) * 2 * w + 2 * xx) * C + c, b = a + row;
    st(dx, t, ld(dy, a) + ld(dy, a + C) + ld(dy, b) + ld(dy, b + C));
}

extern "C" void cuda_upsample2x_forward(float *y, const float *x, int n, int h, int w, int C) {
    size_t m = (size_t)n * 4 * h * w * C;
    if (!m) return;
    tview ty = tv(y, "upsample2x y");
    LAUNCH(up2_fwd, m, ty, tv(x, "upsample2x x"), n, h, w, C);
    mirror_after(ty, m);
}

extern "C" void cuda_upsample2x_backward(float *dx, const float *dy, int n, int h, int w, int C) {
    size_t m = (size_t)n * h * w * C;
    if (!m) return;
    tview tdx = tv(dx, "upsample2x dx");
    LAUNCH(up2_bwd, m, tdx, tv(dy, "upsample2x dy"), n, h, w, C);
    mirror_after(tdx, m);
}

/* ---- patches <-> maps: one thread per map element ----
 * map[i, y, x, c] is element ((y % p) * p + x % p) * C + c of patch
 * (i * g + y / p) * g + x / p. */

__global__ void patch_move(tview map, tview patches, int n, int g, int p, int C, int to_map) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x, side = (size_t)g * p;
    if (t >= (size_t)n * side * side * C) return;
    int c = t % C, xx = (t / C) % side, yy = (t / (C * side)) % side;
    size_t i = t / (C * side * side);
    size_t q = (((i * g + yy / p) * g + xx / p) * p * p + (size_t)(yy % p) * p + xx % p) * C + c;
    if (to_map)
        st(map, t, ld(patches, q));
    else
        st(patches, q, ld(map, t));
}

extern "C" void cuda_patches_to_map(float *map, const float *patches, int n, int g, int p, int C) {
    size_t m = (size_t)n * g * p * g * p * C;
    if (!m) return;
    tview tm = tv(map, "patches_to_map map");
    LAUNCH(patch_move, m, tm, tv(patches, "patches_to_map patches"), n, g, p, C, 1);
    mirror_after(tm, m);
}

extern "C" void cuda_map_to_patches(float *patches, const float *map, int n, int g, int p, int C) {
    size_t m = (size_t)n * g * p * g * p * C;
    if (!m) return;
    tview tp = tv(patches, "map_to_patches patches");
    LAUNCH(patch_move, m, tv(map, "map_to_patches map"), tp, n, g, p, C, 0);
    mirror_after(tp, m);
}

/* ---- AdaGN's scale and shift: ss[n, 2C] = scale | shift per image ---- */

__global__ void ss_fwd(tview y, tview x, tview ss, int hw, int C, size_t m) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= m) return;
    int c = t % C;
    size_t i = t / ((size_t)hw * C);
    st(y, t, ld(x, t) * (1.0f + ld(ss, i * 2 * C + c)) + ld(ss, i * 2 * C + C + c));
}

/* dss[i, c] += sum_p dy x, dss[i, C + c] += sum_p dy: block (32 channels,
 * SS_ROWS pixel rows) per (channel tile, image). */
#define SS_ROWS 8
__global__ void ss_sums(tview dss, tview dy, tview x, int hw, int C) {
    __shared__ float part[2][SS_ROWS][32];
    int c = blockIdx.x * 32 + threadIdx.x, i = blockIdx.y;
    float a = 0.0f, b = 0.0f;
    if (c < C)
        for (int p = threadIdx.y; p < hw; p += SS_ROWS) {
            size_t k = ((size_t)i * hw + p) * C + c;
            float gy = ld(dy, k);
            a += gy * ld(x, k);
            b += gy;
        }
    part[0][threadIdx.y][threadIdx.x] = a;
    part[1][threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float sa = 0.0f, sb = 0.0f;
        for (int r = 0; r < SS_ROWS; r++) {
            sa += part[0][r][threadIdx.x];
            sb += part[1][r][threadIdx.x];
        }
        size_t o = (size_t)i * 2 * C + c;
        st(dss, o, ld(dss, o) + sa);
        st(dss, o + C, ld(dss, o + C) + sb);
    }
}

__global__ void ss_dx(tview dx, tview dy, tview ss, int hw, int C, size_t m) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= m) return;
    size_t i = t / ((size_t)hw * C);
    st(dx, t, ld(dy, t) * (1.0f + ld(ss, i * 2 * C + t % C)));
}

extern "C" void cuda_scale_shift_forward(float *y, const float *x, const float *ss, int n, int hw, int C) {
    size_t m = (size_t)n * hw * C;
    if (!m) return;
    tview ty = tv(y, "scale_shift y");
    LAUNCH(ss_fwd, m, ty, tv(x, "scale_shift x"), tv(ss, "scale_shift ss"), hw, C, m);
    mirror_after(ty, m);
}

/* The sums first: dx may be dy (stream order keeps them apart). */
extern "C" void cuda_scale_shift_backward(float *dx, float *dss, const float *dy, const float *x, const float *ss,
                                          int n, int hw, int C) {
    size_t m = (size_t)n * hw * C;
    if (n == 0 || C == 0) return;
    tview tdy = tv(dy, "scale_shift dy"), tss = tv(ss, "scale_shift ss");
    tview tdss = tv(dss, "scale_shift dss"), tdx = tv(dx, "scale_shift dx");
    CUDA_LAUNCH(ss_sums, dim3(cuda_blocks(C, 32), n), dim3(32, SS_ROWS), 0, tdss, tdy, tv(x, "scale_shift x"), hw, C);
    mirror_after(tdss, (size_t)n * 2 * C);
    if (!m) return;
    LAUNCH(ss_dx, m, tdx, tdy, tss, hw, C, m);
    mirror_after(tdx, m);
}

/* ---- channel slices, column sums, transpose ---- */

__global__ void copy_cols(tview dst, size_t ld_dst, tview src, size_t ld_src, int cols, size_t m) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= m) return;
    size_t r = t / cols, j = t % cols;
    st(dst, r * ld_dst + j, ld(src, r * ld_src + j));
}

extern "C" void cuda_copy_columns(float *dst, int ld_dst, int dst_col, const float *src, int ld_src, int src_col,
                                  size_t rows, int cols) {
    size_t m = rows * cols;
    if (!m) return;
    tview d = tv(dst, "copy_columns dst"), s = tv(src, "copy_columns src");
    /* The column offsets in elements of each buffer's own type. */
    d.p = (char *)d.p + (size_t)dst_col * (d.f32 ? 4 : 2);
    s.p = (char *)s.p + (size_t)src_col * (s.f32 ? 4 : 2);
    LAUNCH(copy_cols, m, d, (size_t)ld_dst, s, (size_t)ld_src, cols, m);
    mirror_after(d, (rows - 1) * (size_t)ld_dst + cols);
}

extern "C" void cuda_add_column_sums(float *sums, const float *x, size_t rows, int cols) {
    if (rows > 0x7fffffff) die("cuda backend: add_column_sums: %zu rows, more than it takes", rows);
    cuda_colsum_add(sums, tv(x, "add_column_sums x"), NULL, NULL, (int)rows, cols);
}

/* 32 x 32 tiles through shared memory: both sides coalesced. */
__global__ void transpose_kernel(tview dst, tview src, int rows, int cols) {
    __shared__ float tile[32][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int r = blockIdx.y * 32 + k;
        if (r < rows && c < cols) tile[k][threadIdx.x] = ld(src, (size_t)r * cols + c);
    }
    __syncthreads();
    int r = blockIdx.y * 32 + threadIdx.x;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int cc = blockIdx.x * 32 + k;
        if (r < rows && cc < cols) st(dst, (size_t)cc * rows + r, tile[threadIdx.x][k]);
    }
}

extern "C" void cuda_transpose(float *dst, const float *src, int rows, int cols) {
    if (rows == 0 || cols == 0) return;
    dim3 grid(cuda_blocks(cols, 32), cuda_blocks(rows, 32));
    tview td = tv(dst, "transpose dst");
    CUDA_LAUNCH(transpose_kernel, grid, dim3(32, 8), 0, td, tv(src, "transpose src"), rows, cols);
    mirror_after(td, (size_t)rows * cols);
}
