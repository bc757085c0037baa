/* image_source.c - image-caption samples from WebDataset tar shards and plain
 * folders (see image_source.h): input expansion and rank split, a small
 * ustar/pax/GNU tar reader, grouping of members into samples by key, caption
 * checks, and image decoding (libwebp, stb_image) to a square [-1, 1] tensor.
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
 * to rank i % nranks. A folder is read flat (no subfolders), its files sorted
 * by key then name. A tar input that is truncated or malformed (bad checksum
 * or number field, broken pax record) ends with one line on stderr,
 * "image_source: INPUT: ..."; the sample it cut is skipped as above. */
#include "image_source.h"

#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>
#include <webp/decode.h>

#define MAX_SIDE 16384                  /* pixels a side an image may claim */
#define MAX_IMAGE_BYTES (1ull << 30)    /* largest image member read */
#define MAX_TEXT_BYTES (16ull << 20)    /* largest caption or json member */
#define MAX_EXT_HEADER (1ull << 20)     /* largest pax / GNU long-name record */

static const char *reason_names[SKIP_REASONS] = {
    [SKIP_CORRUPT_IMAGE] = "corrupt image",
    [SKIP_NOT_AN_IMAGE] = "not an image",
    [SKIP_TOO_LARGE] = "too large",
    [SKIP_NO_CAPTION] = "no caption",
    [SKIP_BAD_UTF8] = "bad utf-8",
    [SKIP_DUPLICATE_KEY] = "duplicate key",
    [SKIP_UNSAFE_NAME] = "unsafe name",
    [SKIP_NO_IMAGE] = "no image",
};

const char *skip_reason_name(skip_reason r)
{
    return (unsigned)r < SKIP_REASONS ? reason_names[r] : "unknown";
}

/* ---- logging ---------------------------------------------------------- */

/* One line on stderr, assembled first so that it reaches stderr in one write;
 * control characters (member names and keys come from the data) become '?'. */
__attribute__((format(printf, 1, 2))) static void log_line(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

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

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void key_set_insert_slot(key_entry *slots, size_t cap, key_entry e)
{
    size_t i = hash_key(e.key) & (cap - 1);
    while (slots[i].key)
        i = (i + 1) & (cap - 1);
    slots[i] = e;
}

/* Returns 0 when the key is new (and adds it), 1 when it was met at the same
 * (input, ordinal), 2 when it was met elsewhere. */
static int key_set_add(key_set *ks, const char *key, int input, long ordinal)
{
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
            if (ks->slots[i].key)
                key_set_insert_slot(slots, cap, ks->slots[i]);
        free(ks->slots);
        ks->slots = slots;
        ks->cap = cap;
    }
    key_set_insert_slot(ks->slots, ks->cap, (key_entry){xstrdup(key), input, ordinal});
    ks->n++;
    return 0;
}

static void key_set_free(key_set *ks)
{
    for (size_t i = 0; i < ks->cap; i++)
        free(ks->slots[i].key);
    free(ks->slots);
    memset(ks, 0, sizeof *ks);
}

/* ---- member names ----------------------------------------------------- */

/* Absolute, or a ".." component: such a name could escape a folder if the
 * shard were ever unpacked, and is not a sample this project wrote. */
static int unsafe_name(const char *name)
{
    if (name[0] == '/')
        return 1;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        p += n;
        if (*p == '/')
            p++;
    }
    return 0;
}

/* Length of the key of name (up to the first '.' of the basename), or 0 when
 * the member has none (hidden file or no extension). *ext gets the rest. */
static size_t key_length(const char *name, const char **ext)
{
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base)
        return 0;
    *ext = dot + 1;
    return (size_t)(dot - name);
}

enum { MEMBER_OTHER, MEMBER_IMAGE, MEMBER_CAPTION, MEMBER_JSON };

static int member_kind(const char *ext)
{
    if (!strcasecmp(ext, "webp") || !strcasecmp(ext, "png") || !strcasecmp(ext, "jpg") ||
        !strcasecmp(ext, "jpeg"))
        return MEMBER_IMAGE;
    if (!strcasecmp(ext, "txt"))
        return MEMBER_CAPTION;
    if (!strcasecmp(ext, "json"))
        return MEMBER_JSON;
    return MEMBER_OTHER;
}

/* ---- readers: a tar shard or a folder, one member at a time ------------ */

typedef struct {
    const char *path;       /* the input, for log lines */
    int is_tar;
    int ended;              /* no more members (end, or a logged problem) */
    char *name;             /* current member */
    uint64_t size;
    /* tar */
    FILE *fp;
    uint64_t pos, file_size;
    uint64_t remaining;     /* data bytes of the current member not consumed */
    uint64_t padding;       /* then zero bytes up to the next 512 boundary */
    char *next_name;        /* from a GNU 'L' or pax path record */
    int64_t next_size;      /* from a pax size record, or -1 */
    /* folder */
    char **names;
    int n_names, next_index;
} reader;

static int has_tar_suffix(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && strcasecmp(path + n - 4, ".tar") == 0;
}

/* Folder files sort by key first, then by name, so that a sample's members
 * are adjacent (as in a shard) and samples come in key order. */
static int cmp_member_names(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    const char *ex, *ey;
    size_t kx = key_length(x, &ex), ky = key_length(y, &ey);
    size_t n = kx < ky ? kx : ky;
    int c = memcmp(x, y, n);
    if (c)
        return c;
    if (kx != ky)
        return kx < ky ? -1 : 1;
    return strcmp(x, y);
}

static int reader_open(reader *r, const char *path)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->next_size = -1;
    struct stat st;
    if (stat(path, &st) != 0) {
        log_line("image_source: %s: %s; input skipped", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) {
            log_line("image_source: %s: %s; input skipped", path, strerror(errno));
            return -1;
        }
        int cap = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            const char *ext;
            if (!key_length(e->d_name, &ext)) /* ".", "..", hidden, no extension */
                continue;
            char full[PATH_MAX];
            struct stat fst;
            if (snprintf(full, sizeof full, "%s/%s", path, e->d_name) >= (int)sizeof full ||
                stat(full, &fst) != 0 || !S_ISREG(fst.st_mode))
                continue;
            if (r->n_names == cap) {
                cap = cap ? 2 * cap : 64;
                char **names = realloc(r->names, (size_t)cap * sizeof *names);
                if (!names)
                    die("out of memory listing %s", path);
                r->names = names;
            }
            r->names[r->n_names++] = xstrdup(e->d_name);
        }
        closedir(d);
        if (r->n_names)
            qsort(r->names, (size_t)r->n_names, sizeof *r->names, cmp_member_names);
        return 0;
    }
    r->is_tar = 1;
    r->fp = fopen(path, "rb");
    if (!r->fp) {
        log_line("image_source: %s: %s; input skipped", path, strerror(errno));
        return -1;
    }
    r->file_size = (uint64_t)st.st_size;
    return 0;
}

static void reader_close(reader *r)
{
    if (r->fp)
        fclose(r->fp);
    for (int i = 0; i < r->n_names; i++)
        free(r->names[i]);
    free(r->names);
    free(r->name);
    free(r->next_name);
    memset(r, 0, sizeof *r);
}

/* Ends a tar input after a problem: nothing after it can be trusted. */
static void tar_stop(reader *r, const char *what, uint64_t at)
{
    log_line("image_source: %s: %s at byte %llu; rest of the input skipped", r->path, what,
             (unsigned long long)at);
    r->ended = 1;
}

/* Octal number (spaces before, NUL or spaces after), or GNU base-256 when the
 * high bit of the first byte is set. -1 when the field is malformed. */
static int tar_number(const unsigned char *f, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (f[0] & 0x80) {
        if (f[0] & 0x40) /* negative */
            return -1;
        v = f[0] & 0x3f;
        for (size_t i = 1; i < n; i++) {
            if (v >> 54) /* keep sizes far from overflowing offsets */
                return -1;
            v = v << 8 | f[i];
        }
        *out = v;
        return 0;
    }
    size_t i = 0;
    while (i < n && f[i] == ' ')
        i++;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++)
        v = v * 8 + (uint64_t)(f[i] - '0'); /* at most 12 digits: no overflow */
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0')
            return -1;
    *out = v;
    return 0;
}

/* Bytes left in the file after the current position (0 past its end). */
static uint64_t tar_avail(const reader *r)
{
    return r->pos < r->file_size ? r->file_size - r->pos : 0;
}

/* Consumes the current member's data without reading it. -1 when the tar
 * ends inside the data (the input then ends). */
static int tar_skip(reader *r)
{
    if (r->remaining > tar_avail(r)) {
        tar_stop(r, "tar truncated: member data runs past the end of the file", r->file_size);
        return -1;
    }
    uint64_t n = r->remaining + r->padding;
    /* Missing padding at the very end is not data loss; the next header read
     * then reports the end without an end-of-archive marker. */
    if (n && fseeko(r->fp, (off_t)n, SEEK_CUR) != 0) {
        tar_stop(r, "cannot seek", r->pos);
        return -1;
    }
    r->pos += n;
    r->remaining = r->padding = 0;
    return 0;
}

/* Reads the current member's data into a new NUL-terminated buffer. */
static int tar_read(reader *r, unsigned char **data)
{
    *data = NULL;
    if (r->remaining > tar_avail(r)) {
        /* Checked before allocating: a header may claim any size. */
        tar_stop(r, "tar truncated: member data runs past the end of the file", r->file_size);
        return -1;
    }
    unsigned char *buf = xmalloc(r->remaining + 1);
    if (fread(buf, 1, r->remaining, r->fp) != r->remaining) {
        free(buf);
        tar_stop(r, "tar truncated (read failed) inside a member's data", r->pos);
        return -1;
    }
    buf[r->remaining] = '\0';
    r->pos += r->remaining;
    r->remaining = 0;
    if (tar_skip(r) != 0) { /* the padding */
        free(buf);
        return -1;
    }
    *data = buf;
    return 0;
}

/* Parses a pax extended header ("LEN key=value\n" records); keeps path and
 * size for the next member, ignores the other keys. */
static int pax_parse(reader *r, const char *p, size_t n)
{
    while (n) {
        size_t len = 0, i = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9' && len < n)
            len = len * 10 + (size_t)(p[i++] - '0');
        if (i == 0 || i >= n || p[i] != ' ' || len <= i + 1 || len > n || p[len - 1] != '\n')
            return -1;
        const char *kv = p + i + 1, *end = p + len - 1;
        const char *eq = memchr(kv, '=', (size_t)(end - kv));
        if (!eq)
            return -1;
        size_t klen = (size_t)(eq - kv);
        if (klen == 4 && !memcmp(kv, "path", 4)) {
            free(r->next_name);
            r->next_name = xstrndup(eq + 1, strnlen(eq + 1, (size_t)(end - eq - 1)));
        } else if (klen == 4 && !memcmp(kv, "size", 4)) {
            uint64_t v = 0;
            const char *q = eq + 1;
            if (q == end)
                return -1;
            for (; q < end; q++) {
                if (*q < '0' || *q > '9' || v > (1ull << 54))
                    return -1;
                v = v * 10 + (uint64_t)(*q - '0');
            }
            r->next_size = (int64_t)v;
        }
        p += len;
        n -= len;
    }
    return 0;
}

/* Advances to the next regular file. 1: r->name and r->size are set; 0: no
 * more members (the end, or a problem that was logged). */
static int tar_next(reader *r)
{
    if ((r->remaining || r->padding) && tar_skip(r) != 0)
        return 0;
    for (;;) {
        unsigned char h[512];
        uint64_t at = r->pos;
        size_t got = fread(h, 1, sizeof h, r->fp);
        if (got == 0) {
            tar_stop(r, "tar ends without an end-of-archive marker", at);
            return 0;
        }
        if (got < sizeof h) {
            tar_stop(r, "tar truncated inside a header", at);
            return 0;
        }
        r->pos += sizeof h;
        int zero = 1;
        for (size_t i = 0; i < sizeof h && zero; i++)
            zero = h[i] == 0;
        if (zero) { /* end-of-archive marker (the second zero block is not needed) */
            r->ended = 1;
            return 0;
        }
        /* The checksum treats its own field as spaces; some old writers summed
         * signed chars, so both sums are accepted. */
        uint64_t want;
        if (tar_number(h + 148, 8, &want) != 0) {
            tar_stop(r, "malformed tar header (checksum field)", at);
            return 0;
        }
        long usum = 0, ssum = 0;
        for (size_t i = 0; i < sizeof h; i++) {
            int in_field = i >= 148 && i < 156;
            usum += in_field ? ' ' : h[i];
            ssum += in_field ? ' ' : (signed char)h[i];
        }
        if ((uint64_t)usum != want && (uint64_t)ssum != want) {
            tar_stop(r, "malformed tar header (bad checksum)", at);
            return 0;
        }
        uint64_t size;
        if (tar_number(h + 124, 12, &size) != 0) {
            tar_stop(r, "malformed tar header (size field)", at);
            return 0;
        }
        char type = (char)h[156];
        r->remaining = size;
        r->padding = (512 - size % 512) % 512;

        if (type == 'x' || type == 'L') { /* pax header, GNU long name */
            if (size > MAX_EXT_HEADER) {
                tar_stop(r, "tar extended header too large", at);
                return 0;
            }
            unsigned char *ext;
            if (tar_read(r, &ext) != 0)
                return 0;
            int bad = 0;
            if (type == 'L') {
                free(r->next_name);
                r->next_name = xstrndup((char *)ext, strnlen((char *)ext, (size_t)size));
            } else {
                bad = pax_parse(r, (char *)ext, (size_t)size) != 0;
            }
            free(ext);
            if (bad) {
                tar_stop(r, "malformed pax header", at);
                return 0;
            }
            continue;
        }
        if (type == 'g' || type == 'K') { /* global pax header, GNU long link name */
            if (tar_skip(r) != 0)
                return 0;
            continue;
        }

        /* An ordinary header: the pending long name and size were for it. */
        if (r->next_size >= 0) {
            size = (uint64_t)r->next_size;
            r->remaining = size;
            r->padding = (512 - size % 512) % 512;
        }
        char *name;
        if (r->next_name) {
            name = r->next_name;
            r->next_name = NULL;
        } else {
            char full[256 + 1];
            size_t n = strnlen((char *)h, 100), np = 0;
            if (!memcmp(h + 257, "ustar\0", 6)) { /* POSIX: prefix field; GNU uses it otherwise */
                np = strnlen((char *)h + 345, 155);
                memcpy(full, h + 345, np);
                if (np)
                    full[np++] = '/';
            }
            memcpy(full + np, h, n);
            full[np + n] = '\0';
            name = xstrdup(full);
        }
        r->next_size = -1;
        if (type >= '1' && type <= '6') { /* links, devices, folders, fifos: no data */
            free(name);
            r->remaining = r->padding = 0;
            continue;
        }
        if (type != '0' && type != '\0' && type != '7') { /* unknown: skip its data */
            free(name);
            if (tar_skip(r) != 0)
                return 0;
            continue;
        }
        free(r->name);
        r->name = name;
        r->size = size;
        return 1;
    }
}

static int reader_next(reader *r)
{
    if (r->ended)
        return 0;
    if (r->is_tar)
        return tar_next(r);
    if (r->next_index == r->n_names) {
        r->ended = 1;
        return 0;
    }
    free(r->name);
    r->name = xstrdup(r->names[r->next_index++]);
    r->size = 0; /* known when read */
    return 1;
}

/* Consumes the current member without reading it; -1 when the input broke. */
static int reader_skip(reader *r) { return r->is_tar ? tar_skip(r) : 0; }

/* Reads the current member if it is at most max bytes: 0 with *data (NUL
 * appended) and *len; 1 when it is larger (not read, *len gets its size);
 * -1 when it could not be read. */
static int reader_read(reader *r, uint64_t max, unsigned char **data, uint64_t *len)
{
    *data = NULL;
    if (r->is_tar) {
        *len = r->size;
        if (r->size > max)
            return tar_skip(r) == 0 ? 1 : -1;
        return tar_read(r, data);
    }
    char full[PATH_MAX];
    snprintf(full, sizeof full, "%s/%s", r->path, r->name);
    FILE *fp = fopen(full, "rb");
    struct stat st;
    if (!fp || fstat(fileno(fp), &st) != 0) {
        log_line("image_source: %s: %s", full, strerror(errno));
        if (fp)
            fclose(fp);
        return -1;
    }
    *len = (uint64_t)st.st_size;
    if (*len > max) {
        fclose(fp);
        return 1;
    }
    unsigned char *buf = xmalloc(*len + 1);
    size_t got = fread(buf, 1, *len, fp);
    int bad = got != *len || ferror(fp);
    fclose(fp);
    if (bad) {
        log_line("image_source: %s: short read", full);
        free(buf);
        return -1;
    }
    buf[*len] = '\0';
    *data = buf;
    return 0;
}

/* ---- the source --------------------------------------------------------- */

/* The members of one key. */
typedef struct {
    char *key;
    long ordinal;             /* index of the sample in its input */
    char *image_name;
    unsigned char *image;
    uint64_t image_len;
    unsigned char *caption;   /* NULL: no .txt member */
    uint64_t caption_len;
    char *json;
    char *unsafe_member;      /* first member with an unsafe name */
    char *cut_member;         /* member that could not be read */
    char *big_member;         /* member over its size limit */
    uint64_t big_size;
} group;

struct image_source {
    char **inputs;
    int n_inputs;
    int size;
    int cur, end;             /* inputs still to read: [cur, end) */
    int open;                 /* rd holds inputs[cur] */
    reader rd;
    int pending;              /* rd's current member starts the next group */
    long ordinal;             /* samples met so far in the current input */
    key_set seen;
    long good, skipped[SKIP_REASONS];
    float *rgb;
    group sample;             /* strings of the sample last returned */
};

static void group_free(group *g)
{
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

static void note_member(char **slot, const char *name)
{
    if (!*slot)
        *slot = xstrdup(name);
}

/* Reads the members of the next key into g: 1, or 0 at the end of the input. */
static int read_group(image_source *s, group *g)
{
    reader *r = &s->rd;
    memset(g, 0, sizeof *g);
    for (;;) {
        if (!s->pending && !reader_next(r))
            break;
        s->pending = 0;
        const char *ext;
        size_t klen = key_length(r->name, &ext);
        if (!klen) { /* hidden or no extension: not part of any sample */
            if (reader_skip(r) != 0)
                note_member(&g->cut_member, r->name);
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
        if (kind == MEMBER_OTHER || (kind == MEMBER_IMAGE && g->image_name) ||
            (kind == MEMBER_CAPTION && g->caption) || (kind == MEMBER_JSON && g->json)) {
            if (reader_skip(r) != 0)
                note_member(&g->cut_member, r->name);
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
            if (!g->big_member)
                g->big_size = len;
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
    if (!g->key)
        group_free(g); /* a cut hidden member may have left a note */
    return g->key != NULL;
}

/* Offset of the first byte that is not valid UTF-8 (or is NUL), -1 if none. */
static long utf8_invalid_at(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c == 0)
            return (long)i;
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
        if (n - i < len)
            return (long)i;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return (long)i;
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

static int decode(const unsigned char *data, size_t len, int size, float *rgb, skip_reason *why,
                  char *detail, size_t dlen);

/* Checks a group; 0 when it is a good sample (its caption trimmed in place
 * and its pixels in s->rgb), else -1 with *why and detail. */
static int check_group(image_source *s, group *g, skip_reason *why, char *detail, size_t dlen)
{
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
        snprintf(detail, dlen, "member %s has %llu bytes", g->big_member,
                 (unsigned long long)g->big_size);
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
    while (a < b && is_space(*a))
        a++;
    while (b > a && is_space(b[-1]))
        b--;
    if (a == b) {
        snprintf(detail, dlen, "empty caption");
        *why = SKIP_NO_CAPTION;
        return -1;
    }
    memmove(g->caption, a, (size_t)(b - a));
    g->caption[b - a] = '\0';
    char why_image[256];
    if (decode(g->image, (size_t)g->image_len, s->size, s->rgb, why, why_image, sizeof why_image) != 0) {
        snprintf(detail, dlen, "%s: %s", g->image_name, why_image);
        return -1;
    }
    return 0;
}

static int cmp_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

image_source *image_source_open(const char *spec, int size, int rank, int nranks, char *err)
{
    if (size < 1 || size > MAX_SIDE) {
        set_error(err, "image source: size %d out of range [1, %d]", size, MAX_SIDE);
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
            if (rc != GLOB_NOMATCH)
                globfree(&gl);
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
                    if (!grown)
                        die("out of memory listing inputs");
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
        for (int i = 0; i < n_all; i++)
            free(all[i]);
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

const char *image_source_input_path(const image_source *s, int i)
{
    return i >= 0 && i < s->n_inputs ? s->inputs[i] : NULL;
}

void image_source_select(image_source *s, int i)
{
    if (s->open)
        reader_close(&s->rd);
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

int image_source_next(image_source *s, image_sample *out)
{
    group_free(&s->sample);
    memset(out, 0, sizeof *out);
    for (;;) {
        if (!s->open) {
            if (s->cur >= s->end)
                return 0;
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
            log_line("skip %s %s: %s%s%s%s", s->inputs[s->cur], g.key, skip_reason_name(why),
                     detail[0] ? " (" : "", detail, detail[0] ? ")" : "");
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

long image_source_skipped(const image_source *s, skip_reason r)
{
    return (unsigned)r < SKIP_REASONS ? s->skipped[r] : 0;
}

void image_source_summary(const image_source *s, char *buf, size_t len)
{
    if (!len)
        return;
    long total = 0;
    for (int r = 0; r < SKIP_REASONS; r++)
        total += s->skipped[r];
    size_t n = (size_t)snprintf(buf, len, "%ld good, %ld skipped", s->good, total);
    const char *sep = " (";
    for (int r = 0; r < SKIP_REASONS && n < len; r++) {
        if (!s->skipped[r])
            continue;
        n += (size_t)snprintf(buf + n, len - n, "%s%s: %ld", sep, reason_names[r], s->skipped[r]);
        sep = ", ";
    }
    if (total && n < len)
        snprintf(buf + n, len - n, ")");
}

void image_source_close(image_source *s)
{
    if (!s)
        return;
    if (s->open)
        reader_close(&s->rd);
    group_free(&s->sample);
    key_set_free(&s->seen);
    for (int i = 0; i < s->n_inputs; i++)
        free(s->inputs[i]);
    free(s->inputs);
    free(s->rgb);
    free(s);
}

/* ---- image decoding ------------------------------------------------------ */

enum { FORMAT_UNKNOWN, FORMAT_WEBP, FORMAT_PNG, FORMAT_JPEG };

static int detect_format(const unsigned char *p, size_t n)
{
    if (n >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4))
        return FORMAT_WEBP;
    if (n >= 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", 8))
        return FORMAT_PNG;
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return FORMAT_JPEG;
    return FORMAT_UNKNOWN;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Dimensions as the file's header states them, read here rather than by
 * stb_image because stb_image refuses some large headers with the same
 * failure as a corrupt one. -1 when no header is found. */
static int png_dimensions(const unsigned char *p, size_t n, uint32_t *w, uint32_t *h)
{
    if (n < 24 || memcmp(p + 12, "IHDR", 4))
        return -1;
    *w = be32(p + 16);
    *h = be32(p + 20);
    return 0;
}

static int jpeg_dimensions(const unsigned char *p, size_t n, uint32_t *w, uint32_t *h)
{
    size_t i = 2;
    while (i + 4 <= n) {
        if (p[i] != 0xff)
            return -1;
        unsigned m = p[i + 1];
        if (m == 0xff) { /* fill byte */
            i++;
            continue;
        }
        if (m == 0xd8 || m == 0x01 || (m >= 0xd0 && m <= 0xd7)) { /* no length */
            i += 2;
            continue;
        }
        if (m == 0xd9 || m == 0xda) /* end of image or scan data before any frame */
            return -1;
        size_t len = (size_t)p[i + 2] << 8 | p[i + 3];
        if (len < 2)
            return -1;
        if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) { /* SOFn */
            if (i + 9 > n || len < 7)
                return -1;
            *h = (uint32_t)p[i + 5] << 8 | p[i + 6];
            *w = (uint32_t)p[i + 7] << 8 | p[i + 8];
            return 0;
        }
        i += 2 + len;
    }
    return -1;
}

/* stb_image's short failure code, such as "outofdata". */
static const char *stbi_reason(void)
{
    const char *r = stbi_failure_reason();
    return r ? r : "unknown";
}

/* Pixels come from the library that allocated them. */
static void free_pixels(int format, unsigned char *px)
{
    if (px && format == FORMAT_WEBP)
        WebPFree(px);
    else if (px)
        stbi_image_free(px);
}

static int decode(const unsigned char *data, size_t len, int size, float *rgb, skip_reason *why,
                  char *detail, size_t dlen)
{
    detail[0] = '\0';
    if (size < 1 || size > MAX_SIDE) {
        snprintf(detail, dlen, "output size %d out of range", size);
        *why = SKIP_TOO_LARGE;
        return -1;
    }
    if (!data || len == 0) {
        snprintf(detail, dlen, "empty file");
        *why = SKIP_NOT_AN_IMAGE;
        return -1;
    }
    int format = detect_format(data, len);
    if (format == FORMAT_UNKNOWN) {
        snprintf(detail, dlen, "unknown format");
        *why = SKIP_NOT_AN_IMAGE;
        return -1;
    }
    if (len > INT_MAX) { /* stb_image takes an int length */
        snprintf(detail, dlen, "%zu bytes", len);
        *why = SKIP_TOO_LARGE;
        return -1;
    }

    /* The header's dimensions, checked before any pixel buffer exists. */
    uint32_t hw = 0, hh = 0;
    int ok;
    if (format == FORMAT_WEBP) {
        int w = 0, h = 0;
        ok = WebPGetInfo(data, len, &w, &h) && w > 0 && h > 0;
        hw = (uint32_t)w, hh = (uint32_t)h;
    } else {
        ok = (format == FORMAT_PNG ? png_dimensions(data, len, &hw, &hh)
                                   : jpeg_dimensions(data, len, &hw, &hh)) == 0;
    }
    if (!ok || hw == 0 || hh == 0) {
        snprintf(detail, dlen, "no valid header");
        *why = SKIP_CORRUPT_IMAGE;
        return -1;
    }
    if (hw > MAX_SIDE || hh > MAX_SIDE) {
        snprintf(detail, dlen, "header says %ux%u, limit %d a side", hw, hh, MAX_SIDE);
        *why = SKIP_TOO_LARGE;
        return -1;
    }
    if (format != FORMAT_WEBP) {
        /* stb_image must agree, so that what it allocates is what was checked. */
        int w, h, comp;
        if (!stbi_info_from_memory(data, (int)len, &w, &h, &comp) || (uint32_t)w != hw ||
            (uint32_t)h != hh) {
            snprintf(detail, dlen, "bad header (stb_image: %s)", stbi_reason());
            *why = SKIP_CORRUPT_IMAGE;
            return -1;
        }
    }

    int w = 0, h = 0, comp;
    unsigned char *px = format == FORMAT_WEBP ? WebPDecodeRGBA(data, len, &w, &h)
                                              : stbi_load_from_memory(data, (int)len, &w, &h, &comp, 4);
    if (!px || (uint32_t)w != hw || (uint32_t)h != hh) {
        if (format == FORMAT_WEBP)
            snprintf(detail, dlen, "libwebp cannot decode it");
        else if (px)
            snprintf(detail, dlen, "decoded size differs from the header");
        else
            snprintf(detail, dlen, "stb_image: %s", stbi_reason());
        free_pixels(format, px);
        *why = SKIP_CORRUPT_IMAGE;
        return -1;
    }

    /* RGBA -> RGB in place, alpha composited on white: a transparent
     * background is usually meant to be the page, and white is what viewers
     * show. The RGB pixel i is written at 3i <= 4i, behind the reads. */
    size_t npx = (size_t)w * (size_t)h;
    for (size_t i = 0; i < npx; i++) {
        unsigned a = px[4 * i + 3];
        for (int c = 0; c < 3; c++)
            px[3 * i + c] = (unsigned char)((px[4 * i + c] * a + 255u * (255u - a) + 127u) / 255u);
    }

    /* Center crop to the shorter side (the extra pixel of an odd margin goes
     * to the right / bottom), then resize. stb_image_resize's default filters
     * are Mitchell when shrinking (antialiased: the kernel widens with the
     * scale) and Catmull-Rom when enlarging. Filtering works on the stored
     * sRGB values as they are (STBIR_COLORSPACE_LINEAR means "no
     * conversion"), as PIL and torchvision resize do, so the pixels match the
     * usual preprocessing of image models. */
    int side = w < h ? w : h;
    const unsigned char *crop = px + ((size_t)((h - side) / 2) * (size_t)w + (size_t)((w - side) / 2)) * 3;
    size_t stride = (size_t)w * 3;
    unsigned char *out = xmalloc((size_t)size * size * 3);
    if (side == size) {
        for (int y = 0; y < size; y++)
            memcpy(out + (size_t)y * size * 3, crop + y * stride, (size_t)size * 3);
    } else if (!stbir_resize_uint8_generic(crop, side, side, (int)stride, out, size, size, size * 3, 3,
                                           STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP,
                                           STBIR_FILTER_DEFAULT, STBIR_COLORSPACE_LINEAR, NULL)) {
        die("out of memory resizing a %dx%d image", side, side);
    }
    free_pixels(format, px);

    size_t plane = (size_t)size * size;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++)
            rgb[c * plane + i] = out[3 * i + c] / 127.5f - 1.0f;
    free(out);
    return 0;
}

int image_decode(const unsigned char *data, size_t len, int size, float *rgb, skip_reason *why)
{
    char detail[256];
    return decode(data, len, size, rgb, why, detail, sizeof detail);
}
