/* finite.c - NaN and infinity checks (finite.h). */
#include "finite.h"

#include <math.h>

long long first_nonfinite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long long)i;
    return -1;
}
