/* batch_file.h - writing a batch file (docs/model.md section 7): the one
 * place that spells its tensors, for `trainer` (batch_save) and `dataloader
 * inspect --dump`. */
#ifndef COMMON_BATCH_FILE_H
#define COMMON_BATCH_FILE_H

#include "safetensors.h"

#include <stdint.h>

/* The caller's arrays: B rows of L positions, n images of C x h x w. */
typedef struct {
    int B, L, n_images, C, h, w;
    const int32_t *tokens, *modality, *doc, *image; /* [B, L] */
    const float *latents, *noise;                   /* [n_images, C, h, w] */
    const int32_t *timesteps;                       /* [n_images] */
} batch_file;

/* Writes the seven tensors and then `extra` ones (a dump's own), atomically. */
int batch_file_write(const char *path, const batch_file *b, const st_entry *extra, int n_extra, char *err);

#endif
