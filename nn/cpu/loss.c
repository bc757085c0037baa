/* loss.c - CPU losses: cross-entropy fused with its gradient (so a chunk of
 * logits is turned into dlogits in place and never kept), and squared error. */
#include "cpu.h"
#include "vexp.h"

#include <float.h>
#include <math.h>
#include <stddef.h>

double cpu_cross_entropy(float *logits, const int32_t *targets, int n, int V, float grad_scale) {
    double *row_loss = (double *)cpu_alloc(2 * (size_t)n); /* summed in order below */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *z = logits + (size_t)i * V;
        float mx = -FLT_MAX;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < V; j++) sum += vexpf(z[j] - mx);
        float lse = mx + logf(sum);
        row_loss[i] = (double)(lse - z[targets[i]]);
        if (grad_scale != 0.0f) {
#pragma omp simd
            for (int j = 0; j < V; j++) z[j] = grad_scale * vexpf(z[j] - lse);
            z[targets[i]] -= grad_scale;
        }
    }
    double total = 0.0;
    for (int i = 0; i < n; i++) total += row_loss[i];
    cpu_free(row_loss);
    return total;
}

double cpu_squared_error(float *dpred, const float *pred, const float *target, size_t n, float grad_scale) {
    double total = cpu_sum_squared_diff(pred, target, n); /* before dpred may overwrite pred */
    if (grad_scale != 0.0f) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) dpred[i] = grad_scale * 2.0f * (pred[i] - target[i]);
    }
    return total;
}
