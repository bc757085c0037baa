/* ckpt.h - sharded, atomic training checkpoints with exact resume.
 *
 * A run's checkpoint folder DIR holds one complete folder per save and a
 * symlink to the newest:
 *
 *   DIR/step_00000020/
 *       config.json                          the model's config, as the caller gives it
 *       model-00001-of-00002.safetensors     weights, split across the ranks (F32)
 *       model-00002-of-00002.safetensors
 *       model.safetensors.index.json         weight_map (Hugging Face convention),
 *                                            optimizer parts, CRC32C of every file
 *       optimizer-00001-of-00002.safetensors a rank's Adam state: exp_avg, exp_avg_sq
 *       optimizer-00002-of-00002.safetensors (and master) for its flat range
 *       ema-00001-of-00002.safetensors       the weights' moving average (--ema): the
 *       ema-00002-of-00002.safetensors       weights' tensor names, split as they are
 *       trainer_state.json                   the caller's state plus step, world_size
 *       tokenizer.model, ...                 extra files copied in by the caller
 *   DIR/latest -> step_00000020
 *
 * Weights: rank r of N writes the tensors whose first element lies in
 * dist_part(numel, r, N) of the flat parameter array (nn/dist.h), so every
 * tensor is written once, whole. The EMA, when the run keeps one, is split
 * the same way (the index's ema_map, beside weight_map). Optimizer state:
 * each rank writes the flat range it owns (ZeRO-1), and a reader asks for
 * any range: the state is resharded for another world size on load.
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

#include "../common/safetensors.h"
#include "../nn/optim.h"
#include "../nn/params.h"

#include <cjson/cJSON.h>
#include <stddef.h>

/* A file copied into the checkpoint (tokenizer model, latent statistics). */
typedef struct {
    const char *name; /* file name inside the step folder */
    const char *path; /* where to copy it from */
} ckpt_extra;

typedef struct {
    const param_set *ps;          /* names and shapes; full weights ps->w on every rank */
    const cJSON *config;          /* the model's config, written as config.json */
    long step;                    /* optimizer steps taken: names the folder */
    size_t opt_offset, opt_count; /* this rank's range of the flat array */
    const float *m, *v;           /* Adam moments of that range (opt_count floats) */
    const float *master;          /* master weights of the range; NULL when ps->w is the master */
    const float *ema;             /* the EMA of this rank's shard: ckpt_shard_range's floats, ema[0]
                                   averaging element `offset`; NULL on every rank: none */
    const cJSON *state;           /* trainer_state.json (rank 0's is written; "step" and
                                   "world_size" are set by the save) */
    const ckpt_extra *extras;     /* rank 0's are copied */
    int n_extras;
    int keep, keep_every; /* retention: the newest `keep` plus every step that is a
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
    int world_size; /* ranks that wrote it */
    size_t numel;   /* floats of the flat parameter array */
    int has_master; /* master weights were saved */
    int has_ema;    /* the weights' EMA was saved (ema_map) */
    cJSON *config;  /* config.json (the caller checks it) */
    cJSON *state;   /* trainer_state.json */
    int n_parts;
    ckpt_part_file *parts; /* optimizer parts, sorted by offset, tiling [0, numel) */
} ckpt_reader;

/* Opens a step folder (checked with ckpt_verify or ckpt_resolve) on this
 * rank: config, trainer state, index and optimizer parts. Not collective. */
int ckpt_open(ckpt_reader *r, const char *step_dir, char *err);
void ckpt_close(ckpt_reader *r);

/* Every tensor of ps, by name and shape, into ps->w. */
int ckpt_load_weights(const ckpt_reader *r, param_set *ps, char *err);

/* The EMA of every tensor of ps into flat (ps->numel floats; ps->w to
 * sample with it). The checkpoint must hold one (r->has_ema). */
int ckpt_load_ema(const ckpt_reader *r, const param_set *ps, float *flat, char *err);

/* The flat range [*offset, *offset + *count) of the tensors in rank's
 * weight shard (those whose first element lies in dist_part(numel, rank,
 * size)): the part of the weights whose EMA that rank keeps and saves. */
void ckpt_shard_range(const param_set *ps, int rank, int size, size_t *offset, size_t *count);

/* For readers (export, sampling, evaluation): which weights to use,
 * `--weights ema|raw`. CKPT_AUTO (the flag not given) is the EMA when the
 * checkpoint has one, else the weights. */
typedef enum { CKPT_AUTO, CKPT_RAW, CKPT_EMA } ckpt_weights;

/* "ema" or "raw" into *w, NULL into CKPT_AUTO; anything else is -1 with a
 * message in err. Not collective. */
int ckpt_weights_parse(const char *flag, ckpt_weights *w, char *err);

/* 1 when the step folder holds an EMA (its index has an ema_map), else 0.
 * Not collective. */
int ckpt_has_ema(const char *step_dir);

/* ckpt_load_weights or ckpt_load_ema into ps->w, as `which` says; *used (may
 * be NULL) is set to what was loaded, CKPT_RAW or CKPT_EMA. CKPT_EMA on a
 * checkpoint without an EMA is an error. */
int ckpt_load_chosen(const ckpt_reader *r, param_set *ps, ckpt_weights which, ckpt_weights *used, char *err);

/* Resuming a training run: the weights into ps->w, this rank's part of the
 * Adam state into o (its moments for o's range, on its device) and the step
 * into o->step. */
int ckpt_load_training(const ckpt_reader *r, param_set *ps, optimizer *o, char *err);

/* The Adam state of flat range [offset, offset + count), whatever ranges the
 * writers owned. master may be NULL; when given, the checkpoint must hold
 * master weights. */
int ckpt_load_optim(const ckpt_reader *r, size_t offset, size_t count, float *m, float *v, float *master, char *err);

/* One consolidated inference checkpoint from a step folder: out/config.json,
 * out/model.safetensors as F32 or BF16 (round to nearest even) holding the
 * weights `which` chooses (ckpt_load_chosen; *used says which), and the
 * extra files. The step folder must verify. Not collective. */
int ckpt_export(const char *step_dir, const char *out, st_dtype dtype, ckpt_weights which, ckpt_weights *used,
                char *err);

#endif
