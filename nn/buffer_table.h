/* buffer_table.h - what a device backend knows of its buffers: each
 * allocation's address range and element type, found from any pointer into
 * it, and an optional bfloat16 mirror of a float32 buffer (the copy GEMMs
 * read). Kernels use it to read and write each argument in its buffer's type
 * (kernels.def) and to refuse pointers that are not the backend's. */
#ifndef NN_BUFFER_TABLE_H
#define NN_BUFFER_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef enum { BUF_BF16, BUF_F32, BUF_I32 } buf_type;

typedef struct {
    uintptr_t base;
    size_t n; /* elements */
    buf_type type;
    void *mirror; /* BUF_F32 only: bfloat16 copy of n elements, or NULL */
} buf_entry;

typedef struct {
    buf_entry *e; /* sorted by base */
    int n, cap;
} buf_table;

size_t buf_type_size(buf_type t);
void buf_table_add(buf_table *t, const void *base, size_t n, buf_type type);
/* Removes the entry that starts at base and returns it (zeroed if none). */
buf_entry buf_table_remove(buf_table *t, const void *base);
/* The entry whose range holds p, or NULL. */
buf_entry *buf_table_find(const buf_table *t, const void *p);
/* Element index of p in e (p must lie in e). */
size_t buf_index(const buf_entry *e, const void *p);
void buf_table_free(buf_table *t);

#endif
