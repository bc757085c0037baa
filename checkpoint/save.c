/* save.c - writing a checkpoint (ckpt.h): every rank's shard (weights, and
 * the EMA when kept) and optimizer part into the temp folder, then rank 0's
 * config, state, extra files and index, the rename into place, DIR/latest,
 * and the retention. */
#include "ckpt.h"
#include "folder.h"
#include "../common/atomic_file.h"
#include "../common/crc32c.h"
#include "../common/error.h"
#include "../common/json_file.h"
#include "../nn/dist.h"
#include "../common/dir.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What each rank reports to rank 0 after writing its files (G_E_BYTES -1:
 * no EMA file). */
enum { G_W_BYTES, G_W_CRC, G_O_BYTES, G_O_CRC, G_O_OFFSET, G_O_COUNT, G_E_BYTES, G_E_CRC, G_N };

static void shard_name(char *buf, size_t len, const char *kind, int rank, int size) {
    snprintf(buf, len, "%s-%05d-of-%05d.safetensors", kind, rank + 1, size);
}

/* True when every rank's rc is 0. A rank that succeeded while another
 * failed gets a message saying so (the failed rank has its own). */
static int all_ok(int rc, const char *where, char *err) {
    int64_t failed = rc != 0;
    dist_allreduce_sum_i64(&failed, 1);
    if (failed && rc == 0) set_error(err, "%s: another rank failed to save (see its message)", where);
    return failed == 0;
}

static int file_sum(const char *path, int64_t *bytes, int64_t *crc, char *err) {
    uint32_t c;
    struct stat sb;
    if (crc32c_file(path, &c, err)) return -1;
    if (stat(path, &sb) != 0) return set_error(err, "%s: cannot stat: %s", path, strerror(errno));
    *bytes = sb.st_size;
    *crc = c;
    return 0;
}

void ckpt_shard_range(const param_set *ps, int rank, int size, size_t *offset, size_t *count) {
    size_t off, n, lo = 0, hi = 0;
    int any = 0;
    dist_part(ps->numel, rank, size, &off, &n);
    for (int i = 0; i < ps->n; i++) { /* tensors are in offset order */
        const param_info *p = &ps->info[i];
        if (p->offset < off || p->offset - off >= n) continue;
        if (!any) lo = p->offset;
        any = 1;
        hi = p->offset + p->numel;
    }
    *offset = any ? lo : off;
    *count = hi - lo;
}

/* This rank's shard of tensors named like the weights, as the file
 * KIND-0000r-of-0000N: flat[0] is the first element of ckpt_shard_range. */
static int write_shard(const char *tmp, const char *kind, const param_set *ps, const float *flat, int rank, int size,
                       int64_t *bytes, int64_t *crc, char *err) {
    char name[64], path[CKPT_PATH_LEN];
    size_t off, count;
    ckpt_shard_range(ps, rank, size, &off, &count);
    shard_name(name, sizeof name, kind, rank, size);
    ckpt_join(path, tmp, name);
    return params_save_part(ps, flat, ST_F32, off, count, path, err) || file_sum(path, bytes, crc, err) ? -1 : 0;
}

/* This rank's weight shard, EMA shard and optimizer part, with their sizes
 * and CRCs. */
static int write_rank_files(const char *tmp, const ckpt_save_request *r, int rank, int size, int64_t *g, char *err) {
    char name[64], path[CKPT_PATH_LEN];
    size_t off, count;
    ckpt_shard_range(r->ps, rank, size, &off, &count);
    if (write_shard(tmp, "model", r->ps, r->ps->w + off, rank, size, &g[G_W_BYTES], &g[G_W_CRC], err)) return -1;
    g[G_E_BYTES] = -1;
    if (r->ema && write_shard(tmp, "ema", r->ps, r->ema, rank, size, &g[G_E_BYTES], &g[G_E_CRC], err)) return -1;

    if (r->opt_offset > r->ps->numel || r->opt_count > r->ps->numel - r->opt_offset)
        return set_error(err, "%s: optimizer range [%zu,%zu) outside the %zu parameters", tmp, r->opt_offset,
                         r->opt_offset + r->opt_count, r->ps->numel);
    int64_t range[2] = {(int64_t)r->opt_offset, (int64_t)r->opt_count};
    st_entry e[4] = {
        {.name = "range", .dtype = ST_I64, .ndim = 1, .shape = {2}, .data = range},
        {.name = "exp_avg", .dtype = ST_F32, .ndim = 1, .shape = {(int64_t)r->opt_count}, .data = r->m},
        {.name = "exp_avg_sq", .dtype = ST_F32, .ndim = 1, .shape = {(int64_t)r->opt_count}, .data = r->v},
        {.name = "master", .dtype = ST_F32, .ndim = 1, .shape = {(int64_t)r->opt_count}, .data = r->master},
    };
    shard_name(name, sizeof name, "optimizer", rank, size);
    ckpt_join(path, tmp, name);
    if (st_write(path, e, r->master ? 4 : 3, err) || file_sum(path, &g[G_O_BYTES], &g[G_O_CRC], err)) return -1;
    g[G_O_OFFSET] = (int64_t)r->opt_offset;
    g[G_O_COUNT] = (int64_t)r->opt_count;
    return 0;
}

static cJSON *need(cJSON *item) {
    if (!item) die("out of memory building checkpoint JSON");
    return item;
}

static void add_file(cJSON *files, const char *name, int64_t bytes, uint32_t crc) {
    char hex[9];
    snprintf(hex, sizeof hex, "%08x", crc);
    cJSON *f = need(cJSON_AddObjectToObject(files, name));
    need(cJSON_AddNumberToObject(f, "bytes", (double)bytes));
    need(cJSON_AddStringToObject(f, "crc32c", hex));
}

/* Writes a file of rank 0 into tmp (config, state, an extra) and records it. */
static int add_local_file(cJSON *files, const char *tmp, const char *name, char *err) {
    char path[CKPT_PATH_LEN];
    int64_t bytes = 0, crc = 0; /* set by file_sum; zeroed for the compiler */
    ckpt_join(path, tmp, name);
    if (file_sum(path, &bytes, &crc, err)) return -1;
    add_file(files, name, bytes, (uint32_t)crc);
    return 0;
}

static int cmp_range(const void *a, const void *b) {
    int64_t x = ((const int64_t *)a)[0], y = ((const int64_t *)b)[0];
    return (x > y) - (x < y);
}

/* The ranks' non-empty optimizer ranges must tile [0, numel), or the
 * checkpoint could not be loaded: refuse before anything looks complete. */
static int ranges_tile(const char *tmp, const int64_t *g, int size, size_t numel, char *err) {
    int64_t *ranges = xmalloc(sizeof(int64_t) * 2 * size), end = 0;
    int n = 0;
    for (int k = 0; k < size; k++) {
        if (g[(size_t)k * G_N + G_O_COUNT] == 0) continue;
        ranges[2 * n] = g[(size_t)k * G_N + G_O_OFFSET];
        ranges[2 * n + 1] = g[(size_t)k * G_N + G_O_COUNT];
        n++;
    }
    qsort(ranges, n, 2 * sizeof(int64_t), cmp_range);
    for (int i = 0; i < n && ranges[2 * i] == end; i++) end += ranges[2 * i + 1];
    free(ranges);
    if (end != (int64_t)numel)
        return set_error(err, "%s: the ranks' optimizer ranges do not tile the %zu parameters (gap or overlap at %lld)",
                         tmp, numel, (long long)end);
    return 0;
}

/* The index's own checksum, the folder's last file: without it the index
 * (which names the step and every other file's checksum) could be edited or
 * damaged unseen. */
static int write_index_sum(const char *tmp, char *err) {
    char path[CKPT_PATH_LEN], line[64];
    int64_t bytes = 0, crc = 0;
    ckpt_join(path, tmp, CKPT_INDEX);
    if (file_sum(path, &bytes, &crc, err)) return -1;
    int n = snprintf(line, sizeof line, "%08x %lld\n", (uint32_t)crc, (long long)bytes);
    ckpt_join(path, tmp, CKPT_INDEX_SUM);
    return atomic_write(path, &(file_piece){line, (size_t)n}, 1, err);
}

/* Rank 0: everything but the rank files, the index last. g holds G_N values
 * per rank. */
static int write_folder_files(const char *tmp, const ckpt_save_request *r, int size, const int64_t *g, char *err) {
    char path[CKPT_PATH_LEN], name[64];
    if (ranges_tile(tmp, g, size, r->ps->numel, err)) return -1;
    for (int k = 0; k < size; k++) /* an EMA in some shards only could not be loaded */
        if ((g[(size_t)k * G_N + G_E_BYTES] >= 0) != (r->ema != NULL))
            return set_error(err,
                             r->ema ? "%s: rank 0 saved an EMA, rank %d none" : "%s: rank %d saved an EMA, rank 0 none",
                             tmp, k);
    cJSON *files = need(cJSON_CreateObject());
    int rc = -1;
    ckpt_join(path, tmp, CKPT_CONFIG);
    if (json_write(path, need(cJSON_Duplicate(r->config, 1)), err) || add_local_file(files, tmp, CKPT_CONFIG, err))
        goto out;

    cJSON *state = need(r->state ? cJSON_Duplicate(r->state, 1) : cJSON_CreateObject());
    cJSON_DeleteItemFromObjectCaseSensitive(state, "step");
    cJSON_DeleteItemFromObjectCaseSensitive(state, "world_size");
    need(cJSON_AddNumberToObject(state, "step", (double)r->step));
    need(cJSON_AddNumberToObject(state, "world_size", size));
    ckpt_join(path, tmp, CKPT_STATE);
    if (json_write(path, state, err) || add_local_file(files, tmp, CKPT_STATE, err)) goto out;

    cJSON *extras = need(cJSON_CreateArray());
    cJSON *index = need(cJSON_CreateObject());
    cJSON_AddItemToObject(index, "extra_files", extras);
    for (int i = 0; i < r->n_extras; i++) {
        const char *n = r->extras[i].name;
        if (!ckpt_plain_name(n) || cJSON_GetObjectItemCaseSensitive(files, n) || strstr(n, ".safetensors")) {
            set_error(err, "%s: extra file name '%s' is not a plain new name", r->extras[i].path, n);
            cJSON_Delete(index);
            goto out;
        }
        ckpt_join(path, tmp, n);
        if (ckpt_copy_file(r->extras[i].path, path, err) || add_local_file(files, tmp, n, err)) {
            cJSON_Delete(index);
            goto out;
        }
        cJSON_AddItemToArray(extras, need(cJSON_CreateString(n)));
    }

    const param_set *ps = r->ps;
    cJSON *meta = need(cJSON_AddObjectToObject(index, "metadata"));
    need(cJSON_AddNumberToObject(meta, "total_size", (double)(ps->numel * sizeof(float))));
    need(cJSON_AddNumberToObject(meta, "param_count", (double)ps->numel));
    need(cJSON_AddNumberToObject(meta, "step", (double)r->step));
    need(cJSON_AddNumberToObject(meta, "world_size", size));
    cJSON *wmap = need(cJSON_AddObjectToObject(index, "weight_map"));
    cJSON *emap = r->ema ? need(cJSON_AddObjectToObject(index, "ema_map")) : NULL;
    int owner = 0; /* tensors are in offset order */
    for (int i = 0; i < ps->n; i++) {
        size_t off, count;
        for (;;) {
            dist_part(ps->numel, owner, size, &off, &count);
            if (ps->info[i].offset < off + count || owner == size - 1) break;
            owner++;
        }
        shard_name(name, sizeof name, "model", owner, size);
        need(cJSON_AddStringToObject(wmap, ps->info[i].name, name));
        if (!emap) continue;
        shard_name(name, sizeof name, "ema", owner, size);
        need(cJSON_AddStringToObject(emap, ps->info[i].name, name));
    }
    cJSON *parts = need(cJSON_AddArrayToObject(index, "optimizer_parts"));
    for (int k = 0; k < size; k++) {
        const int64_t *gk = g + (size_t)k * G_N;
        cJSON *p = need(cJSON_CreateObject());
        shard_name(name, sizeof name, "optimizer", k, size);
        need(cJSON_AddStringToObject(p, "file", name));
        need(cJSON_AddNumberToObject(p, "offset", (double)gk[G_O_OFFSET]));
        need(cJSON_AddNumberToObject(p, "count", (double)gk[G_O_COUNT]));
        need(cJSON_AddBoolToObject(p, "master", r->master != NULL));
        cJSON_AddItemToArray(parts, p);
        add_file(files, name, gk[G_O_BYTES], (uint32_t)gk[G_O_CRC]);
        shard_name(name, sizeof name, "model", k, size);
        add_file(files, name, gk[G_W_BYTES], (uint32_t)gk[G_W_CRC]);
        if (!emap) continue;
        shard_name(name, sizeof name, "ema", k, size);
        add_file(files, name, gk[G_E_BYTES], (uint32_t)gk[G_E_CRC]);
    }
    cJSON_AddItemToObject(index, "files", files);
    files = NULL;
    ckpt_join(path, tmp, CKPT_INDEX);
    rc = json_write(path, index, err) || write_index_sum(tmp, err) ? -1 : 0; /* each fsyncs its file and tmp */
out:
    cJSON_Delete(files);
    return rc;
}

/* Points dir/latest at the step folder: a new symlink renamed over it. */
static int update_latest(const char *dir, const char *final, char *err) {
    char tmp[CKPT_PATH_LEN], link[CKPT_PATH_LEN];
    ckpt_join(tmp, dir, ".latest.tmp");
    ckpt_join(link, dir, "latest");
    unlink(tmp);
    if (symlink(strrchr(final, '/') + 1, tmp) != 0)
        return set_error(err, "%s: cannot create symlink: %s", tmp, strerror(errno));
    if (rename(tmp, link) != 0) {
        set_error(err, "%s: cannot replace: %s", link, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return ckpt_sync_dir(dir, err);
}

/* Deletes the folders outside the retention; each is renamed to a dot-name
 * first so that a crash mid-delete leaves nothing that looks complete. */
static int apply_retention(const char *dir, const ckpt_save_request *r, char *err) {
    if (r->keep <= 0) return 0;
    long *steps;
    int n = ckpt_list_steps(dir, &steps, err), rc = n < 0 ? -1 : 0;
    for (int i = 0; i < n - r->keep && rc == 0; i++) {
        if (steps[i] == r->step || (r->keep_every > 0 && steps[i] % r->keep_every == 0)) continue;
        char path[CKPT_PATH_LEN], trash[CKPT_PATH_LEN];
        ckpt_step_path(path, dir, CKPT_STEP_PREFIX, steps[i]);
        ckpt_step_path(trash, dir, CKPT_TRASH_PREFIX, steps[i]);
        if (rename(path, trash) != 0)
            rc = set_error(err, "%s: cannot rename for deletion: %s", path, strerror(errno));
        else
            rc = ckpt_remove_tree(trash, err);
    }
    free(steps);
    return rc;
}

/* Rank 0, before anyone writes: dir exists, leftovers of interrupted saves
 * and deletions are gone, the temp folder is new and empty. */
static int prepare(const char *dir, const char *tmp, char *err) {
    if (make_dir(dir, err) || ckpt_remove_leftovers(dir, err)) return -1;
    return make_dir(tmp, err);
}

/* Rank 0, once every file is in tmp: rename into place (an older folder of
 * the same step is moved aside first), then latest and the retention. */
static int publish(const char *dir, const char *tmp, const char *final, const ckpt_save_request *r, char *err) {
    char trash[CKPT_PATH_LEN];
    ckpt_step_path(trash, dir, CKPT_TRASH_PREFIX, r->step);
    if (access(final, F_OK) == 0 && rename(final, trash) != 0)
        return set_error(err, "%s: cannot move the old folder aside: %s", final, strerror(errno));
    if (rename(tmp, final) != 0) {
        set_error(err, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
        rename(trash, final); /* put the old folder back, if one was moved */
        return -1;
    }
    if (ckpt_sync_dir(dir, err) || ckpt_remove_tree(trash, err) || update_latest(dir, final, err)) return 1;
    return apply_retention(dir, r, err) ? 1 : 0;
}

int ckpt_save(const char *dir, const ckpt_save_request *r, char *err) {
    int rank = dist_rank(), size = dist_size(), rc = 0;
    char tmp[CKPT_PATH_LEN], final[CKPT_PATH_LEN];
    ckpt_step_path(tmp, dir, CKPT_TMP_PREFIX, r->step);
    ckpt_step_path(final, dir, CKPT_STEP_PREFIX, r->step);
    if (rank == 0) rc = prepare(dir, tmp, err);
    if (!all_ok(rc, tmp, err)) return -1;

    int64_t mine[G_N], *all = xcalloc((size_t)size * G_N, sizeof(int64_t));
    rc = write_rank_files(tmp, r, rank, size, mine, err);
    int ok = all_ok(rc, tmp, err);
    for (int k = 0; ok && k < G_N; k++) {
        int64_t *col = xmalloc(sizeof(int64_t) * size);
        dist_allgather_i64(mine[k], col);
        for (int q = 0; q < size; q++) all[(size_t)q * G_N + k] = col[q];
        free(col);
    }
    /* publish: 0 done, 1 in place but latest or retention failed, -1 not in place */
    if (ok && rank == 0) {
        rc = write_folder_files(tmp, r, size, all, err);
        if (rc == 0) rc = publish(dir, tmp, final, r, err);
    }
    free(all);
    if (rank == 0 && (!ok || rc < 0)) {
        char ignored[ERR_LEN];
        ckpt_remove_tree(tmp, ignored); /* the error that matters is already in err */
    }
    return ok && all_ok(rc, final, err) ? 0 : -1;
}
