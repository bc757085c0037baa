/* diffusion.h - the diffusion side of the model (model.md section 3): the
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

#endif
