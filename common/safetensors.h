/* safetensors.h - read and write the safetensors format (checkpoints, batch
 * files, gradients, and later latent shards).
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {...}}, then the data section. Offsets are relative to
 * the start of the data section.
 *
 * Every function that can fail on bad input returns non-zero and writes a
 * one-line message into err (ERR_LEN bytes, see error.h) that names the file
 * and the tensor or field; command-line tools print it and exit with 2. */
#ifndef COMMON_SAFETENSORS_H
#define COMMON_SAFETENSORS_H

#include "error.h"

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum { ST_F32, ST_BF16, ST_F16, ST_I32, ST_I64, ST_U8 } st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t begin, end; /* byte range within the data section */
} st_tensor;

typedef struct {
    char *path;         /* copy of the path, for messages */
    const uint8_t *buf; /* whole file (mmap'ed by st_open) */
    size_t size;
    size_t data_start; /* 8 + header length */
    int n;
    st_tensor *tensors;
    int mapped; /* 1 when buf is an mmap owned by this struct */
} st_file;

/* Parses and validates the header of an in-memory file image. Checks: the
 * header length fits the buffer, the JSON parses, every entry has a known
 * dtype, a shape of non-negative dims, and data_offsets inside the data
 * section whose length equals prod(shape) * dtype size. buf must outlive f. */
int st_parse(const uint8_t *buf, size_t size, const char *path, st_file *f, char *err);

/* mmaps path and parses it. */
int st_open(const char *path, st_file *f, char *err);
void st_close(st_file *f);

const st_tensor *st_find(const st_file *f, const char *name);
size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);

/* Copies tensor `name` into dst as float32 (F32 as is, BF16 widened), after
 * checking that it exists and has exactly the given shape. */
int st_read_f32(const st_file *f, const char *name, int ndim, const int64_t *shape, float *dst, char *err);
/* Copies elements [begin, begin + count) of F32 tensor `name`, taken as a
 * flat array whatever its shape, into dst (optimizer state read back by flat
 * offset ranges). */
int st_read_f32_slice(const st_file *f, const char *name, size_t begin, size_t count, float *dst, char *err);
/* Same for I32 tensors (no conversion). */
int st_read_i32(const st_file *f, const char *name, int ndim, const int64_t *shape, int32_t *dst, char *err);

/* float32 -> bfloat16 with round-to-nearest-even (as PyTorch's .to(bfloat16));
 * NaN stays a (quiet) NaN of the same sign. */
void st_f32_to_bf16(const float *src, uint16_t *dst, size_t n);
/* bfloat16 (n values at src, any alignment) -> float32, exactly. */
void st_bf16_to_f32(const void *src, float *dst, size_t n);

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_entry;

/* Writes a complete file atomically: path.tmp.<pid>, fsync, rename, fsync of
 * the directory. Never leaves a half-written file under path. */
int st_write(const char *path, const st_entry *entries, int n, char *err);

#endif
