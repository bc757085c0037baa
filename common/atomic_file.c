/* atomic_file.c - temp file, fsync, rename, directory fsync (atomic_file.h). */
#include "atomic_file.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* After a rename the new directory entry is durable only once the directory
 * itself is synced. */
static int fsync_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash == path ? 1 : slash - path) : 1;
    char *dir = xmalloc(len + 1);
    memcpy(dir, slash ? path : ".", len);
    dir[len] = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int atomic_write(const char *path, const file_piece *pieces, int n, char *err) {
    size_t tlen = strlen(path) + 32;
    char *tmp = xmalloc(tlen);
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        set_error(err, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    const char *step = NULL;
    for (int i = 0; !step && i < n; i++)
        if (pieces[i].len > 0 && write_all(fd, pieces[i].data, pieces[i].len) != 0) step = "write";
    if (!step && fsync(fd) != 0) step = "fsync";
    int saved = step ? errno : 0;
    if (close(fd) != 0 && !step) {
        step = "close";
        saved = errno;
    }
    if (!step && rename(tmp, path) != 0) {
        step = "rename";
        saved = errno;
    }
    if (step) {
        set_error(err, "%s: cannot %s %s: %s", path, step, tmp, strerror(saved));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    if (fsync_dir_of(path) != 0) {
        set_error(err, "%s: cannot sync its directory: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
