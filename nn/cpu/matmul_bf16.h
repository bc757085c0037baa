/* matmul_bf16.h - the CPU's bf16 precision (--precision bf16): the kernels
 * its table replaces (backend.c), the linear layers (matmul_bf16.c) and
 * attention (attention.c); private to the CPU backend. */
#ifndef NN_CPU_MATMUL_BF16_H
#define NN_CPU_MATMUL_BF16_H

#include "cpu.h"

#include <stdint.h>

/* nn_linear_forward and nn_linear_backward with their float32 operands
 * rounded to bf16. */
void cpu_linear_forward_bf16(float *y, const float *x, const float *W, const float *b, int N, int in, int out);
void cpu_linear_backward_bf16(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N,
                              int in, int out, int acc);
/* The fused passes of kernels.def (NN_FUSED) on bf16 products. */
void cpu_linear_add_forward_bf16(float *y, const float *x, const float *W, const float *residual, int N, int in,
                                 int out);
void cpu_rmsnorm_linear_forward_bf16(float *y, float *n, const float *x, const float *w, const float *W, int N, int d,
                                     int out, float eps);
void cpu_swiglu_linear_add_forward_bf16(float *y, float *act, const float *gu, const float *W, const float *residual,
                                        int N, int f, int out);
/* nn_attention_forward and nn_attention_backward with bf16 products
 * (attention.c). */
void cpu_attention_forward_bf16(float *out, float *lse, const float *qkv, const int32_t *lo, const int32_t *hi, int B,
                                int L, int H, int head_dim);
void cpu_attention_backward_bf16(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                                 const int32_t *lo, const int32_t *hi, int B, int L, int H, int head_dim);

#endif
