/* test_linear_bf16.c - the CPU's bf16 linear layers (--precision bf16)
 * against float64 references on the bf16-rounded operands.
 *
 * The products of two bf16 values are exact in float32, so a right result
 * differs from the reference only by float32 accumulation: within 1e-5 of
 * the sum of |terms| of each output. An operand packed into the wrong place
 * of oneDNN's blocked layout (matmul_bf16.c, pack_blocked), or a padding
 * left unzeroed, is off by whole terms. The shapes cover whole 32 x 64
 * blocks, edge blocks (K and N not multiples of the block) and both
 * orientations of the packed operand: W^T in forward, W for dx and the layer
 * input for dW in backward. The fused passes (linear_add, rmsnorm_linear,
 * swiglu_linear_add) are checked the same way, and the rows they keep for
 * backward against the float32 kernels bit for bit. */
#include "check.h"
#include "../common/rng.h"
#include "../nn/backend.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define TOL 1e-5

static rng R;

static float bf16_round(float x) { /* nearest, ties to even */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
    memcpy(&x, &u, sizeof u);
    return x;
}

static float *random_matrix(size_t n, int round) {
    float *x = nn_alloc_f32(n);
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)(2.0 * rng_uniform(&R) - 1.0);
        if (round) x[i] = bf16_round(x[i]);
    }
    return x;
}

/* The worst error of C [M, N] (row-major) against init + A B in float64 on
 * the bf16-rounded operands, each output's relative to its sum of |terms|:
 * A(i, k) = A[i a_i + k a_k], B(k, j) = B[k b_k + j b_j], and init(i, j) =
 * init[i init_i + j] (none when init is NULL). A NaN is the worst. */
static double worst_error(const float *C, int M, int N, int K, const float *A, size_t a_i, size_t a_k, const float *B,
                          size_t b_k, size_t b_j, const float *init, size_t init_i) {
    double worst = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = init ? init[i * init_i + j] : 0.0, a = fabs(s);
            for (int k = 0; k < K; k++) {
                double t = (double)bf16_round(A[i * a_i + k * a_k]) * bf16_round(B[k * b_k + j * b_j]);
                s += t, a += fabs(t);
            }
            double r = fabs(C[(size_t)i * N + j] - s) / (a > 0 ? a : 1.0);
            if (!(r <= worst)) worst = r != r ? INFINITY : r;
        }
    return worst;
}

static void linear_case(int N, int in, int out) {
    float *x = random_matrix((size_t)N * in, 0), *W = random_matrix((size_t)out * in, 0);
    float *dy = random_matrix((size_t)N * out, 0), *b = random_matrix(out, 0);
    float *y = nn_alloc_f32((size_t)N * out), *dx = nn_alloc_f32((size_t)N * in);
    float *dW = random_matrix((size_t)out * in, 0), *dW0 = nn_alloc_f32((size_t)out * in);
    float *db = nn_alloc_f32(out);
    memcpy(dW0, dW, sizeof(float) * out * in);
    nn_linear_forward(y, x, W, b, N, in, out);
    nn_linear_backward(dx, dW, db, dy, x, W, N, in, out, 0);

    /* y = b + x W^T, dx = dy W, dW = dW0 + dy^T x */
    double ey = worst_error(y, N, out, in, x, in, 1, W, 1, in, b, 0);
    double edx = worst_error(dx, N, in, out, dy, out, 1, W, in, 1, NULL, 0);
    double edw = worst_error(dW, out, in, N, dy, 1, out, x, in, 1, dW0, in);
    CHECK(ey <= TOL, "bf16 linear N=%d in=%d out=%d: y (worst %.2g)", N, in, out, ey);
    CHECK(edx <= TOL, "bf16 linear N=%d in=%d out=%d: dx (worst %.2g)", N, in, out, edx);
    CHECK(edw <= TOL, "bf16 linear N=%d in=%d out=%d: dW accumulated (worst %.2g)", N, in, out, edw);
    float *all[] = {x, W, dy, b, y, dx, dW, dW0, db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) nn_free(all[i]);
}

/* The fused passes (kernels.def, NN_FUSED): the float32 rows they keep for
 * backward are the plain kernels' bits, and y is the product of those rows,
 * rounded, plus the residual. */
static void fused_case(int N, int d, int out) {
    const nn_backend *fp32 = &nn_cpu_backend;
    float *x = random_matrix((size_t)N * d, 0), *w = random_matrix(d, 0), *W = random_matrix((size_t)out * d, 0);
    float *gu = random_matrix((size_t)N * 2 * d, 0), *res = random_matrix((size_t)N * out, 0);
    float *y = nn_alloc_f32((size_t)N * out), *kept = nn_alloc_f32((size_t)N * d), *ref = nn_alloc_f32((size_t)N * d);

    nn_linear_add_forward(y, x, W, res, N, d, out);
    double e = worst_error(y, N, out, d, x, d, 1, W, 1, d, res, out);
    CHECK(e <= TOL, "bf16 linear_add N=%d d=%d out=%d: y = x W^T + residual (worst %.2g)", N, d, out, e);

    nn_rmsnorm_linear_forward(y, kept, x, w, W, N, d, out, 1e-5f);
    fp32->rmsnorm_forward(ref, x, w, N, d, 1e-5f);
    CHECK(memcmp(kept, ref, sizeof(float) * N * d) == 0, "bf16 rmsnorm_linear N=%d d=%d: n is rmsnorm_forward's", N, d);
    e = worst_error(y, N, out, d, ref, d, 1, W, 1, d, NULL, 0);
    CHECK(e <= TOL, "bf16 rmsnorm_linear N=%d d=%d out=%d: y = n W^T (worst %.2g)", N, d, out, e);

    nn_swiglu_linear_add_forward(y, kept, gu, W, res, N, d, out);
    fp32->swiglu_forward(ref, gu, N, d);
    CHECK(memcmp(kept, ref, sizeof(float) * N * d) == 0, "bf16 swiglu_linear_add N=%d f=%d: act is swiglu_forward's", N,
          d);
    e = worst_error(y, N, out, d, ref, d, 1, W, 1, d, res, out);
    CHECK(e <= TOL, "bf16 swiglu_linear_add N=%d f=%d out=%d: y = act W^T + residual (worst %.2g)", N, d, out, e);
    float *all[] = {x, w, W, gu, res, y, kept, ref};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) nn_free(all[i]);
}

int main(void) {
    rng_seed(&R, 7);
    nn_init_device("cpu", "bf16", 2);
    linear_case(64, 64, 128);   /* whole blocks */
    linear_case(128, 384, 192); /* the reference config's widths */
    linear_case(37, 70, 130);   /* edge blocks in K and N, odd K */
    linear_case(5, 31, 3);      /* smaller than one block */
    fused_case(128, 384, 192);
    fused_case(37, 70, 130);
    return CHECK_DONE();
}
