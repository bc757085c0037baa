// spm_shim.cc - the thin C++ shim over Debian's libsentencepiece behind
// tokenizer/spm.h. Nothing else in the project is C++.
extern "C" {
#include "spm.h"
#include "../common/atomic_file.h"
#include "../common/error.h"
}

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

struct spm {
    sentencepiece::SentencePieceProcessor proc;
    spm_ids ids;
};

// The id of a piece the model defines, or -1.
static int defined_piece(const sentencepiece::SentencePieceProcessor &p, const char *piece) {
    int id = p.PieceToId(piece);
    return p.IsUnknown(id) ? -1 : id;
}

int spm_train(const char *const *inputs, int n_inputs, int vocab, const char *model_type, int threads,
              const char *out_model, char *err) {
    std::string in;
    for (int i = 0; i < n_inputs; i++) {
        if (std::strchr(inputs[i], ',')) return set_error(err, "%s: input paths may not contain ','", inputs[i]);
        in += (i ? "," : "") + std::string(inputs[i]);
    }
    std::string prefix = std::string(out_model) + ".train." + std::to_string((long)getpid());
    std::ostringstream args;
    args << "--input=" << in << " --model_prefix=" << prefix << " --vocab_size=" << vocab
         << " --model_type=" << model_type << " --character_coverage=1.0 --byte_fallback=true"
         << " --user_defined_symbols=<boi>,<eoi>,<pad> --input_sentence_size=2000000"
         << " --shuffle_input_sentence=true --num_threads=" << threads
         << " --minloglevel=1 --max_sentence_length=16384";
    auto st = sentencepiece::SentencePieceTrainer::Train(args.str());
    std::string model = prefix + ".model", vocab_file = prefix + ".vocab";
    if (!st.ok()) {
        std::remove(model.c_str());
        std::remove(vocab_file.c_str());
        return set_error(err, "%s: training failed: %s", out_model, st.ToString().c_str());
    }
    std::ifstream f(model, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::remove(model.c_str());
    std::remove(vocab_file.c_str());
    if (bytes.empty()) return set_error(err, "%s: the trainer wrote no model", out_model);
    file_piece piece = {bytes.data(), bytes.size()};
    return atomic_write(out_model, &piece, 1, err);
}

spm *spm_load(const char *path, char *err) {
    spm *s = new spm;
    auto st = s->proc.Load(path);
    if (!st.ok()) {
        set_error(err, "%s: not a SentencePiece model: %s", path, st.ToString().c_str());
        delete s;
        return nullptr;
    }
    spm_ids &d = s->ids;
    d.pieces = s->proc.GetPieceSize();
    d.unk = s->proc.unk_id();
    d.bos = s->proc.bos_id();
    d.eos = s->proc.eos_id();
    if (d.bos < 0 || d.eos < 0) {
        set_error(err, "%s: the model defines no BOS or EOS piece", path);
        delete s;
        return nullptr;
    }
    d.boi = defined_piece(s->proc, "<boi>");
    d.eoi = defined_piece(s->proc, "<eoi>");
    d.vocab_size = d.pieces;
    if (d.boi < 0 || d.eoi < 0) { // docs/model.md section 1: append both
        d.boi = d.pieces;
        d.eoi = d.pieces + 1;
        d.vocab_size = d.pieces + 2;
    }
    d.pad = defined_piece(s->proc, "<pad>");
    if (d.pad < 0) d.pad = s->proc.pad_id();
    d.byte_fallback = defined_piece(s->proc, "<0xFF>") >= 0;
    return s;
}

void spm_free(spm *s) { delete s; }

const spm_ids *spm_get_ids(const spm *s) { return &s->ids; }

long spm_encode(const spm *s, const char *text, size_t len, int32_t **ids, size_t *cap, char *err) {
    std::vector<int> out;
    auto st = s->proc.Encode(absl::string_view(text, len), &out);
    if (!st.ok()) return set_error(err, "encode: %s", st.ToString().c_str());
    if (out.size() > *cap) {
        size_t n = out.size() * 2;
        int32_t *p = static_cast<int32_t *>(std::realloc(*ids, n * sizeof(int32_t)));
        if (!p) return set_error(err, "out of memory");
        *ids = p;
        *cap = n;
    }
    for (size_t i = 0; i < out.size(); i++) (*ids)[i] = out[i];
    return (long)out.size();
}

long spm_decode(const spm *s, const int32_t *ids, size_t n, char **text, char *err) {
    std::vector<int> in(ids, ids + n);
    std::string out;
    auto st = s->proc.Decode(in, &out);
    if (!st.ok()) return set_error(err, "decode: %s", st.ToString().c_str());
    *text = static_cast<char *>(std::malloc(out.size() + 1));
    if (!*text) return set_error(err, "out of memory");
    std::memcpy(*text, out.data(), out.size() + 1);
    return (long)out.size();
}
