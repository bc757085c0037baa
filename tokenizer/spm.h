/* spm.h - the C face of SentencePiece (tokenizer/spm_shim.cc, the project's
 * only C++): train a model, load one, encode text to ids, decode ids to text.
 *
 * Special ids follow docs/model.md section 1: BOS/EOS are the model's own; BOI and
 * EOI are its `<boi>`/`<eoi>` pieces when it has them, else they are appended
 * after its vocabulary (vocab_size = pieces + 2). PAD is `<pad>` or the
 * model's pad id when defined, else -1 (pad positions then carry token 0). */
#ifndef TOKENIZER_SPM_H
#define TOKENIZER_SPM_H

#include <stddef.h>
#include <stdint.h>

typedef struct spm spm;

typedef struct {
    int pieces;     /* the model's own vocabulary */
    int vocab_size; /* pieces, plus 2 when BOI/EOI are appended */
    int unk, bos, eos, boi, eoi, pad;
    int byte_fallback; /* 1 when every UTF-8 string encodes without unk */
} spm_ids;

/* Trains a model from text files (one sentence per line): model_type
 * "unigram" or "bpe", character_coverage 1.0, byte fallback, <boi> <eoi>
 * <pad> as user-defined symbols. Writes out_model atomically. */
int spm_train(const char *const *inputs, int n_inputs, int vocab, const char *model_type, int threads,
              const char *out_model, char *err);

spm *spm_load(const char *path, char *err);
void spm_free(spm *s);
const spm_ids *spm_get_ids(const spm *s);

/* Encodes len bytes of UTF-8 text (no BOS/EOS) into *ids (malloc'ed, grown
 * as needed; *cap is its capacity). Returns the number of ids, or -1 with err.
 * Safe to call from several threads on one spm. */
long spm_encode(const spm *s, const char *text, size_t len, int32_t **ids, size_t *cap, char *err);

/* Decodes ids (each < pieces) to UTF-8 text, malloc'ed into *text. Returns
 * its length, or -1 with err. */
long spm_decode(const spm *s, const int32_t *ids, size_t n, char **text, char *err);

#endif
