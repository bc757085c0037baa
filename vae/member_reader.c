/* member_reader.c - the members of one input (member_reader.h): a folder's
 * files, and a small ustar/pax/GNU tar reader.
 *
 * A folder is read flat (no subfolders), its files sorted by key then name.
 * A tar input that is truncated or malformed (bad checksum or number field,
 * broken pax record) ends with one line on stderr, "image_source: INPUT:
 * ..."; the member it cut fails to read. */
#include "member_reader.h"
#include "../common/error.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#define MAX_EXT_HEADER (1ull << 20) /* largest pax / GNU long-name record */

/* ---- member names ----------------------------------------------------- */

int unsafe_name(const char *name) {
    if (name[0] == '/') return 1;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') return 1;
        p += n;
        if (*p == '/') p++;
    }
    return 0;
}

size_t key_length(const char *name, const char **ext) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    const char *dot = strchr(base, '.');
    if (!dot || dot == base) return 0;
    *ext = dot + 1;
    return (size_t)(dot - name);
}

/* ---- readers: a tar shard or a folder, one member at a time ------------ */

/* Folder files sort by key first, then by name, so that a sample's members
 * are adjacent (as in a shard) and samples come in key order. */
static int cmp_member_names(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    const char *ex, *ey;
    size_t kx = key_length(x, &ex), ky = key_length(y, &ey);
    size_t n = kx < ky ? kx : ky;
    int c = memcmp(x, y, n);
    if (c) return c;
    if (kx != ky) return kx < ky ? -1 : 1;
    return strcmp(x, y);
}

int reader_open(reader *r, const char *path) {
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
            if (snprintf(full, sizeof full, "%s/%s", path, e->d_name) >= (int)sizeof full || stat(full, &fst) != 0 ||
                !S_ISREG(fst.st_mode))
                continue;
            if (r->n_names == cap) {
                cap = cap ? 2 * cap : 64;
                char **names = realloc(r->names, (size_t)cap * sizeof *names);
                if (!names) die("out of memory listing %s", path);
                r->names = names;
            }
            r->names[r->n_names++] = xstrdup(e->d_name);
        }
        closedir(d);
        if (r->n_names) qsort(r->names, (size_t)r->n_names, sizeof *r->names, cmp_member_names);
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

void reader_close(reader *r) {
    if (r->fp) fclose(r->fp);
    for (int i = 0; i < r->n_names; i++) free(r->names[i]);
    free(r->names);
    free(r->name);
    free(r->next_name);
    memset(r, 0, sizeof *r);
}

/* Ends a tar input after a problem: nothing after it can be trusted. */
static void tar_stop(reader *r, const char *what, uint64_t at) {
    log_line("image_source: %s: %s at byte %llu; rest of the input skipped", r->path, what, (unsigned long long)at);
    r->ended = 1;
}

/* Octal number (spaces before, NUL or spaces after), or GNU base-256 when the
 * high bit of the first byte is set. -1 when the field is malformed. */
static int tar_number(const unsigned char *f, size_t n, uint64_t *out) {
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
    while (i < n && f[i] == ' ') i++;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++)
        v = v * 8 + (uint64_t)(f[i] - '0'); /* at most 12 digits: no overflow */
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0') return -1;
    *out = v;
    return 0;
}

/* Bytes left in the file after the current position (0 past its end). */
static uint64_t tar_avail(const reader *r) { return r->pos < r->file_size ? r->file_size - r->pos : 0; }

/* Consumes the current member's data without reading it. -1 when the tar
 * ends inside the data (the input then ends). */
static int tar_skip(reader *r) {
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
static int tar_read(reader *r, unsigned char **data) {
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
static int pax_parse(reader *r, const char *p, size_t n) {
    while (n) {
        size_t len = 0, i = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9' && len < n) len = len * 10 + (size_t)(p[i++] - '0');
        if (i == 0 || i >= n || p[i] != ' ' || len <= i + 1 || len > n || p[len - 1] != '\n') return -1;
        const char *kv = p + i + 1, *end = p + len - 1;
        const char *eq = memchr(kv, '=', (size_t)(end - kv));
        if (!eq) return -1;
        size_t klen = (size_t)(eq - kv);
        if (klen == 4 && !memcmp(kv, "path", 4)) {
            free(r->next_name);
            r->next_name = xstrndup(eq + 1, strnlen(eq + 1, (size_t)(end - eq - 1)));
        } else if (klen == 4 && !memcmp(kv, "size", 4)) {
            uint64_t v = 0;
            const char *q = eq + 1;
            if (q == end) return -1;
            for (; q < end; q++) {
                if (*q < '0' || *q > '9' || v > (1ull << 54)) return -1;
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
static int tar_next(reader *r) {
    if ((r->remaining || r->padding) && tar_skip(r) != 0) return 0;
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
        for (size_t i = 0; i < sizeof h && zero; i++) zero = h[i] == 0;
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
            if (tar_read(r, &ext) != 0) return 0;
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
            if (tar_skip(r) != 0) return 0;
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
                if (np) full[np++] = '/';
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
            if (tar_skip(r) != 0) return 0;
            continue;
        }
        free(r->name);
        r->name = name;
        r->size = size;
        return 1;
    }
}

int reader_next(reader *r) {
    if (r->ended) return 0;
    if (r->is_tar) return tar_next(r);
    if (r->next_index == r->n_names) {
        r->ended = 1;
        return 0;
    }
    free(r->name);
    r->name = xstrdup(r->names[r->next_index++]);
    r->size = 0; /* known when read */
    return 1;
}

int reader_skip(reader *r) { return r->is_tar ? tar_skip(r) : 0; }

int reader_read(reader *r, uint64_t max, unsigned char **data, uint64_t *len) {
    *data = NULL;
    if (r->is_tar) {
        *len = r->size;
        if (r->size > max) return tar_skip(r) == 0 ? 1 : -1;
        return tar_read(r, data);
    }
    char full[PATH_MAX];
    snprintf(full, sizeof full, "%s/%s", r->path, r->name);
    FILE *fp = fopen(full, "rb");
    struct stat st;
    if (!fp || fstat(fileno(fp), &st) != 0) {
        log_line("image_source: %s: %s", full, strerror(errno));
        if (fp) fclose(fp);
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
