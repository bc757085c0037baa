/* main.c - the dataloader's command line.
 *
 *   dataloader tokenizer train --input FILE[,FILE...] --vocab N --out TOK.model [--type unigram|bpe]
 *   dataloader tokenize --tokenizer TOK.model --input FILE[,FILE...] --out TEXT_DIR      (tokenize.c)
 *   dataloader serve    --text TEXT_DIR --latents LATENT_DIR --tokenizer TOK.model
 *                       --patch-size P [--endpoint E] ...                             (serve.c)
 *   dataloader inspect  --endpoint E --step S --rank R --world W [--dump FILE]        (inspect.c)
 *
 * Bad input exits with status 2 and one line naming the file and field. */
#include "commands.h"
#include "../tokenizer/spm.h"
#include "../common/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmd_tokenizer_train(const args *a) {
    char err[ERR_LEN];
    const char *type = arg_str(a, "type", "unigram");
    if (strcmp(type, "unigram") && strcmp(type, "bpe")) die_input("%s %s: --type %s: expected unigram or bpe", a->prog, a->cmd, type);
    char *inputs = strdup(arg_required(a, "input"));
    const char *list[1024];
    int n = 0;
    char *save = NULL;
    for (char *in = strtok_r(inputs, ",", &save); in && n < 1024; in = strtok_r(NULL, ",", &save)) {
        FILE *f = fopen(in, "rb");
        if (!f) die_input("%s %s: --input %s: cannot open", a->prog, a->cmd, in);
        fclose(f);
        list[n++] = in;
    }
    if (n == 0) die_input("%s %s: --input lists no file", a->prog, a->cmd);
    int vocab = (int)arg_int(a, "vocab", 8192, 16), threads = (int)arg_int(a, "threads", 2, 1);
    const char *out = arg_required(a, "out");
    if (spm_train(list, n, vocab, type, threads, out, err)) die_input("%s", err);
    spm *s = spm_load(out, err);
    if (!s) die("%s", err);
    const spm_ids *ids = spm_get_ids(s);
    printf("{\"model\":\"%s\",\"type\":\"%s\",\"vocab_size\":%d,\"bos\":%d,\"eos\":%d,\"boi\":%d,\"eoi\":%d,\"pad\":%d}\n",
           out, type, ids->vocab_size, ids->bos, ids->eos, ids->boi, ids->eoi, ids->pad);
    spm_free(s);
    free(inputs);
    return 0;
}

static const char usage[] =
    "usage: dataloader tokenizer train --input FILE[,FILE...] --vocab N --out TOK.model [--type unigram|bpe] [--threads T]\n"
    "       dataloader tokenize --tokenizer TOK.model --input FILE[,FILE...] --out TEXT_DIR [--threads T]\n"
    "       dataloader serve    --text TEXT_DIR --latents LATENT_DIR --tokenizer TOK.model --patch-size P\n"
    "                           [--endpoint tcp://127.0.0.1:5555] [--seq-len 256] [--rows-per-rank 8] [--seed 0]\n"
    "                           [--image-fraction 0.5] [--caption-first 0.8] [--drop-caption 0.1]\n"
    "                           [--max-caption 64] [--noise-limit on|off] [--skip-bad-shards]\n"
    "       dataloader inspect  --endpoint E --step S --rank R --world W [--dump FILE.safetensors]\n"
    "                           [--timeout-ms MS] [--diffusion-steps T]\n";

int main(int argc, char **argv) {
    static const char *const train_flags[] = {"input", "vocab", "out", "type", "threads", NULL};
    static const char *const tokenize_flags[] = {"tokenizer", "input", "out", "threads", NULL};
    static const char *const serve_flags[] = {"text", "latents", "tokenizer", "endpoint", "patch-size", "seq-len",
                                              "rows-per-rank", "seed", "image-fraction", "caption-first",
                                              "drop-caption", "max-caption", "noise-limit", "skip-bad-shards!", NULL};
    static const char *const inspect_flags[] = {"endpoint", "step", "rank", "world", "dump", "timeout-ms",
                                                "diffusion-steps", NULL};
    static const command tokenizer_cmds[] = {{"train", cmd_tokenizer_train, train_flags}};
    static const command cmds[] = {
        {"tokenize", dl_cmd_tokenize, tokenize_flags},
        {"serve", dl_cmd_serve, serve_flags},
        {"inspect", dl_cmd_inspect, inspect_flags},
    };
    if (argc >= 2 && strcmp(argv[1], "tokenizer") == 0)
        return cli_main("dataloader tokenizer", argc - 1, argv + 1, tokenizer_cmds, 1, usage);
    return cli_main("dataloader", argc, argv, cmds, sizeof cmds / sizeof *cmds, usage);
}
