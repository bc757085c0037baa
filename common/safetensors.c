/* safetensors.c - reading (mmap + validated header) and atomic writing of the
 * safetensors format described in safetensors.h.
 *
 * Byte order: the format is little-endian, and so is every machine this
 * project targets (x86-64), so the header length and the tensor data are
 * copied as they are, never byte-swapped. A big-endian port would have to
 * swap in st_parse, the st_read_* functions and st_write. */
#include "safetensors.h"
#include "atomic_file.h"
#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(float) == 4, "float must be IEEE binary32");

/* JSON numbers are doubles: integers beyond 2^53 are not exact, so a shape
 * or an offset that large cannot be trusted. */
#define JSON_MAX_EXACT_INT 9007199254740992.0

static const char *const dtype_names[] = {
    [ST_F32] = "F32", [ST_BF16] = "BF16", [ST_F16] = "F16", [ST_I32] = "I32", [ST_I64] = "I64", [ST_U8] = "U8",
};
#define N_DTYPES ((int)(sizeof dtype_names / sizeof dtype_names[0]))

size_t st_dtype_size(st_dtype t) {
    switch (t) {
        case ST_F32:
        case ST_I32: return 4;
        case ST_BF16:
        case ST_F16: return 2;
        case ST_I64: return 8;
        case ST_U8: return 1;
    }
    return 0;
}

const char *st_dtype_name(st_dtype t) { return (int)t >= 0 && (int)t < N_DTYPES ? dtype_names[t] : "?"; }

static int dtype_from_name(const char *s, st_dtype *t) {
    for (int i = 0; i < N_DTYPES; i++) {
        if (strcmp(s, dtype_names[i]) == 0) {
            *t = (st_dtype)i;
            return 1;
        }
    }
    return 0;
}

/* Size in bytes of a tensor; -1 when prod(shape) * dtype size overflows. */
static int tensor_bytes(st_dtype t, int ndim, const int64_t *shape, uint64_t *bytes) {
    uint64_t n = st_dtype_size(t);
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n)) return -1;
    *bytes = n;
    return 0;
}

/* "[10,4]"; an over-long shape is cut short rather than overflowing buf. */
static const char *shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (len < size) snprintf(buf + len, size - len, "]");
    return buf;
}

/* A JSON number that is an exact non-negative integer. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= JSON_MAX_EXACT_INT) || (double)(uint64_t)d != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int parse_entry(const cJSON *e, const char *path, size_t data_len, st_tensor *t, char *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e)) {
        set_error(err, "%s: tensor '%s': entry is not an object", path, name);
        return -1;
    }

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt)) {
        set_error(err, "%s: tensor '%s': dtype missing or not a string", path, name);
        return -1;
    }
    if (!dtype_from_name(dt->valuestring, &t->dtype)) {
        set_error(err, "%s: tensor '%s': unknown dtype '%s'", path, name, dt->valuestring);
        return -1;
    }

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(shape)) {
        set_error(err, "%s: tensor '%s': shape missing or not an array", path, name);
        return -1;
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS) {
        set_error(err, "%s: tensor '%s': shape has %d dims, at most %d are supported", path, name, ndim, ST_MAX_DIMS);
        return -1;
    }
    const cJSON *dim;
    t->ndim = 0;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t v;
        if (cJSON_IsNumber(dim) && dim->valuedouble < 0) {
            set_error(err, "%s: tensor '%s': shape dim %d is negative", path, name, t->ndim);
            return -1;
        }
        if (!json_uint(dim, &v)) {
            set_error(err, "%s: tensor '%s': shape dim %d is not an integer", path, name, t->ndim);
            return -1;
        }
        t->shape[t->ndim++] = (int64_t)v;
    }
    uint64_t nbytes;
    char sbuf[256];
    if (tensor_bytes(t->dtype, t->ndim, t->shape, &nbytes) != 0) {
        set_error(err, "%s: tensor '%s': shape %s overflows", path, name,
                  shape_str(sbuf, sizeof sbuf, t->ndim, t->shape));
        return -1;
    }

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &begin) ||
        !json_uint(off->child->next, &end)) {
        set_error(err, "%s: tensor '%s': data_offsets missing or not two non-negative integers", path, name);
        return -1;
    }
    if (begin > end) {
        set_error(err, "%s: tensor '%s': data_offsets [%llu,%llu] begin after end", path, name,
                  (unsigned long long)begin, (unsigned long long)end);
        return -1;
    }
    if (end > data_len) {
        set_error(err,
                  "%s: tensor '%s': data_offsets [%llu,%llu] outside the data section "
                  "(%zu bytes)",
                  path, name, (unsigned long long)begin, (unsigned long long)end, data_len);
        return -1;
    }
    if (end - begin != nbytes) {
        set_error(err,
                  "%s: tensor '%s': data_offsets [%llu,%llu] hold %llu bytes, "
                  "but %s %s needs %llu",
                  path, name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)(end - begin),
                  dtype_names[t->dtype], shape_str(sbuf, sizeof sbuf, t->ndim, t->shape), (unsigned long long)nbytes);
        return -1;
    }
    t->begin = (size_t)begin;
    t->end = (size_t)end;
    return 0;
}

int st_parse(const uint8_t *buf, size_t size, const char *path, st_file *f, char *err) {
    memset(f, 0, sizeof *f);
    if (size < 8) {
        set_error(err, "%s: truncated: %zu bytes, too short for the 8-byte header length", path, size);
        return -1;
    }
    uint64_t hlen;
    memcpy(&hlen, buf, 8);
    if (hlen > size - 8) {
        set_error(err, "%s: header length %llu is larger than the file (%zu bytes)", path, (unsigned long long)hlen,
                  size);
        return -1;
    }

    const char *json = (const char *)buf + 8;
    const char *json_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &json_end, 0);
    if (!root) {
        set_error(err, "%s: header is not valid JSON (near byte %td of the header)", path,
                  json_end ? json_end - json : 0);
        return -1;
    }
    /* The writer pads the header with spaces; anything else after the JSON
     * object means a corrupt or foreign file. */
    for (const char *p = json_end; p < json + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            set_error(err, "%s: header has garbage after the JSON object (byte %td)", path, p - json);
            cJSON_Delete(root);
            return -1;
        }
    }
    if (!cJSON_IsObject(root)) {
        set_error(err, "%s: header is not a JSON object", path);
        cJSON_Delete(root);
        return -1;
    }

    f->path = xstrdup(path);
    f->buf = buf;
    f->size = size;
    f->data_start = 8 + (size_t)hlen;
    f->tensors = xcalloc((size_t)cJSON_GetArraySize(root), sizeof *f->tensors);
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        if (st_find(f, e->string)) {
            set_error(err, "%s: tensor '%s': appears twice in the header", path, e->string);
            goto fail;
        }
        st_tensor *t = &f->tensors[f->n];
        if (parse_entry(e, path, size - f->data_start, t, err) != 0) goto fail;
        t->name = xstrdup(e->string);
        f->n++;
    }
    cJSON_Delete(root);
    return 0;

fail:
    cJSON_Delete(root);
    st_close(f);
    return -1;
}

int st_open(const char *path, st_file *f, char *err) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_error(err, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_error(err, "%s: not a readable regular file", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)sb.st_size;
    /* mmap refuses a zero length; let st_parse report the short file. */
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            set_error(err, "%s: cannot mmap: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    close(fd);
    if (st_parse(map ? map : (const void *)"", size, path, f, err) != 0) {
        if (map) munmap(map, size);
        return -1;
    }
    f->mapped = 1;
    return 0;
}

void st_close(st_file *f) {
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->path);
    if (f->mapped) munmap((void *)f->buf, f->size);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

/* The tensor `name`, if it exists, has one of the dtypes in `dtypes` (a bit
 * mask of st_dtype) and exactly the expected shape. */
static const st_tensor *find_checked(const st_file *f, const char *name, unsigned dtypes, const char *want_dtype,
                                     int ndim, const int64_t *shape, char *err) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        set_error(err, "%s: tensor '%s' not found", f->path, name);
        return NULL;
    }
    if (!(dtypes & (1u << t->dtype))) {
        set_error(err, "%s: tensor '%s': dtype %s, expected %s", f->path, name, dtype_names[t->dtype], want_dtype);
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[256], want[256];
        set_error(err, "%s: tensor '%s': shape %s, expected %s", f->path, name,
                  shape_str(got, sizeof got, t->ndim, t->shape), shape_str(want, sizeof want, ndim, shape));
        return NULL;
    }
    return t;
}

int st_read_f32(const st_file *f, const char *name, int ndim, const int64_t *shape, float *dst, char *err) {
    const st_tensor *t = find_checked(f, name, 1u << ST_F32 | 1u << ST_BF16, "F32 or BF16", ndim, shape, err);
    if (!t) return -1;
    /* The data section has no alignment guarantee: copy, never cast. */
    const uint8_t *src = f->buf + f->data_start + t->begin;
    size_t count = (t->end - t->begin) / st_dtype_size(t->dtype);
    if (t->dtype == ST_F32) {
        if (count) memcpy(dst, src, count * sizeof(float));
        return 0;
    }
    st_bf16_to_f32(src, dst, count);
    return 0;
}

void st_bf16_to_f32(const void *src, float *dst, size_t n) {
    /* bfloat16 is the top half of a float32, so widening is exact. The
     * source may be unaligned (a file's data section): copy, never cast. */
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)src + 2 * i, 2);
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&dst[i], &bits, 4);
    }
}

int st_read_f32_slice(const st_file *f, const char *name, size_t begin, size_t count, float *dst, char *err) {
    const st_tensor *t = st_find(f, name);
    if (!t) return set_error(err, "%s: tensor '%s' not found", f->path, name);
    if (t->dtype != ST_F32)
        return set_error(err, "%s: tensor '%s': dtype %s, expected F32", f->path, name, dtype_names[t->dtype]);
    size_t numel = (t->end - t->begin) / sizeof(float);
    if (begin > numel || count > numel - begin)
        return set_error(err, "%s: tensor '%s': elements [%zu,%zu) outside its %zu", f->path, name, begin,
                         begin + count, numel);
    if (count) memcpy(dst, f->buf + f->data_start + t->begin + begin * sizeof(float), count * sizeof(float));
    return 0;
}

int st_read_i32(const st_file *f, const char *name, int ndim, const int64_t *shape, int32_t *dst, char *err) {
    const st_tensor *t = find_checked(f, name, 1u << ST_I32, "I32", ndim, shape, err);
    if (!t) return -1;
    size_t count = (t->end - t->begin) / sizeof(int32_t);
    if (count) memcpy(dst, f->buf + f->data_start + t->begin, count * sizeof(int32_t));
    return 0;
}

void st_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &src[i], 4);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {
            dst[i] = (uint16_t)((bits >> 16) | 0x0040u); /* keep sign, set the quiet bit */
            continue;
        }
        /* Add half an ulp of bfloat16, plus one when the kept part is odd
         * (ties go to even); overflow carries correctly into the exponent
         * and rounds the largest finite values to infinity. */
        bits += 0x7fffu + ((bits >> 16) & 1u);
        dst[i] = (uint16_t)(bits >> 16);
    }
}

/* cJSON returns NULL when out of memory; like xmalloc, treat that as fatal
 * rather than writing a header with entries silently missing. */
static cJSON *need(cJSON *item) {
    if (!item) die("out of memory building a safetensors header");
    return item;
}

/* The JSON header for entries, with data_offsets laid out back to back in
 * entry order; NULL (and err) when an entry is malformed. */
static char *build_header(const char *path, const st_entry *entries, int n, uint64_t *bytes, char *err) {
    cJSON *root = need(cJSON_CreateObject());
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const st_entry *e = &entries[i];
        uint64_t nb = 0;
        int bad_dims = e->ndim < 0 || e->ndim > ST_MAX_DIMS;
        for (int d = 0; !bad_dims && d < e->ndim; d++) bad_dims = e->shape[d] < 0;
        const char *why = !e->name                                ? "has no name"
            : st_dtype_size(e->dtype) == 0                        ? "has an unknown dtype"
            : bad_dims                                            ? "has a bad shape"
            : tensor_bytes(e->dtype, e->ndim, e->shape, &nb) != 0 ? "is too large"
            : nb > 0 && !e->data                                  ? "has no data"
            : cJSON_GetObjectItemCaseSensitive(root, e->name)     ? "appears twice"
            : strcmp(e->name, "__metadata__") == 0                ? "uses a reserved name"
                                                                  : NULL;
        if (why) {
            set_error(err, "%s: tensor '%s' %s", path, e->name ? e->name : "", why);
            cJSON_Delete(root);
            return NULL;
        }
        cJSON *obj = need(cJSON_CreateObject());
        cJSON_AddItemToObject(obj, "dtype", need(cJSON_CreateString(dtype_names[e->dtype])));
        cJSON *shape = need(cJSON_CreateArray());
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, need(cJSON_CreateNumber((double)e->shape[d])));
        cJSON_AddItemToObject(obj, "shape", shape);
        cJSON *off = need(cJSON_CreateArray());
        cJSON_AddItemToArray(off, need(cJSON_CreateNumber((double)offset)));
        cJSON_AddItemToArray(off, need(cJSON_CreateNumber((double)(offset + nb))));
        cJSON_AddItemToObject(obj, "data_offsets", off);
        if (!cJSON_AddItemToObject(root, e->name, obj)) die("out of memory building a safetensors header");
        offset += nb;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) die("out of memory building a safetensors header");
    *bytes = offset;
    return json;
}

int st_write(const char *path, const st_entry *entries, int n, char *err) {
    uint64_t data_bytes;
    char *json = build_header(path, entries, n, &data_bytes, err);
    if (!json) return -1;

    /* The reference implementation pads the header with spaces so that the
     * data section starts 8-byte aligned. */
    size_t jlen = strlen(json);
    uint64_t hlen = (jlen + 7) & ~(uint64_t)7;
    uint8_t *header = xmalloc(8 + hlen);
    memcpy(header, &hlen, 8);
    memcpy(header + 8, json, jlen);
    memset(header + 8 + jlen, ' ', hlen - jlen);
    cJSON_free(json);

    file_piece *pieces = xmalloc(sizeof(file_piece) * (n + 1));
    pieces[0] = (file_piece){header, 8 + hlen};
    for (int i = 0; i < n; i++) {
        uint64_t nb = 0; /* cannot overflow: build_header checked it */
        tensor_bytes(entries[i].dtype, entries[i].ndim, entries[i].shape, &nb);
        pieces[i + 1] = (file_piece){entries[i].data, (size_t)nb};
    }
    int rc = atomic_write(path, pieces, n + 1, err);
    free(pieces);
    free(header);
    return rc;
}
