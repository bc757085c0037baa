/* bf16.h - the bfloat16 rounding every bf16 operand of the CPU backend goes
 * through (matmul_bf16.c's linear layers, tile_bf16.c's attention), so that
 * both multiply the same bf16 values; private to the CPU backend. */
#ifndef NN_CPU_BF16_H
#define NN_CPU_BF16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t bf16; /* the upper half of a float32 */

/* Round to nearest even; a NaN stays a (quiet) NaN instead of carrying
 * into the exponent. Denormals round like any other value (the
 * VCVTNEPS2BF16 instruction would flush them). */
static inline bf16 round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? (bf16)((u >> 16) | 0x40u) : (bf16)r;
}

#endif
