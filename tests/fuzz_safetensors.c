/* fuzz_safetensors.c - libFuzzer target for the safetensors reader: st_parse
 * on arbitrary bytes and, when the header is accepted, st_read_f32 and
 * st_read_i32 of every tensor with its own shape (so that every accepted
 * header is also read to the end of each tensor's data).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon \
 *       tests/fuzz_safetensors.c common/safetensors.c common/error.c -lcjson -o /tmp/fuzz
 *   /tmp/fuzz -max_total_time=60 tests/fuzz_corpus/safetensors */
#include "../common/safetensors.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file f;
    char err[ERR_LEN];
    if (st_parse(data, size, "fuzz.safetensors", &f, err) != 0) return 0;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        /* The header was validated: the tensor's bytes lie inside the
         * input, so a float per element is at most 4 * size bytes. */
        size_t count = (t->end - t->begin) / st_dtype_size(t->dtype);
        void *dst = malloc(count ? count * 4 : 1);
        st_read_f32(&f, t->name, t->ndim, t->shape, dst, err);
        st_read_i32(&f, t->name, t->ndim, t->shape, dst, err);
        free(dst);
    }
    st_close(&f);
    return 0;
}
