/* atomic_file.h - write a file so that a crash never leaves a torn one:
 * write to path.tmp.<pid>, fsync, rename over path, fsync the directory.
 * Readers see either the old file or the complete new one. */
#ifndef COMMON_ATOMIC_FILE_H
#define COMMON_ATOMIC_FILE_H

#include <stddef.h>

typedef struct {
    const void *data;
    size_t len;
} file_piece;

/* Writes the pieces, in order, as the new contents of path. On failure the
 * temp file is removed, err (ERR_LEN bytes) names path and the failed
 * step, and the result is non-zero. */
int atomic_write(const char *path, const file_piece *pieces, int n, char *err);

#endif
