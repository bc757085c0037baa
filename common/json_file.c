/* json_file.c - read and write small JSON files (json_file.h). */
#include "json_file.h"
#include "atomic_file.h"
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A config or dataset index is kilobytes; a huge file is some other file
 * passed by mistake, which should not be read into memory whole. */
#define MAX_JSON_BYTES (16 << 20)

static char *read_text(const char *path, char *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        set_error(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    char *text = NULL;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_error(err, "%s: not a readable regular file", path);
    } else if (sb.st_size > MAX_JSON_BYTES) {
        set_error(err, "%s: %lld bytes, too large for a JSON config", path, (long long)sb.st_size);
    } else {
        size_t size = (size_t)sb.st_size;
        text = xmalloc(size + 1);
        if (fread(text, 1, size, fp) != size) {
            set_error(err, "%s: cannot read", path);
            free(text);
            text = NULL;
        } else {
            text[size] = '\0';
        }
    }
    fclose(fp);
    return text;
}

cJSON *json_read_object(const char *path, char *err) {
    char *text = read_text(path, err);
    if (!text) return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        int line = 1;
        for (const char *p = text; end && p < end; p++) line += *p == '\n';
        free(text);
        set_error(err, "%s: not valid JSON (line %d)", path, line);
        return NULL;
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        set_error(err, "%s: not a JSON object", path);
        return NULL;
    }
    return root;
}

int json_write(const char *path, cJSON *root, char *err) {
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) die("out of memory writing %s", path);
    size_t len = strlen(text);
    char *line = xmalloc(len + 2);
    memcpy(line, text, len);
    memcpy(line + len, "\n", 2);
    cJSON_free(text);
    int rc = atomic_write(path, &(file_piece){line, len + 1}, 1, err);
    free(line);
    return rc;
}
