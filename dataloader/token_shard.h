/* token_shard.h - the pre-tokenized text shard (`dataloader tokenize` writes
 * them, `dataloader serve` maps them).
 *
 * Layout, little-endian:
 *   bytes  0..7   magic "TFTOKENS"
 *          8..11  u32 version (1)
 *         12..15  u32 dtype of the tokens: 1 = U16, 2 = I32
 *         16..23  u64 n_docs
 *         24..31  u64 n_tokens
 *         32..35  u32 vocab_size (every token is below it)
 *         36..39  u32 CRC-32C of everything after the 64-byte header
 *         40..47  u64 tokenizer fingerprint (CRC-32C of the model file)
 *         48..63  zero
 *   then u64 offsets[n_docs + 1] (doc d is tokens [off[d], off[d+1])),
 *   then n_tokens tokens of the given dtype.
 * Documents hold text tokens only; BOS and EOS are added when rows are packed. */
#ifndef DATALOADER_TOKEN_SHARD_H
#define DATALOADER_TOKEN_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define TOKEN_SHARD_VERSION 1
#define TOKEN_SHARD_HEADER 64
enum { TOKEN_U16 = 1, TOKEN_I32 = 2 };

typedef struct {
    char *path;
    const uint8_t *map; /* the whole file, mmap'ed */
    size_t size;
    uint32_t dtype, vocab_size, crc;
    uint64_t n_docs, n_tokens, tokenizer;
    const uint8_t *offsets; /* u64 [n_docs + 1], read with token_shard_doc */
    const uint8_t *tokens;
} token_shard;

/* Writes a shard atomically. offsets has n_docs + 1 entries. */
int token_shard_write(const char *path, const int32_t *tokens, const uint64_t *offsets, uint64_t n_docs,
                      uint32_t vocab_size, uint64_t tokenizer, uint32_t *crc_out, char *err);

/* Maps and validates a shard: magic, version, dtype, sizes, CRC-32C,
 * offsets and token ids. Errors name the file and what is wrong. */
int token_shard_open(const char *path, token_shard *s, char *err);
void token_shard_close(token_shard *s);

/* Document d: its first token index and length. */
void token_shard_doc(const token_shard *s, uint64_t d, uint64_t *start, uint64_t *len);

/* Copies n tokens from token index `from` into out as int32. */
void token_shard_read(const token_shard *s, uint64_t from, size_t n, int32_t *out);

#endif
