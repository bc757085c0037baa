/* finite.h - finding a NaN or an infinity in float data: the check that
 * batch files, latent shards and checkpoints pass before they are used or
 * written, since one non-finite number poisons every step after it. */
#ifndef COMMON_FINITE_H
#define COMMON_FINITE_H

#include <stddef.h>

/* Index of the first NaN or infinity in x[0..n), or -1 when all are finite. */
long long first_nonfinite(const float *x, size_t n);

#endif
