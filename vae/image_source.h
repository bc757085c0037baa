/* image_source.h - image-caption samples from WebDataset tar shards or plain
 * folders, decoded to RGB, center-cropped and resized to a square.
 *
 * A source is a list of inputs, each a tar shard (`*.tar`) or a folder,
 * holding pairs KEY.{webp,png,jpg,jpeg} + KEY.txt (caption) and optionally
 * KEY.json. Inputs are given as a comma-separated list of paths or globs.
 * Bad samples never stop a run: each is skipped with one log line on stderr
 * naming the input and the key and the reason, and counted by reason. */
#ifndef VAE_IMAGE_SOURCE_H
#define VAE_IMAGE_SOURCE_H

#include "../common/error.h"

#include <stddef.h>

/* Why a sample was skipped (see image_source.c for the exact rules). */
typedef enum {
    SKIP_CORRUPT_IMAGE, /* truncated or undecodable image data */
    SKIP_NOT_AN_IMAGE,  /* unknown or mismatching format, empty file */
    SKIP_TOO_LARGE,     /* header claims more than 16384 pixels a side */
    SKIP_NO_CAPTION,    /* missing or empty (whitespace only) caption */
    SKIP_BAD_UTF8,      /* caption is not valid UTF-8 */
    SKIP_DUPLICATE_KEY, /* key already seen in this source */
    SKIP_UNSAFE_NAME,   /* tar member name with ".." or an absolute path */
    SKIP_NO_IMAGE,      /* caption without an image */
    SKIP_REASONS
} skip_reason;

const char *skip_reason_name(skip_reason r);

typedef struct {
    char *key;     /* sample key (file name without extension) */
    char *caption; /* UTF-8, trimmed */
    char *json;    /* KEY.json contents or NULL */
    int size;      /* the square side */
    float *rgb;    /* [3, size, size], values in [-1, 1] */
} image_sample;

typedef struct image_source image_source;

/* Expands the comma-separated list of paths/globs (sorted, so every run sees
 * the same order) into inputs. rank/nranks select every nranks-th input
 * starting at rank (1 process: 0, 1). Fails (exit-2 class error in err) when
 * a path matches nothing. */
image_source *image_source_open(const char *spec, int size, int rank, int nranks, char *err);

int image_source_count_inputs(const image_source *s);
const char *image_source_input_path(const image_source *s, int i);
/* Restricts iteration to input i only (encode writes one latent shard per
 * input shard). i = -1 iterates over all selected inputs. */
void image_source_select(image_source *s, int i);

/* Next good sample: 1 when one was read, 0 at the end. The sample is valid
 * until the next call. */
int image_source_next(image_source *s, image_sample *out);

/* Samples returned, and skipped per reason, so far. */
long image_source_good(const image_source *s);
long image_source_skipped(const image_source *s, skip_reason r);
/* Writes "N good, M skipped (reason: k, ...)" into buf. */
void image_source_summary(const image_source *s, char *buf, size_t len);

void image_source_close(image_source *s);

#endif
