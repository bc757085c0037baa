/* text_docs.c - the documents of a text file (text_docs.h). */
#include "text_docs.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

void spans_add(span_list *l, const char *text, size_t len) {
    if (l->n == l->cap) {
        l->cap = l->cap * 2 + 1024;
        l->d = realloc(l->d, l->cap * sizeof(span));
        if (!l->d) die("out of memory");
    }
    l->d[l->n++] = (span){text, len};
}

int text_blank(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n') return 0;
    return 1;
}

/* Splits a .txt file into documents: runs of non-blank lines when the
 * file has a blank (whitespace-only) line, else one document per line. */
void split_txt(const char *buf, size_t len, span_list *docs) {
    int paragraphs = 0;
    for (size_t a = 0; a < len && !paragraphs;) {
        const char *nl = memchr(buf + a, '\n', len - a);
        size_t b = nl ? (size_t)(nl - buf) : len;
        paragraphs = text_blank(buf + a, b - a) && nl; /* a final unterminated blank tail is no separator */
        a = b + 1;
    }
    size_t doc = 0, a = 0;
    while (a < len) {
        const char *nl = memchr(buf + a, '\n', len - a);
        size_t b = nl ? (size_t)(nl - buf) : len;
        if (!paragraphs) {
            spans_add(docs, buf + a, b - a);
        } else if (text_blank(buf + a, b - a)) {
            if (a > doc) spans_add(docs, buf + doc, a - 1 - doc);
            doc = b + 1;
        }
        a = b + 1;
    }
    if (paragraphs && len > doc) spans_add(docs, buf + doc, len - doc);
}
