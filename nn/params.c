/* params.c - the flat parameter table (params.h) and its safetensors I/O. */
#include "params.h"
#include "cpu/cpu.h"
#include "../common/error.h"
#include "../common/json_file.h"
#include "../common/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

size_t params_add(param_set *ps, const char *name, int ndim, const int64_t *shape, int decay) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 64;
        ps->info = realloc(ps->info, sizeof(param_info) * ps->cap);
        if (!ps->info) die("out of memory");
    }
    param_info *p = &ps->info[ps->n++];
    memset(p, 0, sizeof *p);
    if (snprintf(p->name, sizeof p->name, "%s", name) >= (int)sizeof p->name) die("parameter name too long: %s", name);
    p->ndim = ndim;
    p->numel = 1;
    /* Sizes come from a config: each may pass its own check while their
     * product wraps, which would allocate a few bytes for a huge model. */
    for (int k = 0; k < ndim; k++) {
        p->shape[k] = shape[k];
        if (shape[k] < 0 || __builtin_mul_overflow(p->numel, (size_t)shape[k], &p->numel))
            die_input("parameter %s: its shape's element count overflows", name);
    }
    p->offset = ps->numel;
    p->decay = decay;
    if (__builtin_add_overflow(ps->numel, p->numel, &ps->numel))
        die_input("parameter %s: the model's element count overflows", name);
    return p->offset;
}

/* Refused as bad input before any allocation: a model whose weights and
 * gradients alone exceed the machine's memory. */
static void check_fits(const param_set *ps) {
    double need = 2.0 * sizeof(float) * (double)ps->numel;
    double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (have > 0 && need > have)
        die_input("a model of %zu parameters needs %.1f GB for its weights and gradients, more than this machine's "
                  "%.1f GB of memory",
                  ps->numel, need / 1e9, have / 1e9);
}

void params_alloc(param_set *ps) {
    check_fits(ps);
    ps->w = cpu_alloc_f32(ps->numel); /* host memory whatever the backend */
    ps->g = cpu_alloc_f32(ps->numel);
}

void params_free(param_set *ps) {
    cpu_free(ps->w);
    cpu_free(ps->g);
    free(ps->info);
    memset(ps, 0, sizeof *ps);
}

const param_info *params_find(const param_set *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (strcmp(ps->info[i].name, name) == 0) return &ps->info[i];
    return NULL;
}

int params_save(const param_set *ps, const float *flat, const char *path, char *err) {
    return params_save_part(ps, flat, ST_F32, 0, ps->numel, path, err);
}

int params_save_part(const param_set *ps, const float *flat, st_dtype dtype, size_t offset, size_t count,
                     const char *path, char *err) {
    if (dtype != ST_F32 && dtype != ST_BF16)
        return set_error(err, "%s: weights are written as F32 or BF16, not %s", path, st_dtype_name(dtype));
    st_entry *e = xcalloc(ps->n ? ps->n : 1, sizeof(st_entry));
    size_t end = 0; /* the floats of flat the chosen tensors span */
    int n = 0;
    for (int i = 0; i < ps->n; i++) {
        const param_info *p = &ps->info[i];
        if (p->offset < offset || p->offset - offset >= count) continue;
        e[n].name = p->name;
        e[n].dtype = dtype;
        e[n].ndim = p->ndim;
        memcpy(e[n].shape, p->shape, sizeof(int64_t) * p->ndim);
        e[n].data = flat + (p->offset - offset);
        n++;
        if (p->offset + p->numel - offset > end) end = p->offset + p->numel - offset;
    }
    uint16_t *half = NULL;
    if (dtype == ST_BF16 && n > 0) {
        half = xmalloc(sizeof(uint16_t) * end);
        st_f32_to_bf16(flat, half, end);
        for (int i = 0; i < n; i++) e[i].data = half + ((const float *)e[i].data - flat);
    }
    int rc = st_write(path, e, n, err);
    free(e);
    free(half);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int params_load_map(const param_set *ps, float *flat, const char *dir, const char *map, char *err) {
    char index[4096], path[4096], open_name[256] = "";
    snprintf(index, sizeof index, "%s/%s", dir, PARAMS_INDEX);
    cJSON *root = json_read_object(index, err);
    if (!root) return -1;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, map);
    st_file f = {0};
    int rc = cJSON_IsObject(m) ? 0 : set_error(err, "%s: no object %s", index, map);
    /* The map is in offset order, so a file stays open for its run of tensors. */
    for (int i = 0; i < ps->n && rc == 0; i++) {
        const param_info *p = &ps->info[i];
        const char *file = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, p->name));
        if (!file || !file[0] || strchr(file, '/') || strlen(file) >= sizeof open_name) {
            rc = set_error(err, "%s: %s['%s']: missing, or not a file name", index, map, p->name);
            break;
        }
        if (strcmp(file, open_name) != 0) {
            st_close(&f);
            open_name[0] = '\0';
            snprintf(path, sizeof path, "%s/%s", dir, file);
            if ((rc = st_open(path, &f, err))) break;
            snprintf(open_name, sizeof open_name, "%s", file);
        }
        rc = st_read_f32(&f, p->name, p->ndim, p->shape, flat + p->offset, err);
    }
    st_close(&f);
    cJSON_Delete(root);
    return rc;
}

int params_load_dir(param_set *ps, const char *dir, char *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, PARAMS_INDEX);
    if (access(path, F_OK) == 0) return params_load_map(ps, ps->w, dir, "weight_map", err);
    DIR *dh = opendir(dir);
    if (!dh) return set_error(err, "%s: cannot open folder: %s", dir, strerror(errno));
    int nf = 0, cap = 4, rc = -1;
    st_file *files = xcalloc(cap, sizeof(st_file));
    struct dirent *de;
    while ((de = readdir(dh))) {
        if (!ends_with(de->d_name, ".safetensors")) continue;
        if (nf == cap) files = realloc(files, sizeof(st_file) * (cap *= 2));
        if (!files) die("out of memory");
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (st_open(path, &files[nf], err)) goto out;
        nf++;
    }
    if (nf == 0) {
        set_error(err, "%s: no *.safetensors weights", dir);
        goto out;
    }
    for (int i = 0; i < ps->n; i++) {
        const param_info *p = &ps->info[i];
        int k = 0;
        while (k < nf && !st_find(&files[k], p->name)) k++;
        if (k == nf) {
            set_error(err, "%s: tensor '%s': missing from every *.safetensors file", dir, p->name);
            goto out;
        }
        if (st_read_f32(&files[k], p->name, p->ndim, p->shape, ps->w + p->offset, err)) goto out;
    }
    rc = 0;
out:
    for (int k = 0; k < nf; k++) st_close(&files[k]);
    free(files);
    closedir(dh);
    return rc;
}
