/* test_frechet.c - trainer/frechet.c against closed forms: a set against
 * itself (0), against itself shifted by c (|c|^2: equal covariances), and
 * against itself scaled by 2 around its mean plus a shift (the square root
 * of S_a^1/2 4 S_a S_a^1/2 is 2 S_a, so the trace term is tr(S_a)); fewer
 * samples than dimensions (singular covariances) stays finite and >= 0. */
#include "check.h"
#include "../trainer/frechet.h"
#include "../common/rng.h"
#include "../common/error.h"

#include <math.h>
#include <stdlib.h>

int main(void) {
    enum { N = 300, D = 24 };
    rng r;
    rng_seed(&r, 5);
    float *a = xmalloc(sizeof(float) * N * D), *b = xmalloc(sizeof(float) * N * D);
    double c2 = 0, mu[D] = {0}, tr = 0;
    /* correlated, non-zero-mean samples */
    for (int i = 0; i < N; i++) {
        double z = rng_normal(&r);
        for (int j = 0; j < D; j++) a[i * D + j] = (float)(0.5 * j / D + (1 + 0.1 * j) * rng_normal(&r) + 0.7 * z);
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) mu[j] += a[i * D + j] / (double)N;
    for (int j = 0; j < D; j++) {
        double s = 0;
        for (int i = 0; i < N; i++) s += (a[i * D + j] - mu[j]) * (a[i * D + j] - mu[j]);
        tr += s / (N - 1);
    }
    double self = frechet_distance(a, N, a, N, D);
    CHECK(fabs(self) < 1e-6 * tr, "a set against itself: %.3g (trace %.3g)", self, tr);

    for (int j = 0; j < D; j++) c2 += (0.1 * j - 0.3) * (0.1 * j - 0.3);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) b[i * D + j] = a[i * D + j] + (float)(0.1 * j - 0.3);
    double shifted = frechet_distance(a, N, b, N, D);
    CHECK(fabs(shifted - c2) < 1e-4 * c2, "shifted by c: %.6f, |c|^2 = %.6f", shifted, c2);

    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) b[i * D + j] = (float)(2 * (a[i * D + j] - mu[j]) + mu[j] + 1.0);
    double scaled = frechet_distance(a, N, b, N, D), want = D * 1.0 + tr;
    CHECK(fabs(scaled - want) < 1e-4 * want, "scaled by 2 and shifted by 1: %.6f, want D + tr(S_a) = %.6f", scaled,
          want);

    double few = frechet_distance(a, 8, a + 8 * D, 8, D);
    CHECK(isfinite(few) && few >= 0, "8 samples in 24 dimensions: finite and >= 0 (%.4f)", few);
    free(a);
    free(b);
    return CHECK_DONE();
}
