/* rng.h - a small deterministic random number generator (splitmix64) with
 * uniform and normal draws. The same seed gives the same stream on every
 * machine, which is what makes init, generated batches and noise repeatable. */
#ifndef COMMON_RNG_H
#define COMMON_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t state;
} rng;

static inline void rng_seed(rng *r, uint64_t seed) { r->state = seed; }

static inline uint64_t rng_u64(rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A seed derived from a key (a, b): chained, rng_key(rng_key(seed, step), i)
 * gives draws that are a pure function of (seed, step, i), the same however
 * the work is split over ranks (counter-based sampling). */
static inline uint64_t rng_key(uint64_t a, uint64_t b) {
    rng r = {a ^ (b * 0xD1B54A32D192ED03ull)};
    return rng_u64(&r);
}

/* Uniform in [0, 1), 53 bits. */
static inline double rng_uniform(rng *r) { return (rng_u64(r) >> 11) * 0x1.0p-53; }

/* Uniform integer in [lo, hi]. */
static inline int rng_int(rng *r, int lo, int hi) { return lo + (int)(rng_uniform(r) * (double)(hi - lo + 1)); }

/* Standard normal (Box-Muller; one draw per call keeps the stream simple). */
double rng_normal(rng *r);

#endif
