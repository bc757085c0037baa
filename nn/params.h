/* params.h - a model's parameters as one flat array: a table of named
 * tensors (name, shape, offset), the weights, and gradients of the same
 * layout. Models (trainer/model.c, vae/vae.c) declare their tensors
 * here; the optimizer, gradient all-reduce and checkpoint I/O then work on
 * whole buffers without knowing the model. */
#ifndef NN_PARAMS_H
#define NN_PARAMS_H

#include "../common/safetensors.h"

#include <stddef.h>
#include <stdint.h>

#define PARAM_MAX_DIMS 4

typedef struct {
    char name[112];
    int ndim;
    int64_t shape[PARAM_MAX_DIMS];
    size_t offset, numel;
    int decay; /* 1: AdamW weight decay applies */
} param_info;

typedef struct {
    int n, cap;
    param_info *info;
    size_t numel; /* total floats */
    float *w, *g; /* weights, gradients (flat), after params_alloc */
} param_set;

/* Told during backward that the gradients of flat elements [off, off + n)
 * are final (each element once per backward), so that data-parallel
 * training (data_parallel.h) can start reducing them while the rest of
 * backward runs. ready == NULL: nobody listens. */
typedef struct {
    void (*ready)(void *ctx, size_t off, size_t n);
    void *ctx;
} grad_hook;

/* Appends a tensor; returns its offset in the flat arrays. */
size_t params_add(param_set *ps, const char *name, int ndim, const int64_t *shape, int decay);
/* Allocates zeroed weights and gradients once every tensor is added. */
void params_alloc(param_set *ps);
void params_free(param_set *ps);
const param_info *params_find(const param_set *ps, const char *name);

/* The index of a sharded folder (the Hugging Face convention): its
 * weight_map names the file of each tensor. */
#define PARAMS_INDEX "model.safetensors.index.json"

/* Reads every tensor, by name, into ps->w from the *.safetensors files in
 * dir (F32 or BF16, shapes checked); in a sharded folder (one with
 * PARAMS_INDEX) from the files its weight_map names only, since a training
 * checkpoint also holds other files with the same tensor names (the EMA).
 * Errors name the file or folder and the tensor. */
int params_load_dir(param_set *ps, const char *dir, char *err);
/* Reads every tensor into flat (numel floats) from the file that the object
 * `map` of dir's PARAMS_INDEX names for it ("weight_map", or a checkpoint's
 * "ema_map"). */
int params_load_map(const param_set *ps, float *flat, const char *dir, const char *map, char *err);
/* Writes a parameter-shaped flat array (weights or gradients) as F32. */
int params_save(const param_set *ps, const float *flat, const char *path, char *err);
/* Writes the tensors whose first element lies in [offset, offset + count) of
 * the flat array (a rank's shard of a checkpoint; all of them for 0, numel),
 * as ST_F32 or ST_BF16 (rounded to nearest even: exported inference weights).
 * flat holds the elements from offset on: flat[0] is element offset, and
 * the chosen tensors must end within it. */
int params_save_part(const param_set *ps, const float *flat, st_dtype dtype, size_t offset, size_t count,
                     const char *path, char *err);

#endif
