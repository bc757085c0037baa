/* text_docs.h - the documents of a text file, by the project's one rule
 * (dataloader tokenize, trainer eval): in a .txt file, runs of non-blank
 * lines when the file has a blank (whitespace-only) line, else one document
 * per line. Documents are spans into the caller's buffer. */
#ifndef COMMON_TEXT_DOCS_H
#define COMMON_TEXT_DOCS_H

#include <stddef.h>

typedef struct {
    const char *text;
    size_t len;
} span;

typedef struct {
    span *d;
    size_t n, cap;
} span_list;

void spans_add(span_list *l, const char *text, size_t len);
/* 1 when p[0..n) holds only spaces, tabs and line ends. */
int text_blank(const char *p, size_t n);
/* Appends buf's documents to docs. */
void split_txt(const char *buf, size_t len, span_list *docs);

#endif
