/* attn_tiles.h - which tiles of the score matrix a range-attention kernel
 * visits (kernels.def: query i sees keys [lo[i], hi[i]] of its row).
 * Shared by the GPU kernels (nn/cuda/attention.cu) and the CPU tests.
 *
 * A tile of queries [q0, q0+nq) x keys [j0, j1] is visited iff some query of
 * it may see some key of it; every other tile is fully masked and skipped.
 * The per-key-tile search assumes lo and hi nondecreasing along the row,
 * which the plan's ranges are (documents and images are contiguous runs). */
#ifndef NN_ATTN_TILES_H
#define NN_ATTN_TILES_H

#include <stdint.h>

#ifdef __CUDACC__
#define NN_HD __host__ __device__
#else
#define NN_HD
#endif

/* Smallest and largest key any of the queries [q0, q0+nq) may see. */
NN_HD static inline void attn_qtile_keys(const int32_t *lo, const int32_t *hi, int q0, int nq, int *k0, int *k1) {
    int a = lo[q0], b = hi[q0];
    for (int r = 1; r < nq; r++) {
        a = lo[q0 + r] < a ? lo[q0 + r] : a;
        b = hi[q0 + r] > b ? hi[q0 + r] : b;
    }
    *k0 = a;
    *k1 = b;
}

/* Whether query (lo_i, hi_i) sees any key of [j0, j1]. */
NN_HD static inline int attn_sees(int lo_i, int hi_i, int j0, int j1) { return lo_i <= j1 && hi_i >= j0; }

/* The queries of a row of L that see any key of [j0, j1]: [*q0, *q1]
 * (empty when *q0 > *q1). Binary searches: hi >= j0 is a suffix of the row,
 * lo <= j1 a prefix. */
NN_HD static inline void attn_ktile_queries(const int32_t *lo, const int32_t *hi, int L, int j0, int j1, int *q0,
                                            int *q1) {
    int a = 0, b = L; /* first i with hi[i] >= j0 */
    while (a < b) {
        int m = (a + b) / 2;
        if (hi[m] >= j0)
            b = m;
        else
            a = m + 1;
    }
    *q0 = a;
    a = 0, b = L; /* first i with lo[i] > j1 */
    while (a < b) {
        int m = (a + b) / 2;
        if (lo[m] > j1)
            b = m;
        else
            a = m + 1;
    }
    *q1 = a - 1;
}

#endif
