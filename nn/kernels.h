/* kernels.h - the backend interface: every numeric kernel the model uses.
 *
 * The model (trainer/model.c) is written once against these functions; a
 * backend implements all of them for its device (nn/cpu/ for the CPU; a CUDA
 * backend implements the same names over device pointers). All tensors are
 * row-major float32 unless noted. "N" is a number of positions (rows).
 *
 * Determinism: for the same inputs and thread count every kernel gives
 * bitwise the same result; reductions run in a fixed order. */
#ifndef NN_KERNELS_H
#define NN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- setup and memory ---- */
/* Call first in main(). On the CPU it makes idle OpenMP threads sleep
 * instead of spin (OMP_WAIT_POLICY=passive, unless the user set a policy):
 * spinning threads cost up to 10x on a machine whose cores are shared with
 * other processes, as the services beside a trainer are. The runtime reads
 * the variable once at load, so this re-executes the program with it set. */
void nn_startup(char **argv);
void nn_init(int threads);               /* threads <= 0: library default */
int nn_threads(void);
float *nn_alloc(size_t n);               /* n floats, zeroed, dies on failure */
void nn_free(void *p);
void nn_zero(float *x, size_t n);
void nn_copy(float *dst, const float *src, size_t n);

/* ---- matrix multiply ----
 * C[M,N] = alpha * op(A) @ op(B) + beta * C, op = transpose when trans is 1.
 * lda/ldb/ldc are row strides. Called from inside an OpenMP region (as the
 * attention kernel does) it runs single-threaded on the calling thread. */
void nn_gemm(int transA, int transB, int M, int N, int K, float alpha,
             const float *A, int lda, const float *B, int ldb, float beta,
             float *C, int ldc);

/* y[N,d] = x @ W^T + b (b may be NULL): a linear layer, W in [out, in] layout. */
void nn_linear_forward(float *y, const float *x, const float *W, const float *b,
                       int N, int in, int out);
/* dx (+)= dy @ W (accumulate when acc), dW += dy^T @ x, db += sum_rows(dy).
 * dx, db may be NULL. */
void nn_linear_backward(float *dx, float *dW, float *db, const float *dy,
                        const float *x, const float *W, int N, int in, int out, int acc);

/* ---- normalization ---- */
/* y = x * rsqrt(mean(x^2) + eps) * w, per row of d. */
void nn_rmsnorm_forward(float *y, const float *x, const float *w, int N, int d, float eps);
/* dx += (grad of the norm wrt x), dw += ...; recomputes the statistics. */
void nn_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x,
                         const float *w, int N, int d, float eps);

/* ---- rotary position embedding (HF rotate_half convention) ----
 * x[N, stride] holds n_heads heads of head_dim at column offset 0; pos[N]
 * is each row's position; cos_tab/sin_tab[pos, head_dim/2] are the angles'
 * cosines and sines (precomputed once per batch, see model.c); inverse=1
 * applies the transpose rotation (the backward pass). */
void nn_rope(float *x, int stride, const int32_t *pos, int N, int n_heads,
             int head_dim, const float *cos_tab, const float *sin_tab, int inverse);

/* ---- attention with per-query key ranges ----
 * Rows are B sequences of L positions. qkv[B*L, 3d] holds q | k | v (RoPE
 * already applied to q and k); query i of a row may attend to keys
 * [lo[i], hi[i]] of the same row (row-relative). out[B*L, d]; lse[B*L, H]
 * keeps the log-sum-exp of each query's scores, the only statistic backward
 * needs: scores are recomputed there, never stored. */
void nn_attention_forward(float *out, float *lse, const float *qkv,
                          const int32_t *lo, const int32_t *hi,
                          int B, int L, int H, int head_dim);
/* dqkv[B*L, 3d] is overwritten with the gradients of q, k and v. */
void nn_attention_backward(float *dqkv, const float *dout, const float *out,
                           const float *lse, const float *qkv,
                           const int32_t *lo, const int32_t *hi,
                           int B, int L, int H, int head_dim);

/* Inference over stored keys and values (a KV cache): query r (row r of q,
 * row stride ldq, RoPE applied) attends to rows [lo[r], hi[r]] of k and v
 * (row stride ldkv; heads at column h * head_dim, as in qkv). out[n, H *
 * head_dim]. Cost: each query's own key range (queries in a run sharing lo
 * are computed together). */
void nn_attention_rows(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv,
                       const int32_t *lo, const int32_t *hi, int n, int H, int head_dim);

/* ---- activations ---- */
/* gu[N, 2f] = gate | up; act[N, f] = silu(gate) * up. */
void nn_swiglu_forward(float *act, const float *gu, int N, int f);
void nn_swiglu_backward(float *dgu, const float *dact, const float *gu, int N, int f);
/* y = silu(x), dx = dy * silu'(x), elementwise over n. */
void nn_silu_forward(float *y, const float *x, size_t n);
void nn_silu_backward(float *dx, const float *dy, const float *x, size_t n);
void nn_add(float *y, const float *x, size_t n);          /* y += x */

/* ---- gathers and scatters by row index ---- */
/* dst[i] = src[idx[i]] for n rows of width d. */
void nn_gather_rows(float *dst, const float *src, const int32_t *idx, int n, int d);
/* dst[idx[i]] += src[i], in order of i (deterministic even with repeats). */
void nn_scatter_add_rows(float *dst, const float *src, const int32_t *idx, int n, int d);
/* dst[idx[i]] = src[i]. */
void nn_scatter_rows(float *dst, const float *src, const int32_t *idx, int n, int d);

/* ---- images: convolution, group norm, upsampling (the VAE) ----
 * Feature maps are channel-major over the whole batch, [C, n, H, W] ("CNHW"),
 * so that a convolution is one GEMM over every image of the batch. */
typedef struct {
    int c_in, c_out, n, h, w;   /* input: [c_in, n, h, w] */
    int k, stride;              /* square kernel */
    int pad_t, pad_l, pad_b, pad_r;
} conv_shape;

static inline int conv_out_h(const conv_shape *s) { return (s->h + s->pad_t + s->pad_b - s->k) / s->stride + 1; }
static inline int conv_out_w(const conv_shape *s) { return (s->w + s->pad_l + s->pad_r - s->k) / s->stride + 1; }

/* y[c_out, n, ho, wo] = conv(x, w[c_out, c_in, k, k]) + b (b may be NULL).
 * Call from one thread at a time (it keeps scratch buffers between calls). */
void nn_conv2d_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s);
/* dx = (overwritten, may be NULL), dw += , db += (may be NULL). */
void nn_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const conv_shape *s);

/* GroupNorm over [C, n, hw]: per image and group of C/groups channels;
 * mean and rstd [n, groups] are kept for backward. */
void nn_group_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int C, int n, int hw, int groups, float eps);
/* dx (overwritten), dw += , db += . */
void nn_group_norm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *w,
                            int C, int n, int hw, int groups);

/* Nearest-neighbour 2x upsampling of `planes` planes of h x w; backward sums
 * each 2x2 block of dy into dx (overwritten). */
void nn_upsample2x_forward(float *y, const float *x, int planes, int h, int w);
void nn_upsample2x_backward(float *dx, const float *dy, int planes, int h, int w);

/* dst[cols, rows] = src[rows, cols]^T */
void nn_transpose(float *dst, const float *src, int rows, int cols);

/* ---- losses ----
 * Cross-entropy of logits[n, V] against targets[n], fused with its gradient:
 * returns the summed loss (float64) and, when grad_scale != 0, overwrites
 * logits with grad_scale * (softmax - onehot). */
double nn_cross_entropy(float *logits, const int32_t *targets, int n, int V, float grad_scale);
/* Sum of |pred - target| over n elements (float64, any thread count gives
 * the same); when grad_scale != 0, writes dpred = grad_scale * sign(pred -
 * target) (dpred may be pred). */
double nn_abs_error(float *dpred, const float *pred, const float *target, size_t n, float grad_scale);
/* Sum of (pred - target)^2 over n elements; when grad_scale != 0, writes
 * dpred = grad_scale * 2 * (pred - target) (dpred may be pred). */
double nn_squared_error(float *dpred, const float *pred, const float *target,
                        size_t n, float grad_scale);

/* ---- optimizer ---- */
/* sum (x - y)^2 in float64, y may be NULL; same result for any thread count. */
double nn_sum_squared_diff(const float *x, const float *y, size_t n);
void nn_scale(float *x, float s, size_t n);
/* One AdamW step over n parameters: m, v moments, bias corrections bc1 =
 * 1 - beta1^t, bc2 = 1 - beta2^t; decoupled weight decay wd * lr. */
void nn_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr,
              float beta1, float beta2, float eps, float wd, float bc1, float bc2);

#endif
