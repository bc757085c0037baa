/* cpu.h - the CPU backend's kernels: cpu_NAME implements nn_NAME of
 * kernels.def on host memory (float32 everywhere). */
#ifndef NN_CPU_H
#define NN_CPU_H

#include "../kernels.h"

#define NN_V(name, params, args) void cpu_##name params;
#define NN_R(type, name, params, args) type cpu_##name params;
#include "../kernels.def"
#undef NN_V
#undef NN_R

/* y[i, :] += b for each of N rows of `out` (a linear layer's bias). */
void cpu_add_bias_rows(float *y, const float *b, int N, int out);

#endif
