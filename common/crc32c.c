/* crc32c.c - CRC-32C, reflected polynomial 0x82F63B78: the SSE4.2 crc32
 * instruction where the CPU has it (the dataloader checks every batch it
 * sends and receives), else a table. The instruction has a latency of three
 * cycles and a throughput of one, so large inputs run as three interleaved
 * streams over neighbouring blocks, joined by the linear map that "appends
 * BLOCK zero bytes" to a CRC register (tabulated once). */
#include "crc32c.h"
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define BLOCK 4096

static uint32_t table[256];
static uint32_t zeros_table[4][256]; /* register -> register after BLOCK zero bytes, by byte */
static int have_sse42;

#if defined(__x86_64__)
static uint32_t crc_sse42(uint32_t c, const uint8_t *p, size_t len);
#endif

__attribute__((constructor)) static void make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2");
    if (!have_sse42) return;
    /* Over zero bytes the register update is linear: tabulate it from the
     * images of the 32 unit vectors. */
    static const uint8_t zeros[BLOCK];
    uint32_t basis[32];
    for (int k = 0; k < 32; k++) basis[k] = crc_sse42(1u << k, zeros, BLOCK);
    for (int j = 0; j < 4; j++)
        for (int v = 0; v < 256; v++) {
            uint32_t t = 0;
            for (int b = 0; b < 8; b++)
                if (v >> b & 1) t ^= basis[8 * j + b];
            zeros_table[j][v] = t;
        }
#endif
}

static uint32_t append_zero_block(uint32_t r) {
    return zeros_table[0][r & 255] ^ zeros_table[1][(r >> 8) & 255] ^ zeros_table[2][(r >> 16) & 255] ^
        zeros_table[3][r >> 24];
}

#if defined(__x86_64__)
/* The instruction works on the inverted register, as the table loop does. */
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t c, const uint8_t *p, size_t len) {
    uint64_t r = c;
    for (; len >= 3 * BLOCK && zeros_table[0][1]; p += 3 * BLOCK, len -= 3 * BLOCK) {
        uint64_t a = r, b = 0, d = 0;
        for (size_t i = 0; i < BLOCK; i += 8) {
            uint64_t x, y, z;
            memcpy(&x, p + i, 8);
            memcpy(&y, p + BLOCK + i, 8);
            memcpy(&z, p + 2 * BLOCK + i, 8);
            a = _mm_crc32_u64(a, x);
            b = _mm_crc32_u64(b, y);
            d = _mm_crc32_u64(d, z);
        }
        /* Register after A|B|C = zeros(zeros(a) ^ b) ^ d: B and C ran from 0. */
        r = append_zero_block(append_zero_block((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)d;
    }
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        r = _mm_crc32_u64(r, v);
    }
    for (; len; len--) r = _mm_crc32_u8((uint32_t)r, *p++);
    return (uint32_t)r;
}
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
    crc = ~crc;
#if defined(__x86_64__)
    if (have_sse42) return ~crc_sse42(crc, p, len);
#endif
    while (len--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

int crc32c_file(const char *path, uint32_t *crc, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return set_error(err, "%s: cannot open: %s", path, strerror(errno));
    static __thread uint8_t buf[1 << 16];
    uint32_t c = 0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) c = crc32c(c, buf, got);
    int bad = ferror(f);
    fclose(f);
    if (bad) return set_error(err, "%s: read error", path);
    *crc = c;
    return 0;
}
