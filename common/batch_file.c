/* batch_file.c - writing a batch file (batch_file.h). */
#include "batch_file.h"

#define BATCH_TENSORS 7
#define MAX_EXTRA 8

int batch_file_write(const char *path, const batch_file *b, const st_entry *extra, int n_extra, char *err) {
    if (n_extra > MAX_EXTRA) return set_error(err, "%s: %d extra tensors, at most %d", path, n_extra, MAX_EXTRA);
    st_entry e[BATCH_TENSORS + MAX_EXTRA] = {
        {"tokens", ST_I32, 2, {b->B, b->L}, b->tokens},
        {"modality", ST_I32, 2, {b->B, b->L}, b->modality},
        {"doc", ST_I32, 2, {b->B, b->L}, b->doc},
        {"image", ST_I32, 2, {b->B, b->L}, b->image},
        {"latents", ST_F32, 4, {b->n_images, b->C, b->h, b->w}, b->latents},
        {"noise", ST_F32, 4, {b->n_images, b->C, b->h, b->w}, b->noise},
        {"timesteps", ST_I32, 1, {b->n_images}, b->timesteps},
    };
    for (int k = 0; k < n_extra; k++) e[BATCH_TENSORS + k] = extra[k];
    return st_write(path, e, BATCH_TENSORS + n_extra, err);
}
