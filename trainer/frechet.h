/* frechet.h - the Fréchet distance between Gaussian fits of two sets of
 * vectors, as FID computes it on Inception features (here `trainer eval`
 * uses it on flattened latents):
 *   |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)
 * with the unbiased covariances S. */
#ifndef TRAINER_FRECHET_H
#define TRAINER_FRECHET_H

/* a [na, dim] and b [nb, dim], row-major; na, nb >= 2. */
double frechet_distance(const float *a, int na, const float *b, int nb, int dim);

#endif
