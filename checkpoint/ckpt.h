/* ckpt.h - sharded, atomic training checkpoints with exact resume.
 *
 * A run's checkpoint folder DIR holds one complete folder per save and a
 * symlink to the newest:
 *
 *   DIR/step_00000020/
 *       config.json                          model config (special token ids included)
 *       model-00001-of-00002.safetensors     weights, split across the ranks (F32)
 *       model-00002-of-00002.safetensors
 *       model.safetensors.index.json         weight_map (Hugging Face convention),
 *                                            optimizer parts, CRC32C of every file
 *       optimizer-00001-of-00002.safetensors a rank's Adam state: exp_avg, exp_avg_sq
 *       optimizer-00002-of-00002.safetensors (and master) for its flat range
 *       trainer_state.json                   the caller's state plus step, world_size
 *       tokenizer.model, ...                 extra files copied in by the caller
 *   DIR/latest -> step_00000020
 *
 * Weights: rank r of N writes the tensors whose first element lies in
 * dist_part(numel, r, N) of the flat parameter array (nn/dist.h), so every
 * tensor is written once, whole. Optimizer state: each rank writes the flat
 * range it owns (ZeRO-1), and a reader asks for any range: the state is
 * resharded for another world size on load.
 *
 * Atomicity: every rank writes into DIR/.tmp-step_XXXXXXXX; once all ranks
 * report success, rank 0 writes the index (last), fsyncs, renames the folder
 * into place and then replaces DIR/latest by a rename. A folder named step_*
 * is therefore always complete; dot-folders are leftovers and are removed by
 * the next save.
 *
 * DIR must be one file system that every rank sees (rank 0 renames what all
 * ranks wrote).
 *
 * Every function here is collective under MPI (nn/dist.h) unless it says it
 * is not: all ranks call it, and all ranks get the same result. Failures
 * return non-zero with a one-line message in err (ERR_LEN) naming the file. */
#ifndef CHECKPOINT_CKPT_H
#define CHECKPOINT_CKPT_H

#include "../common/config.h"
#include "../common/safetensors.h"
#include "../nn/params.h"

#include <cjson/cJSON.h>
#include <stddef.h>

/* A file copied into the checkpoint (tokenizer model, latent statistics). */
typedef struct {
    const char *name;           /* file name inside the step folder */
    const char *path;           /* where to copy it from */
} ckpt_extra;

typedef struct {
    const param_set *ps;        /* names and shapes; full weights ps->w on every rank */
    const model_config *cfg;    /* written as config.json */
    long step;                  /* optimizer steps taken: names the folder */
    size_t opt_offset, opt_count;   /* this rank's range of the flat array */
    const float *m, *v;         /* Adam moments of that range (opt_count floats) */
    const float *master;        /* master weights of the range; NULL when ps->w is the master */
    const cJSON *state;         /* trainer_state.json (rank 0's is written; "step" and
                                   "world_size" are set by the save) */
    const ckpt_extra *extras;   /* rank 0's are copied */
    int n_extras;
    int keep, keep_every;       /* retention: the newest `keep` plus every step that is a
                                   multiple of keep_every survive; 0 turns either off */
} ckpt_save_request;

/* Writes DIR/step_XXXXXXXX atomically (see above), points DIR/latest at it,
 * then applies the retention. On failure the temp folder is removed and the
 * previous checkpoints and DIR/latest are untouched. */
int ckpt_save(const char *dir, const ckpt_save_request *r, char *err);

/* Checks one step folder, on this rank only (not collective): the index
 * parses, and every file it lists exists with its recorded size and CRC32C
 * (config.json, trainer_state.json, the weight and optimizer files among
 * them). The message names the first bad file. */
int ckpt_verify(const char *step_dir, char *err);

/* Chooses the checkpoint to resume from. spec "auto": the newest step folder
 * of dir that verifies; each one that does not is reported on stderr (one
 * line naming the file) and skipped for the one before. Returns 1 when dir
 * holds no checkpoint at all (a fresh start), -1 when it holds some and none
 * verifies. Any other spec is a step folder that must verify (-1 otherwise).
 * On 0, path (len bytes) is the chosen folder. Rank 0 checks the files. */
int ckpt_resolve(const char *dir, const char *spec, char *path, size_t len, char *err);

typedef struct {
    size_t offset, count;
    st_file file;
} ckpt_part_file;

typedef struct {
    char *dir;
    long step;
    int world_size;             /* ranks that wrote it */
    size_t numel;               /* floats of the flat parameter array */
    int has_master;             /* master weights were saved */
    model_config cfg;
    cJSON *state;               /* trainer_state.json */
    int n_parts;
    ckpt_part_file *parts;      /* optimizer parts, sorted by offset, tiling [0, numel) */
} ckpt_reader;

/* Opens a step folder (checked with ckpt_verify or ckpt_resolve) on this
 * rank: config, trainer state, index and optimizer parts. Not collective. */
int ckpt_open(ckpt_reader *r, const char *step_dir, char *err);
void ckpt_close(ckpt_reader *r);

/* Every tensor of ps, by name and shape, into ps->w. */
int ckpt_load_weights(const ckpt_reader *r, param_set *ps, char *err);

/* The Adam state of flat range [offset, offset + count), whatever ranges the
 * writers owned. master may be NULL; when given, the checkpoint must hold
 * master weights. */
int ckpt_load_optim(const ckpt_reader *r, size_t offset, size_t count, float *m, float *v,
                    float *master, char *err);

/* One consolidated inference checkpoint from a step folder: out/config.json,
 * out/model.safetensors as F32 or BF16 (round to nearest even), and the extra
 * files. The step folder must verify. Not collective. */
int ckpt_export(const char *step_dir, const char *out, st_dtype dtype, char *err);

#endif
