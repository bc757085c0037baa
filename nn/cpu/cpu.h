/* cpu.h - the CPU backend's kernels: cpu_NAME implements nn_NAME of
 * kernels.def on host memory (float32 everywhere). It fuses nothing in
 * float32 (its fused entries are the plain kernels in turn, the same bits);
 * bf16's fused passes are in matmul_bf16.h. */
#ifndef NN_CPU_H
#define NN_CPU_H

#include "../kernels.h"

#define NN_V(name, params, args) void cpu_##name params;
#define NN_R(type, name, params, args) type cpu_##name params;
#define NN_FUSED(name, params, args) /* none: the plain kernels in turn */
#include "../kernels.def"
#undef NN_V
#undef NN_R
#undef NN_FUSED

/* y[i, :] += b for each of N rows of `out` (a linear layer's bias). */
void cpu_add_bias_rows(float *y, const float *b, int N, int out);
/* One row of rmsnorm_forward (y, x, w of d) and of swiglu_forward (act of
 * f, gu of 2f): bf16's fused passes (matmul_bf16.c) run them row by row. */
void cpu_rmsnorm_row(float *y, const float *x, const float *w, int d, float eps);
void cpu_swiglu_row(float *act, const float *gu, int f);

#endif
