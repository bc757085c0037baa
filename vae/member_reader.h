/* member_reader.h - the members of one input of an image source, a
 * WebDataset tar shard or a plain folder, one member at a time, and the
 * WebDataset rules for member names (the key, names that are unsafe).
 *
 * Problems are one line on stderr each ("image_source: INPUT: ..."): an
 * input that cannot be opened is skipped, and a tar that is truncated or
 * malformed ends at the problem, since nothing after it can be trusted. */
#ifndef VAE_MEMBER_READER_H
#define VAE_MEMBER_READER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Public so that a source can hold one in place; callers read path and
 * name, the rest is the reader's. */
typedef struct {
    const char *path; /* the input, for log lines */
    int is_tar;
    int ended;  /* no more members (end, or a logged problem) */
    char *name; /* current member */
    uint64_t size;
    /* tar */
    FILE *fp;
    uint64_t pos, file_size;
    uint64_t remaining; /* data bytes of the current member not consumed */
    uint64_t padding;   /* then zero bytes up to the next 512 boundary */
    char *next_name;    /* from a GNU 'L' or pax path record */
    int64_t next_size;  /* from a pax size record, or -1 */
    /* folder */
    char **names;
    int n_names, next_index;
} reader;

/* A folder (read flat, its files in key order) or else a tar file. path must
 * outlive the reader. -1 when it cannot be opened (logged). */
int reader_open(reader *r, const char *path);
void reader_close(reader *r);

/* Advances to the next member: 1 with r->name set, 0 when there are no more
 * (the end, or a problem that was logged). */
int reader_next(reader *r);

/* Consumes the current member without reading it; -1 when the input broke. */
int reader_skip(reader *r);

/* Reads the current member if it is at most max bytes: 0 with *data (NUL
 * appended) and *len; 1 when it is larger (not read, *len gets its size);
 * -1 when it could not be read. */
int reader_read(reader *r, uint64_t max, unsigned char **data, uint64_t *len);

/* Absolute, or a ".." component: such a name could escape a folder if the
 * shard were ever unpacked, and is not a sample this project wrote. */
int unsafe_name(const char *name);

/* Length of the key of name (up to the first '.' of the basename), or 0 when
 * the member has none (hidden file or no extension). *ext gets the rest. */
size_t key_length(const char *name, const char **ext);

#endif
