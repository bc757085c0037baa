/* verify.c - is a step folder complete and intact (every file the index lists,
 * with its size and CRC32C, the EMA's among them), and which checkpoint does
 * --resume mean (ckpt.h). */
#include "ckpt.h"
#include "folder.h"
#include "../common/crc32c.h"
#include "../common/error.h"
#include "../common/file_read.h"
#include "../common/json_file.h"
#include "../nn/dist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int check_file(const char *dir, const char *index, const cJSON *entry, char *err) {
    const char *name = entry->string;
    char path[CKPT_PATH_LEN];
    size_t bytes;
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(entry, "crc32c");
    if (!ckpt_plain_name(name) || !ckpt_json_size(entry, "bytes", &bytes) || !cJSON_IsString(hex))
        return set_error(err, "%s: files['%s']: needs a plain name, bytes and crc32c", index, name);
    ckpt_join(path, dir, name);
    struct stat sb;
    if (stat(path, &sb) != 0) return set_error(err, "%s: missing (listed in the index): %s", path, strerror(errno));
    if ((size_t)sb.st_size != bytes)
        return set_error(err, "%s: %lld bytes, the index says %zu", path, (long long)sb.st_size, bytes);
    uint32_t crc;
    char got[9];
    if (crc32c_file(path, &crc, err)) return -1;
    snprintf(got, sizeof got, "%08x", crc);
    if (strcmp(got, hex->valuestring) != 0)
        return set_error(err, "%s: CRC32C %s, the index says %.8s", path, got, hex->valuestring);
    return 0;
}

/* A file the folder needs must be among those the index checksums. */
static int listed(const cJSON *files, const char *index, const char *name, const char *what, char *err) {
    if (!name || !cJSON_GetObjectItemCaseSensitive(files, name))
        return set_error(err, "%s: %s '%s' has no entry in files", index, what, name ? name : "?");
    return 0;
}

/* The index against its own size and CRC32C (index.crc32c). */
static int check_index(const char *dir, const char *index, char *err) {
    char path[CKPT_PATH_LEN];
    size_t len;
    ckpt_join(path, dir, CKPT_INDEX_SUM);
    char *line = file_read(path, 64, &len, err);
    if (!line) return -1;
    unsigned crc;
    long long bytes;
    int ok = sscanf(line, "%8x %lld", &crc, &bytes) == 2;
    free(line);
    if (!ok) return set_error(err, "%s: expected \"CRC32C BYTES\"", path);
    struct stat sb;
    uint32_t got;
    if (stat(index, &sb) != 0) return set_error(err, "%s: missing: %s", index, strerror(errno));
    if (sb.st_size != bytes) return set_error(err, "%s: %lld bytes, %s says %lld", index, (long long)sb.st_size, path, bytes);
    if (crc32c_file(index, &got, err)) return -1;
    if (got != crc) return set_error(err, "%s: CRC32C %08x, %s says %08x", index, got, path, crc);
    return 0;
}

int ckpt_verify(const char *dir, char *err) {
    char index[CKPT_PATH_LEN];
    ckpt_join(index, dir, CKPT_INDEX);
    cJSON *root = json_read_object(index, err);
    if (!root) return -1;
    if (check_index(dir, index, err)) {
        cJSON_Delete(root);
        return -1;
    }
    int rc = -1;
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    const cJSON *wmap = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(root, "optimizer_parts");
    const cJSON *emap = cJSON_GetObjectItemCaseSensitive(root, "ema_map"); /* runs with --ema only */
    const cJSON *e;
    if (!cJSON_IsObject(files) || !cJSON_IsObject(wmap) || !cJSON_IsArray(parts) || (emap && !cJSON_IsObject(emap))) {
        set_error(err,
                  "%s: needs the objects files and weight_map and the array optimizer_parts "
                  "(and ema_map as an object)",
                  index);
        goto out;
    }
    cJSON_ArrayForEach(e, files) if (check_file(dir, index, e, err)) goto out;
    if (listed(files, index, CKPT_CONFIG, "file", err) || listed(files, index, CKPT_STATE, "file", err)) goto out;
    cJSON_ArrayForEach(e, wmap) if (listed(files, index, cJSON_GetStringValue(e), "weight file", err)) goto out;
    cJSON_ArrayForEach(e, emap) if (listed(files, index, cJSON_GetStringValue(e), "EMA file", err)) goto out;
    cJSON_ArrayForEach(e, parts) {
        const char *f = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "file"));
        if (listed(files, index, f, "optimizer file", err)) goto out;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* Verified, and readable as a training state: its parts tile the flat
 * parameters and match their files, and its index and trainer_state.json
 * name the same step. What fails here would fail at load. */
static int intact(const char *dir, char *err) {
    ckpt_reader r;
    if (ckpt_verify(dir, err) || ckpt_open(&r, dir, err)) return -1;
    ckpt_close(&r);
    return 0;
}

/* Rank 0's choice: the step (>= 0), -1 none at all, -2 an error. */
static long choose(const char *dir, const char *spec, char *err) {
    if (strcmp(spec, "auto") != 0) return intact(spec, err) ? -2 : 0;
    long *steps;
    int n = ckpt_list_steps(dir, &steps, err);
    if (n < 0) return -2;
    long chosen = n == 0 ? -1 : -2;
    for (int i = n - 1; i >= 0 && chosen == -2; i--) {
        char path[CKPT_PATH_LEN], why[ERR_LEN];
        ckpt_step_path(path, dir, CKPT_STEP_PREFIX, steps[i]);
        if (intact(path, why) == 0)
            chosen = steps[i];
        else
            fprintf(stderr, "checkpoint: skipping %s: %s\n", path, why);
    }
    if (chosen == -2) set_error(err, "%s: none of its %d checkpoints is intact", dir, n);
    free(steps);
    return chosen;
}

int ckpt_resolve(const char *dir, const char *spec, char *path, size_t len, char *err) {
    int64_t mine = dist_rank() == 0 ? choose(dir, spec, err) : 0, *all = xmalloc(sizeof(int64_t) * dist_size());
    dist_allgather_i64(mine, all);
    long chosen = (long)all[0];
    free(all);
    if (chosen == -1) return 1;
    if (chosen == -2) {
        if (dist_rank() != 0) set_error(err, "%s: rank 0 found no checkpoint to resume (see its message)", spec);
        return -1;
    }
    if (strcmp(spec, "auto") != 0)
        snprintf(path, len, "%s", spec);
    else {
        char p[CKPT_PATH_LEN];
        ckpt_step_path(p, dir, CKPT_STEP_PREFIX, chosen);
        snprintf(path, len, "%s", p);
    }
    return 0;
}
