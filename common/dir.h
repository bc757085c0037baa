/* dir.h - creating folders, for every program that writes outputs. */
#ifndef COMMON_DIR_H
#define COMMON_DIR_H

/* Creates dir if missing (one level; an existing folder is fine). On
 * failure err (ERR_LEN bytes) names dir and the system's reason. */
int make_dir(const char *dir, char *err);

#endif
