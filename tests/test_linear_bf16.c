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
 * input for dW in backward. */
#include "check.h"
#include "../common/rng.h"
#include "../nn/kernels.h"

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

/* The largest |got - sum| over outputs, each relative to its sum of |terms|. */
typedef struct {
    double worst;
} error;

static void compare(error *e, double got, double sum, double abs_sum) {
    double r = fabs(got - sum) / (abs_sum > 0 ? abs_sum : 1.0);
    if (r > e->worst || r != r) e->worst = r != r ? INFINITY : r;
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

    error fy = {0}, fdx = {0}, fdw = {0};
    for (int i = 0; i < N; i++)
        for (int o = 0; o < out; o++) {
            double s = b[o], a = fabs(b[o]);
            for (int k = 0; k < in; k++) {
                double t = (double)bf16_round(x[(size_t)i * in + k]) * bf16_round(W[(size_t)o * in + k]);
                s += t, a += fabs(t);
            }
            compare(&fy, y[(size_t)i * out + o], s, a);
        }
    for (int i = 0; i < N; i++)
        for (int k = 0; k < in; k++) {
            double s = 0, a = 0;
            for (int o = 0; o < out; o++) {
                double t = (double)bf16_round(dy[(size_t)i * out + o]) * bf16_round(W[(size_t)o * in + k]);
                s += t, a += fabs(t);
            }
            compare(&fdx, dx[(size_t)i * in + k], s, a);
        }
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++) {
            double s = dW0[(size_t)o * in + k], a = fabs(s);
            for (int i = 0; i < N; i++) {
                double t = (double)bf16_round(dy[(size_t)i * out + o]) * bf16_round(x[(size_t)i * in + k]);
                s += t, a += fabs(t);
            }
            compare(&fdw, dW[(size_t)o * in + k], s, a);
        }
    CHECK(fy.worst <= TOL, "bf16 linear N=%d in=%d out=%d: y (worst %.2g)", N, in, out, fy.worst);
    CHECK(fdx.worst <= TOL, "bf16 linear N=%d in=%d out=%d: dx (worst %.2g)", N, in, out, fdx.worst);
    CHECK(fdw.worst <= TOL, "bf16 linear N=%d in=%d out=%d: dW accumulated (worst %.2g)", N, in, out, fdw.worst);
    float *all[] = {x, W, dy, b, y, dx, dW, dW0, db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) nn_free(all[i]);
}

int main(void) {
    rng_seed(&R, 7);
    nn_init_device("cpu", "bf16", 2);
    linear_case(64, 64, 128);   /* whole blocks */
    linear_case(128, 384, 192); /* the reference config's widths */
    linear_case(37, 70, 130);   /* edge blocks in K and N, odd K */
    linear_case(5, 31, 3);      /* smaller than one block */
    return CHECK_DONE();
}
