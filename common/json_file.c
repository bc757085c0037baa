/* json_file.c - read and write small JSON files (json_file.h). */
#include "json_file.h"
#include "atomic_file.h"
#include "error.h"
#include "file_read.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A config or dataset index is kilobytes; a huge file is some other file
 * passed by mistake, which should not be read into memory whole. */
#define MAX_JSON_BYTES (16 << 20)

cJSON *json_read_object(const char *path, char *err) {
    size_t len;
    char *text = file_read(path, MAX_JSON_BYTES, &len, err);
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

int json_number_list(const cJSON *obj, const char *name, int n, int positive, double *out, const char *path,
                     char *err) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, name), *e;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n)
        return set_error(err, "%s: field '%s': expected a list of %d numbers", path, name, n);
    int k = 0;
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsNumber(e) || (positive && !(e->valuedouble > 0)) || !isfinite(e->valuedouble))
            return set_error(err, "%s: field '%s': entry %d is not a finite%s number", path, name, k,
                             positive ? " positive" : "");
        out[k++] = e->valuedouble;
    }
    return 0;
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

const char *json_num(char buf[32], double x) {
    if (!isfinite(x)) return "null";
    snprintf(buf, 32, "%.9g", x);
    return buf;
}
