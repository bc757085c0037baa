/* rng.c - normal draws for rng.h. */
#include "rng.h"
#include <math.h>

double rng_normal(rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300; /* log(0) would give an infinite draw */
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
