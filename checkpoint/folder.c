/* folder.c - file-system steps shared by the checkpoint code (folder.h). */
#include "folder.h"
#include "../common/atomic_file.h"
#include "../common/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void ckpt_join(char *buf, const char *dir, const char *name) {
    if (snprintf(buf, CKPT_PATH_LEN, "%s/%s", dir, name) >= CKPT_PATH_LEN) die("%s/%s: path too long", dir, name);
}

void ckpt_step_path(char *buf, const char *dir, const char *prefix, long step) {
    char name[64];
    snprintf(name, sizeof name, "%s%08ld", prefix, step);
    ckpt_join(buf, dir, name);
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int ckpt_list_steps(const char *dir, long **steps, char *err) {
    *steps = NULL;
    DIR *dh = opendir(dir);
    if (!dh && errno == ENOENT) return 0;
    if (!dh) return set_error(err, "%s: cannot open folder: %s", dir, strerror(errno));
    int n = 0, cap = 0;
    size_t plen = strlen(CKPT_STEP_PREFIX);
    struct dirent *de;
    while ((de = readdir(dh))) {
        const char *s = de->d_name;
        if (strncmp(s, CKPT_STEP_PREFIX, plen) != 0 || !s[plen] || strspn(s + plen, "0123456789") != strlen(s + plen))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            *steps = realloc(*steps, sizeof(long) * cap);
            if (!*steps) die("out of memory");
        }
        (*steps)[n++] = strtol(s + plen, NULL, 10);
    }
    closedir(dh);
    if (n > 1) qsort(*steps, n, sizeof(long), cmp_long); /* qsort(NULL, 0) is undefined */
    return n;
}

static int remove_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb, (void)ftw;
    return type == FTW_DP ? rmdir(path) : unlink(path);
}

int ckpt_remove_tree(const char *path, char *err) {
    struct stat sb;
    if (lstat(path, &sb) != 0 && errno == ENOENT) return 0;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return set_error(err, "%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

int ckpt_remove_leftovers(const char *dir, char *err) {
    DIR *dh = opendir(dir);
    if (!dh) return set_error(err, "%s: cannot open folder: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(dh))) {
        if (strncmp(de->d_name, CKPT_TMP_PREFIX, strlen(CKPT_TMP_PREFIX)) != 0 &&
            strncmp(de->d_name, CKPT_TRASH_PREFIX, strlen(CKPT_TRASH_PREFIX)) != 0)
            continue;
        char path[CKPT_PATH_LEN];
        ckpt_join(path, dir, de->d_name);
        rc = ckpt_remove_tree(path, err);
    }
    closedir(dh);
    return rc;
}

int ckpt_copy_file(const char *src, const char *dst, char *err) {
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return set_error(err, "%s: cannot open: %s", src, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return set_error(err, "%s: not a readable regular file", src);
    }
    size_t size = (size_t)sb.st_size;
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (map == MAP_FAILED) return set_error(err, "%s: cannot mmap: %s", src, strerror(errno));
    int rc = atomic_write(dst, &(file_piece){map, size}, 1, err);
    if (map) munmap(map, size);
    return rc;
}

int ckpt_sync_dir(const char *dir, char *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return set_error(err, "%s: cannot open folder: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    if (rc != 0) return set_error(err, "%s: cannot sync folder: %s", dir, strerror(saved));
    return 0;
}

int ckpt_json_size(const cJSON *obj, const char *key, size_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || (double)(size_t)d != d) return 0;
    *out = (size_t)d;
    return 1;
}

int ckpt_plain_name(const char *name) {
    return name[0] && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}
