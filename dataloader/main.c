/* main.c - the dataloader's command line: the program's commands, each with
 * its table of flags (common/cli.h); `dataloader --help` and `dataloader
 * COMMAND --help` print them. `tokenizer train` lives here; tokenize, serve
 * and inspect in their own files, keygen in common/zmq_keys.c.
 *
 * Bad input exits with status 2 and one line naming the file and field. */
#include "commands.h"
#include "../tokenizer/spm.h"
#include "../common/error.h"
#include "../common/zmq_keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmd_tokenizer_train(const args *a) {
    char err[ERR_LEN];
    const char *type = arg_str(a, "type");
    char *inputs = strdup(arg_str(a, "input"));
    const char *list[1024];
    int n = 0;
    char *save = NULL;
    for (char *in = strtok_r(inputs, ",", &save); in && n < 1024; in = strtok_r(NULL, ",", &save)) {
        FILE *f = fopen(in, "rb");
        if (!f) die_input("%s %s: --input %s: cannot open: %s", a->prog->name, a->cmd->name, in, strerror(errno));
        fclose(f);
        list[n++] = in;
    }
    if (n == 0) die_input("%s %s: --input lists no file", a->prog->name, a->cmd->name);
    int vocab = (int)arg_int(a, "vocab"), threads = (int)arg_int(a, "threads");
    const char *out = arg_str(a, "out");
    if (spm_train(list, n, vocab, type, threads, out, err)) die_input("%s", err);
    spm *s = spm_load(out, err);
    if (!s) die("%s", err);
    const spm_ids *ids = spm_get_ids(s);
    printf(
        "{\"model\":\"%s\",\"type\":\"%s\",\"vocab_size\":%d,\"bos\":%d,\"eos\":%d,\"boi\":%d,\"eoi\":%d,\"pad\":%d}\n",
        out, type, ids->vocab_size, ids->bos, ids->eos, ids->boi, ids->eoi, ids->pad);
    spm_free(s);
    free(inputs);
    return 0;
}

static const cli_flag tokenizer_train_flags[] = {
    {"input", FLAG_TEXT | FLAG_REQUIRED, "FILE[,FILE...]", NULL, NULL, "text to learn the pieces from"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "TOK.model", NULL, NULL, "the SentencePiece model to write"},
    {"vocab", FLAG_INT, "N", "[16, inf)", "8192", "vocabulary size (BOI and EOI included)"},
    {"type", FLAG_CHOICE, "unigram|bpe", NULL, "unigram", "the SentencePiece algorithm"},
    {"threads", FLAG_INT, "T", "[1, inf)", "2", "threads"},
    {0},
};

static const cli_command tokenizer_train_command = {"tokenizer train",
                                                    "trains a SentencePiece tokenizer with BOI and EOI pieces",
                                                    cmd_tokenizer_train,
                                                    {tokenizer_train_flags}};

static const cli_command *const commands[] = {
    &tokenizer_train_command,
    &dl_tokenize_command,
    &dl_serve_command,
    &dl_inspect_command,
    &zkey_keygen_command,
};

static const cli_program program = {"dataloader",
                                    "Tokenizes text once and serves packed text-and-image rows to the trainer ranks.",
                                    commands, sizeof commands / sizeof *commands};

int main(int argc, char **argv) { return cli_main(&program, argc, argv); }
