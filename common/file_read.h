/* file_read.h - a whole regular file into memory. */
#ifndef COMMON_FILE_READ_H
#define COMMON_FILE_READ_H

#include <stddef.h>

/* The contents of path, NUL-terminated (malloc'ed), and their length in
 * *len; NULL with a message naming the file when it cannot be opened, is
 * not a regular file, holds more than max bytes, or cannot be read. */
char *file_read(const char *path, size_t max, size_t *len, char *err);

#endif
