/* file_read.c - a whole regular file into memory (file_read.h). */
#include "file_read.h"
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

char *file_read(const char *path, size_t max, size_t *len, char *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        set_error(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    char *text = NULL;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_error(err, "%s: not a readable regular file", path);
    } else if ((unsigned long long)sb.st_size > max) {
        set_error(err, "%s: %lld bytes, more than the %zu this file may have", path, (long long)sb.st_size, max);
    } else {
        size_t size = (size_t)sb.st_size;
        text = xmalloc(size + 1);
        if (fread(text, 1, size, fp) != size) {
            set_error(err, "%s: cannot read", path);
            free(text);
            text = NULL;
        } else {
            text[size] = '\0';
            *len = size;
        }
    }
    fclose(fp);
    return text;
}
