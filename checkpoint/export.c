/* export.c - a step folder consolidated into one inference checkpoint
 * (ckpt.h): config.json, model.safetensors in F32 or BF16 (the weights or
 * their EMA), and the extra files (tokenizer, latent statistics). Works from
 * the index alone, so it needs no model code: the tensors are those of
 * weight_map, in its order. */
#include "ckpt.h"
#include "folder.h"
#include "../common/error.h"
#include "../common/json_file.h"
#include "../common/dir.h"

#include <stdio.h>
#include <string.h>

/* Adds every tensor of weight_map to ps with the shape its file gives
 * (weight_map is in offset order, so a file stays open for its run). */
static int declare_tensors(param_set *ps, const char *dir, const cJSON *wmap, const char *index, char *err) {
    const cJSON *e;
    st_file f = {0};
    char open_name[CKPT_PATH_LEN] = "";
    int rc = 0;
    cJSON_ArrayForEach(e, wmap) {
        const char *file = cJSON_GetStringValue(e);
        if (!file || !ckpt_plain_name(file)) {
            rc = set_error(err, "%s: weight_map['%s']: not a file name", index, e->string);
            break;
        }
        if (strcmp(file, open_name) != 0) {
            char path[CKPT_PATH_LEN];
            st_close(&f);
            ckpt_join(path, dir, file);
            if ((rc = st_open(path, &f, err))) break;
            snprintf(open_name, sizeof open_name, "%s", file);
        }
        const st_tensor *t = st_find(&f, e->string);
        rc = !t ? set_error(err, "%s: tensor '%s' (from weight_map) not found", f.path, e->string)
            : t->ndim > PARAM_MAX_DIMS ? set_error(err, "%s: tensor '%s' has %d dims", f.path, e->string, t->ndim)
            : strlen(e->string) >= sizeof ps->info[0].name
            ? set_error(err, "%s: tensor name '%s' too long", f.path, e->string)
            : 0;
        if (rc) break;
        params_add(ps, e->string, t->ndim, t->shape, 0);
    }
    st_close(&f);
    return rc;
}

int ckpt_export(const char *step_dir, const char *out, st_dtype dtype, ckpt_weights which, ckpt_weights *used,
                char *err) {
    char index[CKPT_PATH_LEN], src[CKPT_PATH_LEN], dst[CKPT_PATH_LEN];
    if (ckpt_verify(step_dir, err)) return -1;
    ckpt_join(index, step_dir, CKPT_INDEX);
    cJSON *root = json_read_object(index, err);
    if (!root) return -1;
    param_set ps = {0};
    ckpt_reader rd = {0};
    int rc = -1;
    const cJSON *wmap = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const cJSON *extras = cJSON_GetObjectItemCaseSensitive(root, "extra_files"), *e;
    if (!cJSON_IsObject(wmap) || (extras && !cJSON_IsArray(extras))) {
        set_error(err, "%s: needs the object weight_map (and extra_files as an array)", index);
        goto out;
    }
    if (declare_tensors(&ps, step_dir, wmap, index, err)) goto out;
    params_alloc(&ps);
    if (ckpt_open(&rd, step_dir, err) || ckpt_load_chosen(&rd, &ps, which, used, err) || make_dir(out, err)) goto out;
    ckpt_join(src, step_dir, CKPT_CONFIG);
    ckpt_join(dst, out, CKPT_CONFIG);
    if (ckpt_copy_file(src, dst, err)) goto out;
    cJSON_ArrayForEach(e, extras) {
        const char *name = cJSON_GetStringValue(e);
        if (!name || !ckpt_plain_name(name)) {
            set_error(err, "%s: extra_files: not a file name", index);
            goto out;
        }
        ckpt_join(src, step_dir, name);
        ckpt_join(dst, out, name);
        if (ckpt_copy_file(src, dst, err)) goto out;
    }
    ckpt_join(dst, out, "model.safetensors");
    rc = params_save_part(&ps, ps.w, dtype, 0, ps.numel, dst, err);
out:
    ckpt_close(&rd);
    params_free(&ps);
    cJSON_Delete(root);
    return rc;
}
