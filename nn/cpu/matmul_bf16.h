/* matmul_bf16.h - the CPU's bf16 matrix products (see matmul_bf16.c):
 * kernels of the bf16 precision's table (backend.c) and the pieces the
 * bf16 attention builds on; private to the CPU backend. */
#ifndef NN_CPU_MATMUL_BF16_H
#define NN_CPU_MATMUL_BF16_H

#include "cpu.h"

#include <stdint.h>

typedef uint16_t bf16; /* the upper half of a float32 */

/* dst[r, c] = src[r, c] rounded to bf16 (nearest even), rows x cols, each
 * side at its own row stride. Threaded unless small or called in a parallel
 * region. */
void cpu_round_bf16(bf16 *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);
/* nn_gemm's contract on bf16 operands (float32 C). */
void cpu_matmul_bf16(int transA, int transB, int M, int N, int K, float alpha, const bf16 *A, int lda, const bf16 *B,
                     int ldb, float beta, float *C, int ldc);

/* nn_linear_forward and nn_linear_backward with their float32 operands
 * rounded to bf16. */
void cpu_linear_forward_bf16(float *y, const float *x, const float *W, const float *b, int N, int in, int out);
void cpu_linear_backward_bf16(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N,
                              int in, int out, int acc);
/* nn_attention_forward and nn_attention_backward with bf16 products
 * (attention.c). */
void cpu_attention_forward_bf16(float *out, float *lse, const float *qkv, const int32_t *lo, const int32_t *hi, int B,
                                int L, int H, int head_dim);
void cpu_attention_backward_bf16(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                                 const int32_t *lo, const int32_t *hi, int B, int L, int H, int head_dim);

#endif
