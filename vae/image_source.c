/* image_source.c - image-caption samples from WebDataset tar shards and plain
 * folders (see image_source.h): input expansion and rank split, grouping of
 * the members of each input (member_reader.h) into samples by key, the checks
 * that skip bad samples, and image decoding (image_decode.h) to a square
 * [-1, 1] tensor.
 *
 * Rules, in the order they are applied to a sample (the first that fails
 * names the skip reason):
 *   - a member name that is absolute or has a ".." component: unsafe name;
 *   - the key (member name up to the first '.' of its basename, as WebDataset
 *     does; KEY.seg.png belongs to KEY with extension "seg.png") was already
 *     met in this source: duplicate key. Iterating an input again (select)
 *     re-meets the same samples and does not count them as duplicates;
 *   - the sample was cut by the end of a truncated tar, or a member could
 *     not be read: corrupt image (its data is incomplete);
 *   - an image member over 1 GiB or a caption/json member over 16 MiB: too
 *     large (refused before reading it);
 *   - no image member (webp/png/jpg/jpeg, any case): no image, with or
 *     without a caption;
 *   - no .txt member: no caption;
 *   - a caption that is not UTF-8 (overlong forms, surrogates, code points
 *     over U+10FFFF, truncated sequences) or holds a NUL byte: bad utf-8;
 *   - a caption that is empty after trimming: no caption;
 *   - the image fails image_decode: not an image / too large / corrupt.
 * Members whose basename starts with '.' or has no extension are ignored, as
 * WebDataset ignores them; so are members with other extensions (.cls, ...)
 * and a second image member of the same key. Captions lose a UTF-8 byte
 * order mark and surrounding ASCII whitespace; .json is kept as it is.
 *
 * Inputs: the matches of each comma-separated glob are sorted bytewise, the
 * lists concatenated in the given order, repeats dropped, and input i goes
 * to rank i % nranks. How an input is read, and what ends a tar input early,
 * is in member_reader.c; the sample a truncated tar cut is skipped as above. */
#include "image_source.h"
#include "image_decode.h"
#include "member_reader.h"

#include <errno.h>
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#define MAX_IMAGE_BYTES (1ull << 30) /* largest image member read */
#define MAX_TEXT_BYTES (16ull << 20) /* largest caption or json member */

static const char *reason_names[SKIP_REASONS] = {
    [SKIP_CORRUPT_IMAGE] = "corrupt image", [SKIP_NOT_AN_IMAGE] = "not an image",
    [SKIP_TOO_LARGE] = "too large",         [SKIP_NO_CAPTION] = "no caption",
    [SKIP_BAD_UTF8] = "bad utf-8",          [SKIP_DUPLICATE_KEY] = "duplicate key",
    [SKIP_UNSAFE_NAME] = "unsafe name",     [SKIP_NO_IMAGE] = "no image",
};

const char *skip_reason_name(skip_reason r) { return (unsigned)r < SKIP_REASONS ? reason_names[r] : "unknown"; }

/* ---- set of keys (open addressing, FNV-1a) ---------------------------- */

/* A key remembers where it was first met (input, ordinal of the sample in
 * that input), so that reading the same input again is not a duplicate. */
typedef struct {
    char *key;
    int input;
    long ordinal;
} key_entry;

typedef struct {
    key_entry *slots;
    size_t cap, n;
} key_set;

static uint64_t hash_key(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void key_set_insert_slot(key_entry *slots, size_t cap, key_entry e) {
    size_t i = hash_key(e.key) & (cap - 1);
    while (slots[i].key) i = (i + 1) & (cap - 1);
    slots[i] = e;
}

/* Returns 0 when the key is new (and adds it), 1 when it was met at the same
 * (input, ordinal), 2 when it was met elsewhere. */
static int key_set_add(key_set *ks, const char *key, int input, long ordinal) {
    if (ks->cap) {
        size_t i = hash_key(key) & (ks->cap - 1);
        for (; ks->slots[i].key; i = (i + 1) & (ks->cap - 1))
            if (strcmp(ks->slots[i].key, key) == 0)
                return ks->slots[i].input == input && ks->slots[i].ordinal == ordinal ? 1 : 2;
    }
    if (2 * (ks->n + 1) > ks->cap) { /* keep the load under one half */
        size_t cap = ks->cap ? 2 * ks->cap : 64;
        key_entry *slots = xcalloc(cap, sizeof *slots);
        for (size_t i = 0; i < ks->cap; i++)
            if (ks->slots[i].key) key_set_insert_slot(slots, cap, ks->slots[i]);
        free(ks->slots);
        ks->slots = slots;
        ks->cap = cap;
    }
    key_set_insert_slot(ks->slots, ks->cap, (key_entry){xstrdup(key), input, ordinal});
    ks->n++;
    return 0;
}

static void key_set_free(key_set *ks) {
    for (size_t i = 0; i < ks->cap; i++) free(ks->slots[i].key);
    free(ks->slots);
    memset(ks, 0, sizeof *ks);
}

/* ---- the source --------------------------------------------------------- */

enum { MEMBER_OTHER, MEMBER_IMAGE, MEMBER_CAPTION, MEMBER_JSON };

static int member_kind(const char *ext) {
    if (!strcasecmp(ext, "webp") || !strcasecmp(ext, "png") || !strcasecmp(ext, "jpg") || !strcasecmp(ext, "jpeg"))
        return MEMBER_IMAGE;
    if (!strcasecmp(ext, "txt")) return MEMBER_CAPTION;
    if (!strcasecmp(ext, "json")) return MEMBER_JSON;
    return MEMBER_OTHER;
}

/* The members of one key. */
typedef struct {
    char *key;
    long ordinal; /* index of the sample in its input */
    char *image_name;
    unsigned char *image;
    uint64_t image_len;
    unsigned char *caption; /* NULL: no .txt member */
    uint64_t caption_len;
    char *json;
    char *unsafe_member; /* first member with an unsafe name */
    char *cut_member;    /* member that could not be read */
    char *big_member;    /* member over its size limit */
    uint64_t big_size;
} group;

struct image_source {
    char **inputs;
    int n_inputs;
    int size;
    int cur, end; /* inputs still to read: [cur, end) */
    int open;     /* rd holds inputs[cur] */
    reader rd;
    int pending;  /* rd's current member starts the next group */
    long ordinal; /* samples met so far in the current input */
    key_set seen;
    long good, skipped[SKIP_REASONS];
    float *rgb;
    group sample; /* strings of the sample last returned */
};

static void group_free(group *g) {
    free(g->key);
    free(g->image_name);
    free(g->image);
    free(g->caption);
    free(g->json);
    free(g->unsafe_member);
    free(g->cut_member);
    free(g->big_member);
    memset(g, 0, sizeof *g);
}

static void note_member(char **slot, const char *name) {
    if (!*slot) *slot = xstrdup(name);
}

/* Reads the members of the next key into g: 1, or 0 at the end of the input. */
static int read_group(image_source *s, group *g) {
    reader *r = &s->rd;
    memset(g, 0, sizeof *g);
    for (;;) {
        if (!s->pending && !reader_next(r)) break;
        s->pending = 0;
        const char *ext;
        size_t klen = key_length(r->name, &ext);
        if (!klen) { /* hidden or no extension: not part of any sample */
            if (reader_skip(r) != 0) note_member(&g->cut_member, r->name);
            continue;
        }
        if (g->key && (strlen(g->key) != klen || memcmp(g->key, r->name, klen))) {
            s->pending = 1; /* the first member of the next sample */
            break;
        }
        if (!g->key) {
            g->key = xstrndup(r->name, klen);
            g->ordinal = s->ordinal++;
        }
        int kind = member_kind(ext);
        if (unsafe_name(r->name)) {
            note_member(&g->unsafe_member, r->name);
            kind = MEMBER_OTHER;
        }
        if (kind == MEMBER_OTHER || (kind == MEMBER_IMAGE && g->image_name) || (kind == MEMBER_CAPTION && g->caption) ||
            (kind == MEMBER_JSON && g->json)) {
            if (reader_skip(r) != 0) note_member(&g->cut_member, r->name);
            continue;
        }
        unsigned char *data;
        uint64_t len;
        int rc = reader_read(r, kind == MEMBER_IMAGE ? MAX_IMAGE_BYTES : MAX_TEXT_BYTES, &data, &len);
        if (rc < 0) {
            note_member(&g->cut_member, r->name);
            continue;
        }
        if (rc > 0) {
            if (!g->big_member) g->big_size = len;
            note_member(&g->big_member, r->name);
            continue;
        }
        if (kind == MEMBER_IMAGE) {
            g->image_name = xstrdup(r->name);
            g->image = data;
            g->image_len = len;
        } else if (kind == MEMBER_CAPTION) {
            g->caption = data;
            g->caption_len = len;
        } else {
            g->json = (char *)data;
        }
    }
    if (!g->key) group_free(g); /* a cut hidden member may have left a note */
    return g->key != NULL;
}

/* Offset of the first byte that is not valid UTF-8 (or is NUL), -1 if none. */
static long utf8_invalid_at(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c == 0) return (long)i;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) /* 0xc0, 0xc1 would be overlong */
            len = 2, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0)
            len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4, cp = c & 0x07;
        else /* a continuation byte, or 0xf5..0xff */
            return (long)i;
        if (n - i < len) return (long)i;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return (long)i;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return (long)i;
        i += len;
    }
    return -1;
}

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Checks a group; 0 when it is a good sample (its caption trimmed in place
 * and its pixels in s->rgb), else -1 with *why and detail. */
static int check_group(image_source *s, group *g, skip_reason *why, char *detail, size_t dlen) {
    detail[0] = '\0';
    if (g->unsafe_member) {
        snprintf(detail, dlen, "member %s", g->unsafe_member);
        *why = SKIP_UNSAFE_NAME;
        return -1;
    }
    if (key_set_add(&s->seen, g->key, s->cur, g->ordinal) == 2) {
        *why = SKIP_DUPLICATE_KEY;
        return -1;
    }
    if (g->cut_member) {
        snprintf(detail, dlen, "member %s is incomplete", g->cut_member);
        *why = SKIP_CORRUPT_IMAGE;
        return -1;
    }
    if (g->big_member) {
        snprintf(detail, dlen, "member %s has %llu bytes", g->big_member, (unsigned long long)g->big_size);
        *why = SKIP_TOO_LARGE;
        return -1;
    }
    if (!g->image_name) {
        *why = SKIP_NO_IMAGE;
        return -1;
    }
    if (!g->caption) {
        snprintf(detail, dlen, "no .txt member");
        *why = SKIP_NO_CAPTION;
        return -1;
    }
    long bad = utf8_invalid_at(g->caption, (size_t)g->caption_len);
    if (bad >= 0) {
        snprintf(detail, dlen, "at byte %ld", bad);
        *why = SKIP_BAD_UTF8;
        return -1;
    }
    unsigned char *a = g->caption, *b = g->caption + g->caption_len;
    if (b - a >= 3 && a[0] == 0xef && a[1] == 0xbb && a[2] == 0xbf) /* byte order mark */
        a += 3;
    while (a < b && is_space(*a)) a++;
    while (b > a && is_space(b[-1])) b--;
    if (a == b) {
        snprintf(detail, dlen, "empty caption");
        *why = SKIP_NO_CAPTION;
        return -1;
    }
    memmove(g->caption, a, (size_t)(b - a));
    g->caption[b - a] = '\0';
    char why_image[256];
    if (image_decode_detail(g->image, (size_t)g->image_len, s->size, s->rgb, why, why_image, sizeof why_image) != 0) {
        snprintf(detail, dlen, "%s: %s", g->image_name, why_image);
        return -1;
    }
    return 0;
}

static int has_tar_suffix(const char *path) {
    size_t n = strlen(path);
    return n >= 4 && strcasecmp(path + n - 4, ".tar") == 0;
}

static int cmp_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

image_source *image_source_open(const char *spec, int size, int rank, int nranks, char *err) {
    if (size < 1 || size > IMAGE_MAX_SIDE) {
        set_error(err, "image source: size %d out of range [1, %d]", size, IMAGE_MAX_SIDE);
        return NULL;
    }
    if (nranks < 1 || rank < 0 || rank >= nranks) {
        set_error(err, "image source: rank %d of %d is not valid", rank, nranks);
        return NULL;
    }
    if (!spec || !*spec) {
        set_error(err, "image source: no inputs given");
        return NULL;
    }
    char **all = NULL;
    int n_all = 0, cap = 0, failed = 0;
    key_set names = {0}; /* a path listed twice is read once */
    char *list = xstrdup(spec), *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item && !failed; item = strtok_r(NULL, ",", &save)) {
        glob_t gl;
        int rc = glob(item, 0, NULL, &gl);
        if (rc != 0) {
            set_error(err, "image source: '%s' %s", item,
                      rc == GLOB_NOMATCH ? "matches nothing" : "cannot be expanded");
            if (rc != GLOB_NOMATCH) globfree(&gl);
            failed = 1;
            break;
        }
        /* glob sorts by the locale's collation; byte order is the same on every
         * machine, so every rank splits the same list. */
        qsort(gl.gl_pathv, gl.gl_pathc, sizeof *gl.gl_pathv, cmp_strings);
        for (size_t i = 0; i < gl.gl_pathc && !failed; i++) {
            const char *path = gl.gl_pathv[i];
            struct stat st;
            if (stat(path, &st) != 0) {
                set_error(err, "image source: %s: %s", path, strerror(errno));
                failed = 1;
            } else if (!S_ISDIR(st.st_mode) && !(S_ISREG(st.st_mode) && has_tar_suffix(path))) {
                set_error(err, "image source: %s: not a .tar shard or a folder", path);
                failed = 1;
            } else if (key_set_add(&names, path, -1, -1) == 0) {
                if (n_all == cap) {
                    cap = cap ? 2 * cap : 16;
                    char **grown = realloc(all, (size_t)cap * sizeof *all);
                    if (!grown) die("out of memory listing inputs");
                    all = grown;
                }
                all[n_all++] = xstrdup(path);
            }
        }
        globfree(&gl);
    }
    free(list);
    key_set_free(&names);
    if (!failed && n_all == 0) {
        set_error(err, "image source: '%s' names no inputs", spec);
        failed = 1;
    }
    if (failed) {
        for (int i = 0; i < n_all; i++) free(all[i]);
        free(all);
        return NULL;
    }

    image_source *s = xcalloc(1, sizeof *s);
    s->size = size;
    s->inputs = xcalloc((size_t)(n_all / nranks + 1), sizeof *s->inputs);
    for (int i = 0; i < n_all; i++) {
        if (i % nranks == rank)
            s->inputs[s->n_inputs++] = all[i];
        else
            free(all[i]);
    }
    free(all);
    s->rgb = xmalloc((size_t)3 * size * size * sizeof *s->rgb);
    s->end = s->n_inputs;
    return s;
}

int image_source_count_inputs(const image_source *s) { return s->n_inputs; }

const char *image_source_input_path(const image_source *s, int i) {
    return i >= 0 && i < s->n_inputs ? s->inputs[i] : NULL;
}

void image_source_select(image_source *s, int i) {
    if (s->open) reader_close(&s->rd);
    s->open = 0;
    s->pending = 0;
    if (i < 0) {
        s->cur = 0;
        s->end = s->n_inputs;
    } else {
        s->cur = i < s->n_inputs ? i : s->n_inputs;
        s->end = i < s->n_inputs ? i + 1 : s->n_inputs;
    }
}

int image_source_next(image_source *s, image_sample *out) {
    group_free(&s->sample);
    memset(out, 0, sizeof *out);
    for (;;) {
        if (!s->open) {
            if (s->cur >= s->end) return 0;
            if (reader_open(&s->rd, s->inputs[s->cur]) != 0) {
                s->cur++;
                continue;
            }
            s->open = 1;
            s->pending = 0;
            s->ordinal = 0;
        }
        group g;
        if (!read_group(s, &g)) {
            reader_close(&s->rd);
            s->open = 0;
            s->cur++;
            continue;
        }
        skip_reason why;
        char detail[768];
        if (check_group(s, &g, &why, detail, sizeof detail) != 0) {
            s->skipped[why]++;
            log_line("skip %s %s: %s%s%s%s", s->inputs[s->cur], g.key, skip_reason_name(why), detail[0] ? " (" : "",
                     detail, detail[0] ? ")" : "");
            group_free(&g);
            continue;
        }
        s->sample = g;
        s->good++;
        out->key = g.key;
        out->caption = (char *)g.caption;
        out->json = g.json;
        out->size = s->size;
        out->rgb = s->rgb;
        return 1;
    }
}

long image_source_good(const image_source *s) { return s->good; }

long image_source_skipped(const image_source *s, skip_reason r) {
    return (unsigned)r < SKIP_REASONS ? s->skipped[r] : 0;
}

void image_source_summary(const image_source *s, char *buf, size_t len) {
    if (!len) return;
    long total = 0;
    for (int r = 0; r < SKIP_REASONS; r++) total += s->skipped[r];
    size_t n = (size_t)snprintf(buf, len, "%ld good, %ld skipped", s->good, total);
    const char *sep = " (";
    for (int r = 0; r < SKIP_REASONS && n < len; r++) {
        if (!s->skipped[r]) continue;
        n += (size_t)snprintf(buf + n, len - n, "%s%s: %ld", sep, reason_names[r], s->skipped[r]);
        sep = ", ";
    }
    if (total && n < len) snprintf(buf + n, len - n, ")");
}

void image_source_close(image_source *s) {
    if (!s) return;
    if (s->open) reader_close(&s->rd);
    group_free(&s->sample);
    key_set_free(&s->seen);
    for (int i = 0; i < s->n_inputs; i++) free(s->inputs[i]);
    free(s->inputs);
    free(s->rgb);
    free(s);
}
