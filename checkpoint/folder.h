/* folder.h - the file names of a checkpoint folder and the file-system steps
 * the checkpoint code shares: listing step folders, copying a file in,
 * removing a folder, syncing a directory. Internal to checkpoint/. */
#ifndef CHECKPOINT_FOLDER_H
#define CHECKPOINT_FOLDER_H

#include "../nn/params.h"

#include <cjson/cJSON.h>
#include <stddef.h>

#define CKPT_INDEX PARAMS_INDEX
#define CKPT_CONFIG "config.json"
#define CKPT_STATE "trainer_state.json"
#define CKPT_INDEX_SUM "index.crc32c" /* "CRC32C BYTES" of the index: written last, so every file is checksummed */
#define CKPT_STEP_PREFIX "step_"         /* complete folders: step_ and the step in 8 digits */
#define CKPT_TMP_PREFIX ".tmp-step_"     /* being written */
#define CKPT_TRASH_PREFIX ".trash-step_" /* being deleted */
#define CKPT_PATH_LEN 4096

/* buf (CKPT_PATH_LEN) = dir/name; a longer path stops the program. */
void ckpt_join(char *buf, const char *dir, const char *name);

/* buf (CKPT_PATH_LEN) = dir/<prefix><step as 8 digits>. */
void ckpt_step_path(char *buf, const char *dir, const char *prefix, long step);

/* The steps of dir's complete folders (step_ followed by digits only), in
 * ascending order; *steps is malloc'ed (free it). Returns the count, 0 when
 * dir does not exist, -1 (err) when it cannot be read. */
int ckpt_list_steps(const char *dir, long **steps, char *err);

/* Removes the .tmp-step_* and .trash-step_* folders that interrupted saves
 * and deletions left in dir. */
int ckpt_remove_leftovers(const char *dir, char *err);

/* rm -rf path (no symlinks followed). */
int ckpt_remove_tree(const char *path, char *err);

/* Copies src to dst atomically (common/atomic_file.h). */
int ckpt_copy_file(const char *src, const char *dst, char *err);

/* fsync of a directory, so that renames inside it are durable. */
int ckpt_sync_dir(const char *dir, char *err);

/* obj[key] as an exact non-negative integer (JSON numbers are doubles). */
int ckpt_json_size(const cJSON *obj, const char *key, size_t *out);

/* A file name that stays inside the folder: no '/', not "." or "..". */
int ckpt_plain_name(const char *name);

#endif
