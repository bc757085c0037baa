/* error.h - how command-line tools report failures.
 * Bad input (a file, record or field that is wrong): one line on stderr and
 * exit status 2. Anything else that stops a tool (out of memory, I/O): exit 1. */
#ifndef COMMON_ERROR_H
#define COMMON_ERROR_H

#include <stddef.h>

#define EXIT_BAD_INPUT 2

/* Size of the message buffer that library functions fill on failure. */
#define ERR_LEN 512

/* Formats a one-line message into err (ERR_LEN bytes); control characters
 * (which may come from a file's contents) become '?'. Returns -1, so that
 * `return set_error(err, ...);` reports a failure. */
__attribute__((format(printf, 2, 3))) int set_error(char *err, const char *fmt, ...);

__attribute__((noreturn, format(printf, 1, 2))) void die_input(const char *fmt, ...);
__attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...);

/* One line on stderr for bad input that does not stop the tool (a skipped
 * sample), assembled first so that it reaches stderr in one write; control
 * characters (names and keys come from the data) become '?'. */
__attribute__((format(printf, 1, 2))) void log_line(const char *fmt, ...);

/* malloc/calloc/strdup/strndup that die with a message instead of returning
 * NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
