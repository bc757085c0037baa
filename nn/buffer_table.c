/* buffer_table.c - sorted table of a backend's allocations (buffer_table.h). */
#include "buffer_table.h"
#include "../common/error.h"

#include <stdlib.h>
#include <string.h>

size_t buf_type_size(buf_type t) { return t == BUF_BF16 ? 2 : 4; }

/* First entry whose base is above p. */
static int upper(const buf_table *t, uintptr_t p) {
    int a = 0, b = t->n;
    while (a < b) {
        int m = (a + b) / 2;
        if (t->e[m].base <= p)
            a = m + 1;
        else
            b = m;
    }
    return a;
}

void buf_table_add(buf_table *t, const void *base, size_t n, buf_type type) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->e = realloc(t->e, sizeof(buf_entry) * t->cap);
        if (!t->e) die("out of memory (buffer table of %d entries)", t->cap);
    }
    int k = upper(t, (uintptr_t)base);
    memmove(t->e + k + 1, t->e + k, sizeof(buf_entry) * (t->n - k));
    t->e[k] = (buf_entry){(uintptr_t)base, n, type, NULL};
    t->n++;
}

buf_entry buf_table_remove(buf_table *t, const void *base) {
    buf_entry out = {0};
    int k = upper(t, (uintptr_t)base) - 1;
    if (k < 0 || t->e[k].base != (uintptr_t)base) return out;
    out = t->e[k];
    memmove(t->e + k, t->e + k + 1, sizeof(buf_entry) * (t->n - k - 1));
    t->n--;
    return out;
}

buf_entry *buf_table_find(const buf_table *t, const void *p) {
    int k = upper(t, (uintptr_t)p) - 1;
    if (k < 0) return NULL;
    buf_entry *e = &t->e[k];
    size_t bytes = (e->n ? e->n : 1) * buf_type_size(e->type);
    return (uintptr_t)p < e->base + bytes ? e : NULL;
}

size_t buf_index(const buf_entry *e, const void *p) { return ((uintptr_t)p - e->base) / buf_type_size(e->type); }

void buf_table_free(buf_table *t) {
    free(t->e);
    memset(t, 0, sizeof *t);
}
