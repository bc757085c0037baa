/* frechet.c - the Fréchet distance of frechet.h in float64. The matrix
 * square roots come from symmetric eigendecompositions (LAPACK's dsyevd):
 * S_a^1/2 = V diag(sqrt w) V^T, and tr(M^1/2) of the symmetric M =
 * S_a^1/2 S_b S_a^1/2 is the sum of the square roots of its eigenvalues,
 * which avoids the non-symmetric square root FID's scipy code takes.
 * Eigenvalues that round below zero (covariances of fewer samples than
 * dimensions are singular) count as zero. */
#include "frechet.h"
#include "../common/error.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Mean [dim] and unbiased covariance [dim, dim] of x [n, dim]. */
static void gaussian_fit(const float *x, int n, int dim, double *mu, double *cov) {
    memset(mu, 0, sizeof(double) * dim);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dim; j++) mu[j] += x[(size_t)i * dim + j];
    for (int j = 0; j < dim; j++) mu[j] /= n;
    memset(cov, 0, sizeof(double) * dim * dim);
    double *c = xmalloc(sizeof(double) * dim);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < dim; j++) c[j] = x[(size_t)i * dim + j] - mu[j];
        for (int j = 0; j < dim; j++)
            for (int k = j; k < dim; k++) cov[(size_t)j * dim + k] += c[j] * c[k];
    }
    for (int j = 0; j < dim; j++)
        for (int k = j; k < dim; k++) cov[(size_t)k * dim + j] = cov[(size_t)j * dim + k] /= n - 1;
    free(c);
}

/* Eigenvalues w (ascending) of the symmetric a [n, n]; a becomes the
 * eigenvectors, one per column. */
static void eigen(double *a, int n, double *w) {
    lapack_int rc = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, a, n, w);
    if (rc != 0) die("frechet: LAPACKE_dsyevd failed (%d)", (int)rc);
}

/* c = a b for [n, n] matrices. */
static void matmul(const double *a, const double *b, double *c, int n) {
    memset(c, 0, sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++) {
            double aik = a[(size_t)i * n + k];
            for (int j = 0; j < n; j++) c[(size_t)i * n + j] += aik * b[(size_t)k * n + j];
        }
}

double frechet_distance(const float *a, int na, const float *b, int nb, int dim) {
    if (na < 2 || nb < 2 || dim < 1) die("frechet: needs two sets of at least 2 vectors (%d, %d)", na, nb);
    size_t dd = (size_t)dim * dim;
    double *mu_a = xmalloc(sizeof(double) * dim), *mu_b = xmalloc(sizeof(double) * dim);
    double *sa = xmalloc(sizeof(double) * dd), *sb = xmalloc(sizeof(double) * dd);
    double *v = xmalloc(sizeof(double) * dd), *t = xmalloc(sizeof(double) * dd), *w = xmalloc(sizeof(double) * dim);
    gaussian_fit(a, na, dim, mu_a, sa);
    gaussian_fit(b, nb, dim, mu_b, sb);
    double fd = 0.0;
    for (int j = 0; j < dim; j++) {
        double d = mu_a[j] - mu_b[j];
        fd += d * d + sa[(size_t)j * dim + j] + sb[(size_t)j * dim + j];
    }
    /* sa <- S_a^1/2 = V diag(sqrt w) V^T */
    memcpy(v, sa, sizeof(double) * dd);
    eigen(v, dim, w);
    for (int i = 0; i < dim; i++)
        for (int j = 0; j < dim; j++) t[(size_t)i * dim + j] = v[(size_t)i * dim + j] * sqrt(w[j] > 0 ? w[j] : 0);
    for (int i = 0; i < dim; i++)
        for (int j = 0; j < dim; j++) {
            double s = 0.0;
            for (int k = 0; k < dim; k++) s += t[(size_t)i * dim + k] * v[(size_t)j * dim + k];
            sa[(size_t)i * dim + j] = s;
        }
    /* tr((S_a^1/2 S_b S_a^1/2)^1/2) */
    matmul(sa, sb, t, dim);
    matmul(t, sa, v, dim);
    for (size_t i = 0; i < (size_t)dim; i++) /* symmetric up to rounding: make it exactly so */
        for (size_t j = i + 1; j < (size_t)dim; j++)
            v[i * dim + j] = v[j * dim + i] = 0.5 * (v[i * dim + j] + v[j * dim + i]);
    eigen(v, dim, w);
    for (int j = 0; j < dim; j++) fd -= 2.0 * sqrt(w[j] > 0 ? w[j] : 0);
    free(mu_a);
    free(mu_b);
    free(sa);
    free(sb);
    free(v);
    free(t);
    free(w);
    return fd;
}
