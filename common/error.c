/* error.c - failure reporting of the command-line tools (see error.h):
 * bad input exits 2, everything else exits 1, always with one line on stderr. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void vreport(const char *fmt, va_list ap) {
    /* Assemble the line first so that it reaches stderr in one write and
     * cannot interleave with the output of other ranks or threads. */
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "error: %s\n", line);
    fflush(stderr);
}

/* Control characters from a file's contents would garble the terminal or
 * split one report into several lines. */
static void make_printable(char *s) {
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

int set_error(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, ERR_LEN, fmt, ap);
    va_end(ap);
    make_printable(err);
    return -1;
}

void log_line(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    make_printable(line);
    fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

void die_input(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    exit(EXIT_BAD_INPUT);
}

void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    exit(1);
}

void *xmalloc(size_t n) {
    /* malloc(0) may return NULL legitimately; ask for one byte instead so
     * that NULL always means out of memory. */
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

char *xstrndup(const char *s, size_t n) {
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }
