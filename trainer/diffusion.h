/* diffusion.h - the diffusion side of the model (docs/model.md section 3): the
 * cosine noise schedule, noising, patchify, and timestep features. */
#ifndef TRAINER_DIFFUSION_H
#define TRAINER_DIFFUSION_H

#include "../common/config.h"

#include <stdint.h>

/* alpha_bar[t] for t = 0..T (alpha_bar[0] = 1), computed in float64. */
void diffusion_alpha_bar(double *alpha_bar, int T);

/* feat(t) = [cos(t f_0 .. t f_{k-1}), sin(...)], f_i = exp(-ln(10000) i / k),
 * k = dim / 2, computed in float64 and stored as float32. */
void diffusion_time_features(float *feat, int t, int dim);

/* Patch k of a C x h x w latent (patch size p) as a vector of C*p*p with
 * element (py*p + px)*C + c = x[c, gy*p+py, gx*p+px]; patchify copies
 * out, unpatchify writes it back. */
void diffusion_patchify(float *patch, const float *x, int k, const model_config *c);
void diffusion_unpatchify(float *x, const float *patch, int k, const model_config *c);

/* Sampling (inference): the D timesteps of a sampler as a subsequence of
 * 1..T, ts[i] = ceil(i T / D) for i = 0..D (ts[0] = 0 is the clean end,
 * ts[D] = T; D = T gives every step). */
void diffusion_timesteps(int *ts, int D, int T);

/* One reverse step from x_t to x_prev, given the alpha_bar of both levels
 * (ab_prev = 1 at the clean end) and the predicted noise (DDIM, Song et al.
 * eq. 12): x0 = (x - sqrt(1 - ab_t) eps) / sqrt(ab_t),
 * sigma = eta sqrt((1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev)),
 * x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z.
 * eta = 0 is deterministic DDIM (z unused, may be NULL); eta = 1 samples the
 * posterior q(x_prev | x_t, x0), i.e. DDPM ancestral sampling on the
 * subsequence. With clip > 0, x0 is clipped to [-clip, clip] first (as
 * DDPM implementations clip pixels to [-1, 1]): at t = T the cosine
 * schedule's alpha_bar is 2e-9, so x0 = (x - ...) / sqrt(ab_t) multiplies
 * the error of eps by 2e4, and one unclipped step sends x far outside
 * anything the model was trained on. In float64 per element. */
void diffusion_reverse_step(float *x, const float *eps, const float *z, size_t n, double ab_t, double ab_prev,
                            double eta, double clip);

#endif
