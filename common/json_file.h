/* json_file.h - small JSON files (configs, dataset.json) read and written
 * with cJSON: read whole, parse, check for an object; print and write
 * atomically. */
#ifndef COMMON_JSON_FILE_H
#define COMMON_JSON_FILE_H

#include <cjson/cJSON.h>

/* Parses path (at most 16 MB) into a JSON object; NULL with a message naming
 * the file (and the line of a syntax error) otherwise. Free with cJSON_Delete. */
cJSON *json_read_object(const char *path, char *err);

/* obj's field `name` as exactly n numbers (each > 0 when `positive`) into
 * out; -1 with a message naming path, the field and the entry otherwise. */
int json_number_list(const cJSON *obj, const char *name, int n, int positive, double *out, const char *path, char *err);

/* Pretty-prints root plus a newline into path atomically. Takes ownership of
 * root (deletes it). */
int json_write(const char *path, cJSON *root, char *err);

/* x as JSON text: "%.9g", or null when it is not finite (JSON has no NaN). */
const char *json_num(char buf[32], double x);

#endif
