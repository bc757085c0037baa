/* dir.c - creating folders; see dir.h. */
#include "dir.h"
#include "error.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

int make_dir(const char *dir, char *err) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return set_error(err, "%s: cannot create folder: %s", dir, strerror(errno));
    return 0;
}
