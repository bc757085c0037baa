/* finite.c - NaN and infinity checks (finite.h). */
#include "finite.h"

#include <math.h>
#include <stdio.h>

long long first_nonfinite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long long)i;
    return -1;
}

const char *json_num(char buf[32], double x) {
    if (!isfinite(x)) return "null";
    snprintf(buf, 32, "%.9g", x);
    return buf;
}
