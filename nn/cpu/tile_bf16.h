/* tile_bf16.h - a small single-threaded bf16 matrix product for the bf16
 * attention's block products, and the packing of its operands (see
 * tile_bf16.c); private to the CPU backend. */
#ifndef NN_CPU_TILE_BF16_H
#define NN_CPU_TILE_BF16_H


#include <stdint.h>

/* A "pair" is a uint32 holding two bf16 values that are neighbours along
 * the contraction dimension: the first in the low 16 bits, the second in
 * the high 16 bits (the operand order of VDPBF16PS). Where a dimension is
 * odd, the missing second half is zero. Every packer rounds float32 to
 * bf16 to nearest even, as round_bf16 (bf16.h). */

/* dst[r, p] = (src[r, 2p], src[r, 2p+1]) for r < rows, p < (cols+1)/2:
 * each row as bf16 pairs (row-major bf16 with an even row length). */
void bf16_pairs_along_cols(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);
/* dst[p, c] = (src[2p, c], src[2p+1, c]) for p < (rows+1)/2, c < cols:
 * two rows interleaved into one row of pairs. */
void bf16_pairs_along_rows(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);
/* dst[p, r] = (src[r, 2p], src[r, 2p+1]) for p < (cols+1)/2, r < rows:
 * bf16_pairs_along_cols transposed. */
void bf16_pairs_transposed(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols);

/* C[M, N] = alpha A B + beta C with the contraction over K2 pairs. A's
 * pair (i, p) is A[i a_row + p a_pair] (a_pair 1: rows from
 * bf16_pairs_along_cols; a_row 1: A transposed, from
 * bf16_pairs_along_rows); B's pairs (p, n) are B[p ldb + n], from
 * bf16_pairs_along_rows or bf16_pairs_transposed. C is float32 and is not
 * read when beta is 0. */
void bf16_gemm(int M, int N, int K2, float alpha, const uint32_t *A, int a_row, int a_pair, const uint32_t *B, int ldb,
               float beta, float *C, int ldc);

#endif
