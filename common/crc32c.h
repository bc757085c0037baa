/* crc32c.h - CRC-32C (Castagnoli), the checksum dataset.json records for
 * every latent shard (the same as iSCSI, ext4 and LevelDB use). */
#ifndef COMMON_CRC32C_H
#define COMMON_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues crc over data; start with crc = 0. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

/* CRC-32C of a whole file; -1 (with err) when it cannot be read. */
int crc32c_file(const char *path, uint32_t *crc, char *err);

#endif
