/* token_shard.c - write, map and validate token shards (token_shard.h). */
#include "token_shard.h"
#include "../common/atomic_file.h"
#include "../common/crc32c.h"
#include "../common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are written as the integers are in memory; the format says little-endian"
#endif

static const char magic[8] = {'T', 'F', 'T', 'O', 'K', 'E', 'N', 'S'};

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

int token_shard_write(const char *path, const int32_t *tokens, const uint64_t *offsets, uint64_t n_docs,
                      uint32_t vocab_size, uint64_t tokenizer, uint32_t *crc_out, char *err) {
    uint64_t n = offsets[n_docs];
    uint32_t dtype = vocab_size <= 65536 ? TOKEN_U16 : TOKEN_I32;
    size_t tsize = dtype == TOKEN_U16 ? 2 : 4;
    void *packed = (void *)tokens;
    if (dtype == TOKEN_U16) {
        uint16_t *p = xmalloc(n * 2);
        for (uint64_t i = 0; i < n; i++) p[i] = (uint16_t)tokens[i];
        packed = p;
    }
    size_t off_bytes = (n_docs + 1) * 8;
    uint32_t crc = crc32c(crc32c(0, offsets, off_bytes), packed, n * tsize);
    uint8_t h[TOKEN_SHARD_HEADER] = {0};
    uint32_t version = TOKEN_SHARD_VERSION;
    memcpy(h, magic, 8);
    memcpy(h + 8, &version, 4);
    memcpy(h + 12, &dtype, 4);
    memcpy(h + 16, &n_docs, 8);
    memcpy(h + 24, &n, 8);
    memcpy(h + 32, &vocab_size, 4);
    memcpy(h + 36, &crc, 4);
    memcpy(h + 40, &tokenizer, 8);
    file_piece pieces[3] = {{h, sizeof h}, {offsets, off_bytes}, {packed, n * tsize}};
    int rc = atomic_write(path, pieces, 3, err);
    if (packed != (void *)tokens) free(packed);
    if (crc_out) *crc_out = crc;
    return rc;
}

void token_shard_close(token_shard *s) {
    if (s->map) munmap((void *)s->map, s->size);
    free(s->path);
    memset(s, 0, sizeof *s);
}

static int fail(token_shard *s, char *err, const char *why) {
    set_error(err, "%s: token shard: %s", s->path, why);
    token_shard_close(s);
    return -1;
}

int token_shard_open(const char *path, token_shard *s, char *err) {
    memset(s, 0, sizeof *s);
    s->path = strdup(path);
    if (!s->path) die("out of memory");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        set_error(err, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        token_shard_close(s);
        return -1;
    }
    s->size = (size_t)st.st_size;
    if (s->size < TOKEN_SHARD_HEADER) {
        close(fd);
        return fail(s, err, "shorter than its 64-byte header");
    }
    void *m = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return fail(s, err, "cannot map");
    s->map = m;
    const uint8_t *h = s->map;
    if (memcmp(h, magic, 8)) return fail(s, err, "wrong magic (not a token shard)");
    uint32_t version = get_u32(h + 8);
    if (version != TOKEN_SHARD_VERSION) {
        char why[96];
        snprintf(why, sizeof why, "version %u, this build reads %d", version, TOKEN_SHARD_VERSION);
        return fail(s, err, why);
    }
    s->dtype = get_u32(h + 12);
    if (s->dtype != TOKEN_U16 && s->dtype != TOKEN_I32) return fail(s, err, "unknown dtype");
    s->n_docs = get_u64(h + 16);
    s->n_tokens = get_u64(h + 24);
    s->vocab_size = get_u32(h + 32);
    s->crc = get_u32(h + 36);
    s->tokenizer = get_u64(h + 40);
    size_t tsize = s->dtype == TOKEN_U16 ? 2 : 4;
    /* Sizes come from the file: bound them before multiplying. */
    if (s->n_docs >= s->size / 8 || s->n_tokens > s->size / tsize ||
        TOKEN_SHARD_HEADER + (s->n_docs + 1) * 8 + s->n_tokens * tsize != s->size)
        return fail(s, err, "size does not match the header's counts (truncated or padded)");
    s->offsets = h + TOKEN_SHARD_HEADER;
    s->tokens = s->offsets + (s->n_docs + 1) * 8;
    if (crc32c(0, s->offsets, s->size - TOKEN_SHARD_HEADER) != s->crc) return fail(s, err, "checksum mismatch");
    uint64_t prev = get_u64(s->offsets);
    if (prev != 0) return fail(s, err, "offsets do not start at 0");
    for (uint64_t d = 1; d <= s->n_docs; d++) {
        uint64_t o = get_u64(s->offsets + d * 8);
        if (o < prev || o > s->n_tokens) return fail(s, err, "offsets are not increasing within the tokens");
        prev = o;
    }
    if (prev != s->n_tokens) return fail(s, err, "last offset is not the token count");
    for (uint64_t i = 0; i < s->n_tokens; i++) {
        int32_t t;
        token_shard_read(s, i, 1, &t);
        if (t < 0 || (uint32_t)t >= s->vocab_size) return fail(s, err, "a token id is outside the vocabulary");
    }
    return 0;
}

void token_shard_doc(const token_shard *s, uint64_t d, uint64_t *start, uint64_t *len) {
    uint64_t a = get_u64(s->offsets + d * 8), b = get_u64(s->offsets + (d + 1) * 8);
    *start = a;
    *len = b - a;
}

void token_shard_read(const token_shard *s, uint64_t from, size_t n, int32_t *out) {
    if (s->dtype == TOKEN_I32) {
        memcpy(out, s->tokens + from * 4, n * 4);
        return;
    }
    /* 2-byte aligned: the map starts on a page, the tokens 64 + 8 (n_docs + 1) bytes in. */
    const uint16_t *p = (const uint16_t *)(const void *)s->tokens + from;
    for (size_t i = 0; i < n; i++) out[i] = p[i];
}
