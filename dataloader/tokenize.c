/* tokenize.c - `dataloader tokenize`: text files to token shards, once.
 *
 *   dataloader tokenize --tokenizer TOK.model --input FILE[,FILE...] --out TEXT_DIR [--threads T]
 *
 * Inputs: .txt, where documents are separated by blank lines (a file without
 * any blank line has one document per line), or .jsonl, one JSON object per
 * line with a string field "text". Each input becomes TEXT_DIR/<name>.tok
 * (token_shard.h); TEXT_DIR/dataset.json, written last, lists the shards with
 * their counts and CRC-32C and pins the tokenizer (its CRC-32C and special
 * ids), so `serve` refuses text of another tokenizer. Empty documents (and
 * those that encode to no token) are skipped and counted. Documents are
 * encoded on all threads; the output does not depend on the thread count. */
#include "commands.h"
#include "../tokenizer/spm.h"
#include "token_shard.h"
#include "../common/crc32c.h"
#include "../common/error.h"
#include "../common/file_read.h"
#include "../common/json_file.h"
#include "../common/text_docs.h"
#include "../common/timing.h"
#include "../common/dir.h"

#include <cjson/cJSON.h>
#include <libgen.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Splits a .jsonl file: the "text" field of each non-empty line. The spans
 * point into *owned, which keeps the decoded strings. */
static void split_jsonl(const char *path, const char *buf, size_t len, span_list *docs, char ***owned,
                        size_t *n_owned) {
    long line = 0;
    for (size_t a = 0; a < len;) {
        const char *nl = memchr(buf + a, '\n', len - a);
        size_t b = nl ? (size_t)(nl - buf) : len;
        line++;
        if (!text_blank(buf + a, b - a)) {
            cJSON *j = cJSON_ParseWithLength(buf + a, b - a);
            const cJSON *t = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
            if (!j) die_input("%s: line %ld: not valid JSON", path, line);
            if (!cJSON_IsString(t)) die_input("%s: line %ld: field 'text': missing or not a string", path, line);
            *owned = realloc(*owned, (*n_owned + 1) * sizeof(char *));
            if (!*owned) die("out of memory");
            char *copy = strdup(t->valuestring);
            if (!copy) die("out of memory");
            (*owned)[(*n_owned)++] = copy;
            spans_add(docs, copy, strlen(copy));
            cJSON_Delete(j);
        }
        a = b + 1;
    }
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* "dir/wordnet.train.txt" -> "wordnet.train" */
static void stem(const char *path, char *out, size_t len) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    char *base = basename(tmp), *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = '\0';
    snprintf(out, len, "%s", base);
}

typedef struct {
    long docs, empty;
    uint64_t tokens, bytes;
} counts;

/* Encodes one input's documents on every thread and writes its shard. */
static void tokenize_input(const spm *tok, const char *path, const char *out_path, uint64_t tok_crc, cJSON *shards,
                           const char *name, counts *total, double *encode_s) {
    size_t len;
    char read_err[ERR_LEN];
    char *buf = file_read(path, SIZE_MAX, &len, read_err);
    if (!buf) die_input("%s", read_err);
    span_list docs = {0};
    char **owned = NULL;
    size_t n_owned = 0;
    if (ends_with(path, ".jsonl"))
        split_jsonl(path, buf, len, &docs, &owned, &n_owned);
    else if (ends_with(path, ".txt"))
        split_txt(buf, len, &docs);
    else
        die_input("%s: unknown input type (expected .txt or .jsonl)", path);

    int32_t **ids = xcalloc(docs.n, sizeof(int32_t *));
    long *n_ids = xcalloc(docs.n, sizeof(long));
    int failed = 0;
    char err[ERR_LEN] = "";
    double t0 = now_s();
#pragma omp parallel
    {
        int32_t *tmp = NULL;
        size_t cap = 0;
        char terr[ERR_LEN];
#pragma omp for schedule(dynamic, 64)
        for (size_t d = 0; d < docs.n; d++) {
            long n = text_blank(docs.d[d].text, docs.d[d].len)
                ? 0
                : spm_encode(tok, docs.d[d].text, docs.d[d].len, &tmp, &cap, terr);
            if (n < 0) {
#pragma omp critical
                {
                    failed = 1;
                    set_error(err, "%s: document %zu: %s", path, d, terr);
                }
                continue;
            }
            n_ids[d] = n;
            ids[d] = xmalloc(sizeof(int32_t) * (n ? n : 1));
            memcpy(ids[d], tmp, sizeof(int32_t) * n);
        }
        free(tmp);
    }
    *encode_s += now_s() - t0;
    if (failed) die_input("%s", err);

    uint64_t *offsets = xmalloc(sizeof(uint64_t) * (docs.n + 1)), n_tok = 0;
    long kept = 0, empty = 0;
    for (size_t d = 0; d < docs.n; d++) n_tok += (uint64_t)n_ids[d];
    int32_t *all = xmalloc(sizeof(int32_t) * (n_tok ? n_tok : 1));
    offsets[0] = 0;
    for (size_t d = 0; d < docs.n; d++) {
        if (n_ids[d] == 0) {
            empty++;
            free(ids[d]);
            continue;
        }
        memcpy(all + offsets[kept], ids[d], sizeof(int32_t) * n_ids[d]);
        offsets[kept + 1] = offsets[kept] + (uint64_t)n_ids[d];
        kept++;
        free(ids[d]);
    }
    const spm_ids *si = spm_get_ids(tok);
    uint32_t crc;
    if (token_shard_write(out_path, all, offsets, (uint64_t)kept, (uint32_t)si->vocab_size, tok_crc, &crc, err))
        die("%s", err);
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", crc);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "file", name);
    cJSON_AddNumberToObject(e, "docs", kept);
    cJSON_AddNumberToObject(e, "tokens", (double)n_tok);
    cJSON_AddNumberToObject(e, "skipped_empty", empty);
    cJSON_AddStringToObject(e, "crc32c", hex);
    cJSON_AddItemToArray(shards, e);
    fprintf(stderr, "%s: %ld documents, %llu tokens, %ld empty skipped\n", path, kept, (unsigned long long)n_tok,
            empty);
    total->docs += kept;
    total->empty += empty;
    total->tokens += n_tok;
    total->bytes += len;
    for (size_t i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    free(all);
    free(offsets);
    free(ids);
    free(n_ids);
    free(docs.d);
    free(buf);
}

static int cmd_tokenize(const args *a) {
    char err[ERR_LEN], path[4096];
    const char *model = arg_str(a, "tokenizer"), *out = arg_str(a, "out");
    int threads = (int)arg_int(a, "threads");
    if (threads > 0) omp_set_num_threads(threads);
    spm *tok = spm_load(model, err);
    if (!tok) die_input("%s", err);
    uint32_t tok_crc;
    if (crc32c_file(model, &tok_crc, err)) die_input("%s", err);
    if (make_dir(out, err)) die("%s", err);

    char *inputs = strdup(arg_str(a, "input"));
    cJSON *root = cJSON_CreateObject(), *shards = cJSON_CreateArray();
    counts total = {0};
    double t0 = now_s(), encode_s = 0;
    int n_inputs = 0;
    char *save = NULL;
    for (char *in = strtok_r(inputs, ",", &save); in; in = strtok_r(NULL, ",", &save), n_inputs++) {
        char name[1024];
        stem(in, name, sizeof name);
        strncat(name, ".tok", sizeof name - strlen(name) - 1);
        const cJSON *e;
        cJSON_ArrayForEach(e, shards) if (strcmp(cJSON_GetObjectItem(e, "file")->valuestring, name) == 0)
            die_input("%s: two inputs would both write %s/%s", in, out, name);
        snprintf(path, sizeof path, "%s/%s", out, name);
        tokenize_input(tok, in, path, tok_crc, shards, name, &total, &encode_s);
    }
    const spm_ids *si = spm_get_ids(tok);
    cJSON *t = cJSON_CreateObject();
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", tok_crc);
    cJSON_AddStringToObject(t, "model", model);
    cJSON_AddStringToObject(t, "crc32c", hex);
    cJSON_AddNumberToObject(t, "pieces", si->pieces);
    cJSON_AddNumberToObject(t, "vocab_size", si->vocab_size);
    cJSON_AddNumberToObject(t, "bos", si->bos);
    cJSON_AddNumberToObject(t, "eos", si->eos);
    cJSON_AddNumberToObject(t, "boi", si->boi);
    cJSON_AddNumberToObject(t, "eoi", si->eoi);
    cJSON_AddNumberToObject(t, "pad", si->pad);
    cJSON_AddItemToObject(root, "tokenizer", t);
    cJSON_AddNumberToObject(root, "docs", total.docs);
    cJSON_AddNumberToObject(root, "tokens", (double)total.tokens);
    cJSON_AddNumberToObject(root, "skipped_empty", total.empty);
    cJSON_AddItemToObject(root, "shards", shards);
    snprintf(path, sizeof path, "%s/dataset.json", out);
    if (json_write(path, root, err)) die("%s", err);
    double dt = now_s() - t0;
    printf("{\"inputs\":%d,\"docs\":%ld,\"tokens\":%llu,\"skipped_empty\":%ld,\"threads\":%d,"
           "\"encode_tokens_per_s\":%.0f,\"encode_mb_per_s\":%.2f,\"total_s\":%.3f}\n",
           n_inputs, total.docs, (unsigned long long)total.tokens, total.empty, omp_get_max_threads(),
           total.tokens / encode_s, total.bytes / encode_s / 1e6, dt);
    free(inputs);
    spm_free(tok);
    return 0;
}

static const cli_flag tokenize_flags[] = {
    {"tokenizer", FLAG_TEXT | FLAG_REQUIRED, "TOK.model", NULL, NULL, "the SentencePiece model"},
    {"input", FLAG_TEXT | FLAG_REQUIRED, "FILE[,FILE...]", NULL, NULL,
     ".txt (documents between blank lines) or .jsonl"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "TEXT_DIR", NULL, NULL, "token shards and dataset.json"},
    {0},
};

const cli_command dl_tokenize_command = {
    "tokenize", "text files to token shards, once", cmd_tokenize, {tokenize_flags, cli_threads_flags}};
