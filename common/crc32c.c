/* crc32c.c - CRC-32C, reflected polynomial 0x82F63B78: the SSE4.2 crc32
 * instruction where the CPU has it (checkpoints checksum gigabytes on every
 * save and load; the table runs at a few hundred MB/s), else a table. */
#include "crc32c.h"
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static uint32_t table[256];

__attribute__((constructor)) static void make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t len) {
    uint64_t c = ~crc;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return crc32c_sse42(crc, p, len);
#endif
    crc = ~crc;
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
