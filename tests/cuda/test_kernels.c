/* test_kernels.c (CUDA=1 only; run by bench/gpu-check.sh on a GPU) - each
 * CUDA kernel against the CPU backend on the same inputs, rounded to
 * bfloat16 first where the GPU keeps them in bfloat16, and the model's
 * loss and gradients on both backends. Tolerance: the largest error at most
 * 2e-2 of the largest reference value; a NaN anywhere fails.
 *
 *   test_kernels          every kernel, attention up to the 0.16B shapes
 *                         (16 heads of 64, L = 2048, 256-patch images), the
 *                         U-Net's image kernels (cuDNN convolutions, GroupNorm,
 *                         patch moves ...), the model with and without the U-Net
 *   test_kernels --small  small shapes only: for compute-sanitizer, which
 *                         slows kernels by 10-100x */
#include "cuda_test.h"
#include "../../nn/optim.h"
#include "../../trainer/model.h"

#include <string.h>

static void test_linear(int N, int in, int out) {
    /* W and b inside one float32 "parameter" buffer, b at an odd offset, as
     * in the model's flat array (the bias then misses the epilogue's alignment). */
    size_t nw = (size_t)out * in, np = nw + 1 + out;
    float *params = randn(np, 0.05f), *x = bf16_round(randn((size_t)N * in, 1), (size_t)N * in);
    float *y = xmalloc(sizeof(float) * N * out);
    cpu();
    nn_linear_forward(y, x, params, params + nw + 1, N, in, out);
    float *dp = gpu(params, np, 1), *dx = gpu(x, (size_t)N * in, 0), *dy = gpu(y, (size_t)N * out, 0);
    nn_linear_forward(dy, dx, dp, dp + nw + 1, N, in, out);
    close_to("linear_forward with bias", dy, y, (size_t)N * out);

    float *g = bf16_round(randn((size_t)N * out, 1), (size_t)N * out);
    float *gx = bf16_round(randn((size_t)N * in, 1), (size_t)N * in), *gw = randn(np, 0.1f);
    float *dg = gpu(g, (size_t)N * out, 0), *dgx = gpu(gx, (size_t)N * in, 0), *dgw = gpu(gw, np, 1);
    cpu();
    nn_linear_backward(gx, gw, gw + nw + 1, g, x, params, N, in, out, 1);
    cuda();
    nn_linear_backward(dgx, dgw, dgw + nw + 1, dg, dx, dp, N, in, out, 1);
    close_to("linear_backward dx (accumulated)", dgx, gx, (size_t)N * in);
    close_to("linear_backward dW (accumulated)", dgw, gw, nw);
    close_to("linear_backward db (accumulated)", dgw + nw + 1, gw + nw + 1, out);

    /* An AdamW step on the parameters must reach the GEMMs' bfloat16 copy. */
    float *m = randn(np, 0.01f), *v = randn(np, 0.0f);
    float *dm = gpu(m, np, 1), *dv = gpu(v, np, 1);
    cpu();
    nn_adamw(params, gw, m, v, np, 0.5f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.1f, 0.05f);
    nn_linear_forward(y, x, params, params + nw + 1, N, in, out);
    cuda();
    nn_adamw(dp, dgw, dm, dv, np, 0.5f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.1f, 0.05f);
    close_to("adamw parameters", dp, params, np);
    close_to("adamw second moments", dv, v, np);
    nn_linear_forward(dy, dx, dp, dp + nw + 1, N, in, out);
    close_to("linear_forward after AdamW (the bfloat16 copy follows)", dy, y, (size_t)N * out);
    void *bufs[] = {dp, dx, dy, dg, dgx, dgw, dm, dv};
    for (int k = 0; k < 8; k++) nn_free(bufs[k]);
    free(params);
    free(x);
    free(y);
    free(g);
    free(gx);
    free(gw);
    free(m);
    free(v);
}

static void test_norm_rope_act(int N, int d, int H) {
    size_t n = (size_t)N * d;
    float *x = bf16_round(randn(n, 1), n), *w = randn(d, 1), *y = xmalloc(sizeof(float) * n);
    cpu();
    nn_rmsnorm_forward(y, x, w, N, d, 1e-5f);
    float *dx = gpu(x, n, 0), *dw = gpu(w, d, 1), *dy = gpu(y, n, 0);
    nn_rmsnorm_forward(dy, dx, dw, N, d, 1e-5f);
    close_to("rmsnorm_forward", dy, y, n);
    float *g = bf16_round(randn(n, 1), n), *gx = bf16_round(randn(n, 1), n), *gw = randn(d, 1);
    float *dg = gpu(g, n, 0), *dgx = gpu(gx, n, 0), *dgw = gpu(gw, d, 1);
    cpu();
    nn_rmsnorm_backward(gx, gw, g, x, w, N, d, 1e-5f);
    cuda();
    nn_rmsnorm_backward(dgx, dgw, dg, dx, dw, N, d, 1e-5f);
    close_to("rmsnorm_backward dx", dgx, gx, n);
    close_to("rmsnorm_backward dw", dgw, gw, d);

    /* RoPE over q and k of a [N, 3d] row (2H heads), forward and inverse. */
    int hd = d / H, half = hd / 2;
    size_t nq = (size_t)N * 3 * d;
    float *qkv = bf16_round(randn(nq, 1), nq), *cs = xmalloc(sizeof(float) * N * half),
          *sn = xmalloc(sizeof(float) * N * half);
    int32_t *pos = xmalloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) pos[i] = (i * 7) % N;
    for (int t = 0; t < N * half; t++) {
        cs[t] = cosf(0.01f * t);
        sn[t] = sinf(0.01f * t);
    }
    float *dq = gpu(qkv, nq, 0), *dcs = gpu(cs, (size_t)N * half, 1), *dsn = gpu(sn, (size_t)N * half, 1);
    int32_t *dpos = gpu_i32(pos, N);
    for (int inv = 0; inv < 2; inv++) {
        cpu();
        nn_rope(qkv, 3 * d, pos, N, 2 * H, hd, cs, sn, inv);
        cuda();
        nn_rope(dq, 3 * d, dpos, N, 2 * H, hd, dcs, dsn, inv);
        close_to(inv ? "rope inverse" : "rope", dq, qkv, nq);
    }

    /* SwiGLU, SiLU, add on [N, d] halves. */
    int f = d / 2;
    float *gu = bf16_round(randn(n, 2), n), *act = xmalloc(sizeof(float) * N * f);
    float *dgu = gpu(gu, n, 0), *dact = gpu(act, (size_t)N * f, 0);
    cpu();
    nn_swiglu_forward(act, gu, N, f);
    cuda();
    nn_swiglu_forward(dact, dgu, N, f);
    close_to("swiglu_forward", dact, act, (size_t)N * f);
    float *ga = bf16_round(randn((size_t)N * f, 1), (size_t)N * f), *ggu = xmalloc(sizeof(float) * n);
    float *dga = gpu(ga, (size_t)N * f, 0), *dggu = gpu(ggu, n, 0);
    cpu();
    nn_swiglu_backward(ggu, ga, gu, N, f);
    cuda();
    nn_swiglu_backward(dggu, dga, dgu, N, f);
    close_to("swiglu_backward", dggu, ggu, n);
    cpu();
    nn_silu_forward(y, x, n);
    nn_silu_backward(gx, g, x, n);
    nn_add(y, gx, n);
    cuda();
    nn_silu_forward(dy, dx, n);
    nn_silu_backward(dgx, dg, dx, n);
    close_to("silu_backward", dgx, gx, n);
    nn_add(dy, dgx, n);
    close_to("silu_forward + add", dy, y, n);
    void *bufs[] = {dx, dw, dy, dg, dgx, dgw, dq, dcs, dsn, dpos, dgu, dact, dga, dggu};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    free(x);
    free(w);
    free(y);
    free(g);
    free(gx);
    free(gw);
    free(qkv);
    free(cs);
    free(sn);
    free(pos);
    free(gu);
    free(act);
    free(ga);
    free(ggu);
}

static void test_rows_and_losses(void) {
    int n = 300, d = 40, rows = 12, V = 1000;
    float *table = randn((size_t)rows * d, 1), *src = bf16_round(randn((size_t)n * d, 1), (size_t)n * d);
    int32_t *idx = xmalloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) idx[i] = (int32_t)(rng_u64(&r) % rows); /* many repeats */
    float *got = xmalloc(sizeof(float) * n * d), *acc = randn((size_t)rows * d, 1);
    float *dt = gpu(table, (size_t)rows * d, 1), *dsrc = gpu(src, (size_t)n * d, 0), *dgot = gpu(got, (size_t)n * d, 0);
    float *dacc = gpu(acc, (size_t)rows * d, 1);
    int32_t *didx = gpu_i32(idx, n);
    cpu();
    nn_gather_rows(got, table, idx, n, d);
    nn_scatter_add_rows(acc, src, idx, n, d);
    cuda();
    nn_gather_rows(dgot, dt, didx, n, d);
    nn_scatter_add_rows(dacc, dsrc, didx, n, d);
    close_to("gather_rows (float32 table to activations)", dgot, got, (size_t)n * d);
    close_to("scatter_add_rows with repeated rows", dacc, acc, (size_t)rows * d);
    int32_t *perm = xmalloc(sizeof(int32_t) * rows);
    for (int i = 0; i < rows; i++) perm[i] = (i * 5) % rows;
    int32_t *dperm = gpu_i32(perm, rows);
    cpu();
    nn_scatter_rows(acc, table, perm, rows, d);
    cuda();
    nn_scatter_rows(dacc, dt, dperm, rows, d);
    close_to("scatter_rows", dacc, acc, (size_t)rows * d);

    float *logits = bf16_round(randn((size_t)n * V, 3), (size_t)n * V);
    int32_t *tgt = xmalloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) tgt[i] = (int32_t)(rng_u64(&r) % V);
    float *dl = gpu(logits, (size_t)n * V, 0);
    int32_t *dtgt = gpu_i32(tgt, n);
    cpu();
    double ce = nn_cross_entropy(logits, tgt, n, V, 0.01f);
    cuda();
    double ce_gpu = nn_cross_entropy(dl, dtgt, n, V, 0.01f);
    CHECK(fabs(ce_gpu - ce) <= TOL * fabs(ce), "cross_entropy loss (%.6f, CPU %.6f)", ce_gpu, ce);
    close_to("cross_entropy gradient", dl, logits, (size_t)n * V);

    size_t m = 5000;
    float *pred = bf16_round(randn(m, 1), m), *target = randn(m, 1);
    float *dpred = gpu(pred, m, 0), *dtarget = gpu(target, m, 1);
    cpu();
    double se = nn_squared_error(pred, pred, target, m, 0.5f), ss = nn_sum_squared_diff(target, NULL, m);
    cuda();
    double se_gpu = nn_squared_error(dpred, dpred, dtarget, m, 0.5f), ss_gpu = nn_sum_squared_diff(dtarget, NULL, m);
    CHECK(fabs(se_gpu - se) <= TOL * se && fabs(ss_gpu - ss) <= 1e-6 * ss,
          "squared_error %.4f (CPU %.4f), sum of squares %.6f (CPU %.6f)", se_gpu, se, ss_gpu, ss);
    close_to("squared_error gradient", dpred, pred, m);
    cpu();
    nn_scale(target, 0.3f, m);
    cuda();
    nn_scale(dtarget, 0.3f, m);
    close_to("scale", dtarget, target, m);
    void *bufs[] = {dt, dsrc, dgot, dacc, didx, dperm, dl, dtgt, dpred, dtarget};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    free(table);
    free(src);
    free(idx);
    free(got);
    free(acc);
    free(perm);
    free(logits);
    free(tgt);
    free(pred);
    free(target);
}

/* Attention on the key ranges of a generated batch's plan. */
static void test_attention(const model_config *c, int B, int L) {
    batch b;
    plan p;
    batch_generate(&b, c, B, L, &r);
    plan_build(&p, &b, c);
    int H = c->num_attention_heads, hd = cfg_head_dim(c), d = c->hidden_size;
    size_t N = (size_t)B * L;
    float *qkv = bf16_round(randn(N * 3 * d, 1), N * 3 * d), *dout = bf16_round(randn(N * d, 1), N * d);
    float *out = xmalloc(sizeof(float) * N * d), *lse = xmalloc(sizeof(float) * N * H);
    float *dqkv = xmalloc(sizeof(float) * N * 3 * d);
    float *g_qkv = gpu(qkv, N * 3 * d, 0), *g_dout = gpu(dout, N * d, 0), *g_out = gpu(out, N * d, 0);
    float *g_lse = gpu(lse, N * H, 1), *g_dqkv = gpu(dqkv, N * 3 * d, 0);
    int32_t *g_lo = gpu_i32(p.lo, N), *g_hi = gpu_i32(p.hi, N);
    cpu();
    nn_attention_forward(out, lse, qkv, p.lo, p.hi, B, L, H, hd);
    nn_attention_backward(dqkv, dout, out, lse, qkv, p.lo, p.hi, B, L, H, hd);
    cuda();
    nn_attention_forward(g_out, g_lse, g_qkv, g_lo, g_hi, B, L, H, hd);
    nn_attention_backward(g_dqkv, g_dout, g_out, g_lse, g_qkv, g_lo, g_hi, B, L, H, hd);
    char what[96];
    snprintf(what, sizeof what, "attention forward out (B %d L %d H %d head_dim %d)", B, L, H, hd);
    close_to(what, g_out, out, N * d);
    snprintf(what, sizeof what, "attention forward lse (head_dim %d)", hd);
    close_to(what, g_lse, lse, N * H);
    snprintf(what, sizeof what, "attention backward dq dk dv (head_dim %d)", hd);
    close_to(what, g_dqkv, dqkv, N * 3 * d);
    void *bufs[] = {g_qkv, g_dout, g_out, g_lse, g_dqkv, g_lo, g_hi};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    free(qkv);
    free(dout);
    free(out);
    free(lse);
    free(dqkv);
    plan_free(&p);
    batch_free(&b);
}

/* ---- the U-Net's image kernels (NHWC maps) ---- */

/* A convolution forward and backward. Weights and bias inside one float32
 * "parameter" buffer, the bias at an odd offset (as the model's flat array);
 * dw and db start nonzero (they accumulate); dx starts nonzero (it is
 * overwritten). */
static void test_conv(const char *name, conv_shape s, int bias, int want_dx, int want_db) {
    int ho = conv_out_h(&s), wo = conv_out_w(&s);
    size_t nx = (size_t)s.n * s.h * s.w * s.c_in, ny = (size_t)s.n * ho * wo * s.c_out;
    size_t nw = (size_t)s.c_out * s.c_in * s.k * s.k, np = nw + 1 + s.c_out;
    float *params = randn(np, 0.2f), *x = bf16_round(randn(nx, 1), nx), *y = xmalloc(sizeof(float) * ny);
    float *b = bias ? params + nw + 1 : NULL;
    cpu();
    nn_conv2d_forward(y, x, params, b, &s);
    float *dp = gpu(params, np, 1), *dx = gpu(x, nx, 0), *dy = gpu(y, ny, 0);
    nn_conv2d_forward(dy, dx, dp, bias ? dp + nw + 1 : NULL, &s);
    char what[160];
    snprintf(what, sizeof what, "conv2d_forward %s%s", name, bias ? "" : " (no bias)");
    close_to(what, dy, y, ny);

    float *g = bf16_round(randn(ny, 1), ny), *gx = bf16_round(randn(nx, 1), nx), *gw = randn(np, 0.1f);
    float *dg = gpu(g, ny, 0), *dgx = gpu(gx, nx, 0), *dgw = gpu(gw, np, 1);
    cpu();
    nn_conv2d_backward(want_dx ? gx : NULL, gw, want_db ? gw + nw + 1 : NULL, g, x, params, &s);
    cuda();
    nn_conv2d_backward(want_dx ? dgx : NULL, dgw, want_db ? dgw + nw + 1 : NULL, dg, dx, dp, &s);
    if (want_dx) {
        snprintf(what, sizeof what, "conv2d_backward %s dx (overwritten)", name);
        close_to(what, dgx, gx, nx);
    } else {
        snprintf(what, sizeof what, "conv2d_backward %s dx NULL: the buffer left alone", name);
        close_to(what, dgx, gx, nx); /* gx is still the initial values on both */
    }
    snprintf(what, sizeof what, "conv2d_backward %s dw (accumulated)", name);
    close_to(what, dgw, gw, nw);
    snprintf(what, sizeof what, "conv2d_backward %s db (%s)", name, want_db ? "accumulated" : "NULL: left alone");
    close_to(what, dgw + nw + 1, gw + nw + 1, s.c_out);
    void *bufs[] = {dp, dx, dy, dg, dgx, dgw};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    free(params);
    free(x);
    free(y);
    free(g);
    free(gx);
    free(gw);
}

static conv_shape conv_of(int c_in, int c_out, int n, int h, int w, int k, int stride, int pt, int pl, int pb,
                          int pr) {
    return (conv_shape){.c_in = c_in, .c_out = c_out, .n = n, .h = h, .w = w, .k = k, .stride = stride,
                        .pad_t = pt, .pad_l = pl, .pad_b = pb, .pad_r = pr};
}

/* GroupNorm forward (plain and with SiLU) and backward on [n, hw, C]; the
 * input has a mean far from 0 (the two-pass variance). */
static void test_group_norm(int n, int hw, int C, int groups) {
    size_t m = (size_t)n * hw * C, ng = (size_t)n * groups;
    float *x = randn(m, 1);
    for (size_t i = 0; i < m; i++) x[i] += 3.0f;
    bf16_round(x, m);
    float *wb = randn(2 * (size_t)C, 1), *y = xmalloc(sizeof(float) * m), *act = xmalloc(sizeof(float) * m);
    float *mean = xmalloc(sizeof(float) * ng), *rstd = xmalloc(sizeof(float) * ng);
    cpu();
    nn_group_norm_forward(y, mean, rstd, x, wb, wb + C, C, n, hw, groups, 1e-6f);
    nn_group_norm_silu_forward(act, mean, rstd, x, wb, wb + C, C, n, hw, groups, 1e-6f);
    float *dx = gpu(x, m, 0), *dwb = gpu(wb, 2 * (size_t)C, 1), *dy = gpu(y, m, 0), *dact = gpu(act, m, 0);
    float *dmean = gpu(mean, ng, 1), *drstd = gpu(rstd, ng, 1);
    char what[128];
    nn_group_norm_silu_forward(dact, dmean, drstd, dx, dwb, dwb + C, C, n, hw, groups, 1e-6f);
    nn_group_norm_forward(dy, dmean, drstd, dx, dwb, dwb + C, C, n, hw, groups, 1e-6f);
    snprintf(what, sizeof what, "group_norm_forward (n %d, hw %d, C %d, %d groups)", n, hw, C, groups);
    close_to(what, dy, y, m);
    close_to("group_norm_silu_forward", dact, act, m);
    close_to("group_norm mean", dmean, mean, ng);
    close_to("group_norm rstd", drstd, rstd, ng);

    float *g = bf16_round(randn(m, 1), m), *gx = bf16_round(randn(m, 1), m), *gwb = randn(2 * (size_t)C, 1);
    float *dg = gpu(g, m, 0), *dgx = gpu(gx, m, 0), *dgwb = gpu(gwb, 2 * (size_t)C, 1);
    cpu();
    nn_group_norm_backward(gx, gwb, gwb + C, g, x, mean, rstd, wb, C, n, hw, groups);
    cuda();
    nn_group_norm_backward(dgx, dgwb, dgwb + C, dg, dx, dmean, drstd, dwb, C, n, hw, groups);
    snprintf(what, sizeof what, "group_norm_backward dx (C %d, %d groups)", C, groups);
    close_to(what, dgx, gx, m);
    close_to("group_norm_backward dw (accumulated)", dgwb, gwb, C);
    close_to("group_norm_backward db (accumulated)", dgwb + C, gwb + C, C);
    void *bufs[] = {dx, dwb, dy, dact, dmean, drstd, dg, dgx, dgwb};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    free(x);
    free(wb);
    free(y);
    free(act);
    free(mean);
    free(rstd);
    free(g);
    free(gx);
    free(gwb);
}

/* Upsampling, patch moves, scale and shift, channel slices, column sums,
 * transpose. */
static void test_map_ops(void) {
    int n = 2, h = 5, w = 6, C = 12;
    size_t m = (size_t)n * h * w * C;
    float *x = bf16_round(randn(m, 1), m), *up = xmalloc(sizeof(float) * 4 * m), *back = xmalloc(sizeof(float) * m);
    cpu();
    nn_upsample2x_forward(up, x, n, h, w, C);
    float *dx = gpu(x, m, 0), *dup = gpu(up, 4 * m, 0), *dback = gpu(back, m, 0);
    nn_upsample2x_forward(dup, dx, n, h, w, C);
    close_to("upsample2x_forward", dup, up, 4 * m);
    float *g = bf16_round(randn(4 * m, 1), 4 * m), *dg = gpu(g, 4 * m, 0);
    cpu();
    nn_upsample2x_backward(back, g, n, h, w, C);
    cuda();
    nn_upsample2x_backward(dback, dg, n, h, w, C);
    close_to("upsample2x_backward", dback, back, m);

    int gs = 4, p = 2, Cl = 8;
    size_t mp = (size_t)n * gs * gs * p * p * Cl;
    float *pt = bf16_round(randn(mp, 1), mp), *map = xmalloc(sizeof(float) * mp), *pt2 = xmalloc(sizeof(float) * mp);
    float *dpt = gpu(pt, mp, 0), *dmap = gpu(map, mp, 0), *dpt2 = gpu(pt2, mp, 0);
    cpu();
    nn_patches_to_map(map, pt, n, gs, p, Cl);
    for (size_t i = 0; i < mp; i++) map[i] *= 2.0f; /* a different map back */
    nn_map_to_patches(pt2, map, n, gs, p, Cl);
    for (size_t i = 0; i < mp; i++) map[i] *= 0.5f;
    cuda();
    nn_patches_to_map(dmap, dpt, n, gs, p, Cl);
    close_to("patches_to_map", dmap, map, mp);
    nn_add(dmap, dmap, mp);
    nn_map_to_patches(dpt2, dmap, n, gs, p, Cl);
    close_to("map_to_patches", dpt2, pt2, mp);

    /* AdaGN: ss an activation (a linear layer's output), dss float32, dx over dy (as trainer/unet.c). */
    int hw = h * w;
    float *ss = bf16_round(randn((size_t)n * 2 * C, 0.5f), (size_t)n * 2 * C), *y = xmalloc(sizeof(float) * m);
    float *dss = randn((size_t)n * 2 * C, 1), *gy = bf16_round(randn(m, 1), m);
    float *dss_d = gpu(ss, (size_t)n * 2 * C, 0), *dy = gpu(y, m, 0), *ddss = gpu(dss, (size_t)n * 2 * C, 1);
    float *dgy = gpu(gy, m, 0);
    cpu();
    nn_scale_shift_forward(y, x, ss, n, hw, C);
    nn_scale_shift_backward(gy, dss, gy, x, ss, n, hw, C);
    cuda();
    nn_scale_shift_forward(dy, dx, dss_d, n, hw, C);
    close_to("scale_shift_forward", dy, y, m);
    nn_scale_shift_backward(dgy, ddss, dgy, dx, dss_d, n, hw, C);
    close_to("scale_shift_backward dx (in place over dy)", dgy, gy, m);
    close_to("scale_shift_backward dss (accumulated)", ddss, dss, (size_t)n * 2 * C);

    /* A concatenation [rows, 5 | 7] of two maps and its slices back. */
    size_t rows = (size_t)n * hw;
    int ca = 5, cb = 7, cc = ca + cb;
    float *a = bf16_round(randn(rows * ca, 1), rows * ca), *b = bf16_round(randn(rows * cb, 1), rows * cb);
    float *cat = xmalloc(sizeof(float) * rows * cc), *b2 = xmalloc(sizeof(float) * rows * cb);
    float *da = gpu(a, rows * ca, 0), *db = gpu(b, rows * cb, 0), *dcat = gpu(cat, rows * cc, 0);
    float *db2 = gpu(b2, rows * cb, 1); /* a float32 destination too */
    cpu();
    nn_copy_columns(cat, cc, 0, a, ca, 0, rows, ca);
    nn_copy_columns(cat, cc, ca, b, cb, 0, rows, cb);
    nn_copy_columns(b2, cb, 0, cat, cc, ca, rows, cb);
    cuda();
    nn_copy_columns(dcat, cc, 0, da, ca, 0, rows, ca);
    nn_copy_columns(dcat, cc, ca, db, cb, 0, rows, cb);
    close_to("copy_columns into a concatenation (column offset in a bfloat16 buffer)", dcat, cat, rows * cc);
    nn_copy_columns(db2, cb, 0, dcat, cc, ca, rows, cb);
    close_to("copy_columns out of a concatenation", db2, b2, rows * cb);

    float *sums = randn(cc, 1), *dsums = gpu(sums, cc, 1), *tr = xmalloc(sizeof(float) * rows * cc);
    float *dtr = gpu(tr, rows * cc, 0);
    cpu();
    nn_add_column_sums(sums, cat, rows, cc);
    nn_transpose(tr, cat, (int)rows, cc);
    cuda();
    nn_add_column_sums(dsums, dcat, rows, cc);
    close_to("add_column_sums (accumulated)", dsums, sums, cc);
    nn_transpose(dtr, dcat, (int)rows, cc);
    close_to("transpose", dtr, tr, rows * cc);

    void *bufs[] = {dx, dup, dback, dg, dpt, dmap, dpt2, dss_d, dy, ddss, dgy, da, db, dcat, db2, dsums, dtr};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    void *hosts[] = {x, up, back, g, pt, map, pt2, ss, y, dss, gy, a, b, cat, b2, sums, tr};
    for (size_t k = 0; k < sizeof hosts / sizeof *hosts; k++) free(hosts[k]);
}

static void test_image_kernels(int small) {
    /* The U-Net's shapes: 3x3 pad 1 (its ResNet blocks), 3x3 stride 2 pad 1
     * (its downsampler), 1x1 (a conv_shortcut, a linear layer over pixels);
     * and the VAE's asymmetric padding. */
    test_conv("3x3 pad 1", conv_of(12, 16, 2, 8, 8, 3, 1, 1, 1, 1, 1), 1, 1, 1);
    test_conv("3x3 pad 1, no bias gradient", conv_of(16, 8, 3, 7, 5, 3, 1, 1, 1, 1, 1), 0, 1, 0);
    test_conv("3x3 stride 2 pad 1", conv_of(16, 16, 2, 8, 8, 3, 2, 1, 1, 1, 1), 1, 1, 1);
    test_conv("1x1, dx NULL", conv_of(24, 16, 2, 8, 8, 1, 1, 0, 0, 0, 0), 1, 0, 1);
    test_conv("1x1", conv_of(24, 40, 1, 6, 6, 1, 1, 0, 0, 0, 0), 0, 1, 1);
    test_conv("3x3 stride 2 pad (0, 0, 1, 1) (asymmetric, the VAE's)", conv_of(8, 8, 2, 8, 8, 3, 2, 0, 0, 1, 1), 1,
              1, 1);
    if (!small) test_conv("3x3 pad 1 at 32x32, 128 -> 128", conv_of(128, 128, 4, 32, 32, 3, 1, 1, 1, 1, 1), 1, 1, 1);
    test_group_norm(3, 40, 32, 4);
    test_group_norm(2, 9, 640, 2); /* 320 channels a group: more than a block's threads */
    if (!small) test_group_norm(4, 1024, 128, 32);
    test_map_ops();
}

/* model_step on both backends: loss sums, and every tensor's gradient. */
static void test_model(const model_config *c, int B, int L) {
    batch b;
    plan p;
    batch_generate(&b, c, B, L, &r);
    plan_build(&p, &b, c);
    double n_latent = (double)p.n_patch * cfg_patch_dim(c);
    model a, g;
    cpu();
    model_create(&a, c);
    model_init_weights(&a, 11);
    loss_sums sa = model_step(&a, &p, p.n_lm, n_latent, 1);
    cuda();
    model_create(&g, c);
    model_init_weights(&g, 11);
    model_upload_weights(&g);
    loss_sums sg = model_step(&g, &p, p.n_lm, n_latent, 1);
    model_download(&g, 0, 1);
    CHECK(fabs(sg.ce_sum - sa.ce_sum) <= TOL * sa.ce_sum && fabs(sg.se_sum - sa.se_sum) <= TOL * sa.se_sum,
          "model loss sums: CE %.4f (CPU %.4f), SE %.4f (CPU %.4f)", sg.ce_sum, sa.ce_sum, sg.se_sum, sa.se_sum);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < a.ps.n; i++) {
        const param_info *t = &a.ps.info[i];
        double e = rel_err(g.ps.g + t->offset, a.ps.g + t->offset, t->numel);
        if (!(e <= worst)) {
            worst = e;
            worst_name = t->name;
        } /* NaN-safe: a NaN becomes the worst */
    }
    CHECK(worst <= TOL, "model gradients, every tensor: worst %.2e (%s)", worst, worst_name);
    model_free(&g);
    cpu();
    model_free(&a);
    plan_free(&p);
    batch_free(&b);
}

int main(int argc, char **argv) {
    int small = argc > 1 && strcmp(argv[1], "--small") == 0;
    if (argc > 1 && !small) die_input("usage: test_kernels [--small]");
    nn_init_device("cuda", NULL, 0);
    rng_seed(&r, 42);
    test_linear(100, 96, 80);
    test_linear(33, 256, 200);
    test_norm_rope_act(70, 128, 4);
    test_rows_and_losses();
    model_config c;
    char err[ERR_LEN];
    if (config_load("configs/bench.json", &c, err)) die_input("%s", err);
    static const int heads[][2] = {{384, 6}, {384, 24}, {384, 12}, {512, 4}, {240, 5}}; /* head_dim 64 16 32 128 48 */
    for (int k = 0; k < 5; k++) {
        model_config ck = c;
        ck.hidden_size = heads[k][0];
        ck.num_attention_heads = heads[k][1];
        test_attention(&ck, 2, 300);
    }
    test_model(&c, 2, 256);
    /* The U-Net image path (docs/model.md section 3) on bench.json's trunk:
     * 8 x 8 latents, patches of 2, two levels of 16 and 32 channels. */
    test_image_kernels(small);
    model_config cu = c;
    cu.image_unet = 1;
    cu.unet_levels = 2;
    cu.unet_channels[0] = 16;
    cu.unet_channels[1] = 32;
    cu.unet_layers_per_block = 1;
    cu.unet_groups = 4;
    cu.latent_size = 8;
    cu.patch_size = 2;
    if (config_validate(&cu, "the U-Net test config", err)) die("%s", err);
    test_model(&cu, 2, 256);
    if (!small) {
        model_config big;
        if (config_load("configs/gpu-0.16b.json", &big, err)) die_input("%s", err);
        test_attention(&big, 2, 2048);
    }
    return CHECK_DONE();
}
