/* load.c - reading a step folder back (ckpt.h): weights and their EMA by
 * tensor name, the choice between them for readers, and the optimizer state
 * of any flat range from the parts that overlap it, which is what
 * resharding to another world size needs. */
#include "ckpt.h"
#include "folder.h"
#include "../common/error.h"
#include "../common/json_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_part(const void *a, const void *b) {
    size_t x = ((const ckpt_part_file *)a)->offset, y = ((const ckpt_part_file *)b)->offset;
    return (x > y) - (x < y);
}

/* One optimizer part: its file holds exp_avg and exp_avg_sq (and master)
 * of `count` floats, and its own range, which must agree with the index. */
static int open_part(ckpt_reader *r, const char *index, const cJSON *e, int k, char *err) {
    ckpt_part_file *p = &r->parts[k];
    const char *file = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "file"));
    int master = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "master"));
    if (!file || !ckpt_plain_name(file) || !ckpt_json_size(e, "offset", &p->offset) ||
        !ckpt_json_size(e, "count", &p->count))
        return set_error(err, "%s: optimizer_parts[%d]: needs file, offset and count", index, k);
    if (k > 0 && master != r->has_master)
        return set_error(err, "%s: optimizer_parts[%d]: master weights in some parts only", index, k);
    r->has_master = master;
    char path[CKPT_PATH_LEN];
    ckpt_join(path, r->dir, file);
    if (st_open(path, &p->file, err)) return -1;
    int64_t shape[1] = {(int64_t)p->count}, range[2] = {0, 0};
    const st_tensor *t = st_find(&p->file, "range");
    if (t && t->dtype == ST_I64 && t->end - t->begin == sizeof range)
        memcpy(range, p->file.buf + p->file.data_start + t->begin, sizeof range);
    if (range[0] != (int64_t)p->offset || range[1] != (int64_t)p->count)
        return set_error(err, "%s: tensor 'range' does not match the index's [%zu, +%zu)", path, p->offset, p->count);
    const char *names[3] = {"exp_avg", "exp_avg_sq", "master"};
    for (int i = 0; i < (master ? 3 : 2); i++) {
        t = st_find(&p->file, names[i]);
        if (!t || t->dtype != ST_F32 || t->ndim != 1 || t->shape[0] != shape[0])
            return set_error(err, "%s: tensor '%s': needs F32 [%zu]", path, names[i], p->count);
    }
    return 0;
}

static int read_index(ckpt_reader *r, char *err) {
    char index[CKPT_PATH_LEN];
    ckpt_join(index, r->dir, CKPT_INDEX);
    cJSON *root = json_read_object(index, err);
    if (!root) return -1;
    int rc = -1;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(root, "optimizer_parts");
    size_t step, world;
    if (!ckpt_json_size(meta, "param_count", &r->numel) || !ckpt_json_size(meta, "step", &step) ||
        !ckpt_json_size(meta, "world_size", &world) || !cJSON_IsArray(parts) || cJSON_GetArraySize(parts) < 1) {
        set_error(err, "%s: needs metadata.param_count, .step, .world_size and optimizer_parts", index);
        goto out;
    }
    r->step = (long)step;
    r->world_size = (int)world;
    r->has_ema = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "ema_map"));
    r->parts = xcalloc(cJSON_GetArraySize(parts), sizeof(ckpt_part_file));
    const cJSON *e;
    cJSON_ArrayForEach(e, parts) {
        if (open_part(r, index, e, r->n_parts++, err)) goto out;
    }
    /* Sorted by offset, the parts must tile [0, numel) exactly. */
    qsort(r->parts, r->n_parts, sizeof(ckpt_part_file), cmp_part);
    size_t end = 0;
    for (int k = 0; k < r->n_parts; k++) {
        if (r->parts[k].offset != end) {
            set_error(err, "%s: optimizer_parts leave a gap or overlap at float %zu", index, end);
            goto out;
        }
        end += r->parts[k].count;
    }
    if (end != r->numel) {
        set_error(err, "%s: optimizer_parts cover %zu of the %zu parameters", index, end, r->numel);
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int ckpt_open(ckpt_reader *r, const char *step_dir, char *err) {
    memset(r, 0, sizeof *r);
    size_t n = strlen(step_dir) + 1;
    r->dir = memcpy(xmalloc(n), step_dir, n);
    char path[CKPT_PATH_LEN];
    ckpt_join(path, step_dir, CKPT_CONFIG);
    if (read_index(r, err) || !(r->config = json_read_object(path, err))) goto fail;
    ckpt_join(path, step_dir, CKPT_STATE);
    if (!(r->state = json_read_object(path, err))) goto fail;
    /* Both are checksummed, but written apart: a run resumes from the step
     * the index names only if the state saved with the weights agrees. */
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(r->state, "step");
    if (!cJSON_IsNumber(s) || s->valuedouble != (double)r->step) {
        set_error(err, "%s: step %.0f, but the index says %ld", path, cJSON_IsNumber(s) ? s->valuedouble : -1.0, r->step);
        goto fail;
    }
    return 0;
fail:
    ckpt_close(r);
    return -1;
}

void ckpt_close(ckpt_reader *r) {
    for (int k = 0; k < r->n_parts; k++) st_close(&r->parts[k].file);
    free(r->parts);
    free(r->dir);
    cJSON_Delete(r->config);
    cJSON_Delete(r->state);
    memset(r, 0, sizeof *r);
}

static int load_map(const ckpt_reader *r, const param_set *ps, float *flat, const char *map, char *err) {
    if (ps->numel != r->numel)
        return set_error(err, "%s: holds %zu parameters, the model has %zu", r->dir, r->numel, ps->numel);
    return params_load_map(ps, flat, r->dir, map, err);
}

int ckpt_load_weights(const ckpt_reader *r, param_set *ps, char *err) {
    return load_map(r, ps, ps->w, "weight_map", err);
}

int ckpt_load_ema(const ckpt_reader *r, const param_set *ps, float *flat, char *err) {
    if (!r->has_ema) return set_error(err, "%s: holds no EMA of the weights (trained without --ema)", r->dir);
    return load_map(r, ps, flat, "ema_map", err);
}

int ckpt_weights_parse(const char *flag, ckpt_weights *w, char *err) {
    *w = !flag ? CKPT_AUTO : strcmp(flag, "ema") == 0 ? CKPT_EMA : CKPT_RAW;
    if (flag && *w == CKPT_RAW && strcmp(flag, "raw") != 0)
        return set_error(err, "--weights %s: expected ema or raw", flag);
    return 0;
}

int ckpt_has_ema(const char *step_dir) {
    char index[CKPT_PATH_LEN], err[ERR_LEN];
    ckpt_join(index, step_dir, CKPT_INDEX);
    cJSON *root = json_read_object(index, err);
    int has = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "ema_map"));
    cJSON_Delete(root);
    return has;
}

int ckpt_load_chosen(const ckpt_reader *r, param_set *ps, ckpt_weights which, ckpt_weights *used, char *err) {
    ckpt_weights w = which == CKPT_AUTO ? (r->has_ema ? CKPT_EMA : CKPT_RAW) : which;
    if (used) *used = w;
    return w == CKPT_EMA ? ckpt_load_ema(r, ps, ps->w, err) : ckpt_load_weights(r, ps, err);
}

int ckpt_load_training(const ckpt_reader *r, param_set *ps, optimizer *o, char *err) {
    float *m, *v;
    optim_host_moments(o, &m, &v, 0);
    int rc = ckpt_load_weights(r, ps, err) || ckpt_load_optim(r, o->off, o->n, m, v, NULL, err) ? -1 : 0;
    optim_host_release(o, m, v, rc == 0);
    if (rc == 0) o->step = r->step;
    return rc;
}

int ckpt_load_optim(const ckpt_reader *r, size_t offset, size_t count, float *m, float *v, float *master, char *err) {
    if (offset > r->numel || count > r->numel - offset)
        return set_error(err, "%s: optimizer range [%zu,%zu) outside its %zu parameters", r->dir, offset,
                         offset + count, r->numel);
    if (master && !r->has_master)
        return set_error(err, "%s: holds no master weights (the weights were the master)", r->dir);
    for (int k = 0; k < r->n_parts; k++) {
        const ckpt_part_file *p = &r->parts[k];
        size_t lo = p->offset > offset ? p->offset : offset;
        size_t hi = p->offset + p->count < offset + count ? p->offset + p->count : offset + count;
        if (lo >= hi) continue;
        size_t src = lo - p->offset, dst = lo - offset, n = hi - lo;
        if (st_read_f32_slice(&p->file, "exp_avg", src, n, m + dst, err) ||
            st_read_f32_slice(&p->file, "exp_avg_sq", src, n, v + dst, err) ||
            (master && st_read_f32_slice(&p->file, "master", src, n, master + dst, err)))
            return -1;
    }
    return 0;
}
