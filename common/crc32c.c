/* crc32c.c - table-driven CRC-32C, reflected polynomial 0x82F63B78. */
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

uint32_t crc32c(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
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
