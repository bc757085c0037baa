/* diffusion.c - cosine schedule (Nichol & Dhariwal, s = 0.008), timestep
 * features and patch layout; see diffusion.h and docs/model.md section 3. */
#include "diffusion.h"

#include <math.h>
#include <stddef.h>

void diffusion_alpha_bar(double *alpha_bar, int T) {
    const double s = 0.008;
    alpha_bar[0] = 1.0;
    double prev_f = pow(cos((0.0 + s) / (1.0 + s) * M_PI / 2), 2);
    for (int t = 1; t <= T; t++) {
        double f = pow(cos(((double)t / T + s) / (1.0 + s) * M_PI / 2), 2);
        double beta = 1.0 - f / prev_f;
        if (beta > 0.999) beta = 0.999;
        alpha_bar[t] = alpha_bar[t - 1] * (1.0 - beta);
        prev_f = f;
    }
}

void diffusion_time_features(float *feat, int t, int dim) {
    int k = dim / 2;
    for (int i = 0; i < k; i++) {
        double a = t * exp(-log(10000.0) * i / k);
        feat[i] = (float)cos(a);
        feat[k + i] = (float)sin(a);
    }
}

/* Maps (element of patch k) <-> (offset in the latent); dir 0 reads x. */
static void patch_copy(float *patch, float *x, int k, const model_config *c, int to_latent) {
    int C = c->latent_channels, p = c->patch_size, w = c->latent_size, gw = w / p;
    int gy = k / gw, gx = k % gw;
    for (int py = 0; py < p; py++)
        for (int px = 0; px < p; px++)
            for (int ch = 0; ch < C; ch++) {
                float *e = patch + (py * p + px) * C + ch;
                float *v = x + ((size_t)ch * w + gy * p + py) * w + gx * p + px;
                if (to_latent)
                    *v = *e;
                else
                    *e = *v;
            }
}

void diffusion_patchify(float *patch, const float *x, int k, const model_config *c) {
    patch_copy(patch, (float *)x, k, c, 0);
}

void diffusion_unpatchify(float *x, const float *patch, int k, const model_config *c) {
    patch_copy((float *)patch, x, k, c, 1);
}

void diffusion_timesteps(int *ts, int D, int T) {
    for (int i = 0; i <= D; i++) ts[i] = (int)(((long)i * T + D - 1) / D);
}

void diffusion_reverse_step(float *x, const float *eps, const float *z, size_t n, double ab_t, double ab_prev,
                            double eta, double clip) {
    double sigma = eta * sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev));
    double dir = sqrt(fmax(1.0 - ab_prev - sigma * sigma, 0.0));
    double inv_sa = 1.0 / sqrt(ab_t), sb = sqrt(1.0 - ab_t), sa_prev = sqrt(ab_prev);
    for (size_t i = 0; i < n; i++) {
        double x0 = (x[i] - sb * eps[i]) * inv_sa, e = eps[i];
        if (clip > 0 && fabs(x0) > clip) {
            x0 = x0 > 0 ? clip : -clip;
            e = (x[i] - sqrt(ab_t) * x0) / sb; /* the noise that x0 implies */
        }
        double v = sa_prev * x0 + dir * e;
        if (sigma > 0) v += sigma * z[i];
        x[i] = (float)v;
    }
}
