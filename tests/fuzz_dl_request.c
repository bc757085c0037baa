/* fuzz_dl_request.c - libFuzzer target for the dataloader's wire parser
 * (dataloader_client/wire.c): the request parser on arbitrary bytes, the reply
 * header parser on the same bytes, and the payload layout of any header it
 * accepts (the sizes a client would trust). `make fuzz` runs it. */
#include "../dataloader_client/wire.h"
#include "../common/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[ERR_LEN];
    dl_request r;
    if (dl_request_parse(data, size, &r, err) == 0) {
        uint8_t again[DL_REQUEST_BYTES];
        dl_request_encode(&r, again); /* what was accepted encodes back */
    }
    dl_reply h;
    if (dl_reply_parse(data, size, &h, err) == 0) {
        size_t off[7];
        dl_payload_layout(&h, off);
    }
    return 0;
}
