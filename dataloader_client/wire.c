/* wire.c - encode and parse the dataloader's wire format (wire.h). */
#include "wire.h"
#include "../common/error.h"

#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian and written as the integers are in memory"
#endif

static const uint8_t dtypes[8] = {DL_I64, DL_I32, DL_I32, DL_I32, DL_I32, DL_I32, DL_F32, 0};

#define PUT(buf, at, v) memcpy((buf) + (at), &(v), sizeof(v))
#define GET(buf, at, v) memcpy(&(v), (const uint8_t *)(buf) + (at), sizeof(v))

void dl_request_encode(const dl_request *r, uint8_t out[DL_REQUEST_BYTES]) {
    uint16_t version = (uint16_t)r->version, op = (uint16_t)r->op;
    memset(out, 0, DL_REQUEST_BYTES);
    memcpy(out, "TFDQ", 4);
    PUT(out, 4, version);
    PUT(out, 6, op);
    PUT(out, 8, r->fingerprint);
    PUT(out, 16, r->step);
    PUT(out, 24, r->rank);
    PUT(out, 28, r->world);
}

int dl_request_parse(const void *data, size_t len, dl_request *r, char *err) {
    memset(r, 0, sizeof *r);
    if (len < 8 || memcmp(data, "TFDQ", 4)) return set_error(err, "not a dataloader request (bad magic)");
    uint16_t version, op;
    GET(data, 4, version);
    r->version = version;
    /* The version comes first: another version may have another size. */
    if (version != DL_PROTOCOL)
        return set_error(err, "protocol version %u, this loader speaks %d", version, DL_PROTOCOL);
    if (len != DL_REQUEST_BYTES) return set_error(err, "request is %zu bytes, expected %d", len, DL_REQUEST_BYTES);
    GET(data, 6, op);
    GET(data, 8, r->fingerprint);
    GET(data, 16, r->step);
    GET(data, 24, r->rank);
    GET(data, 28, r->world);
    r->op = op;
    if (op != DL_OP_BATCH && op != DL_OP_INFO) return set_error(err, "unknown op %u", op);
    if (op == DL_OP_INFO) return 0;
    if (r->world < 1 || r->world > DL_MAX_WORLD)
        return set_error(err, "world %d outside 1..%d", r->world, DL_MAX_WORLD);
    if (r->rank < 0 || r->rank >= r->world) return set_error(err, "rank %d outside 0..%d", r->rank, r->world - 1);
    if (r->step < 0 || r->step >= DL_MAX_STEP) return set_error(err, "step %lld outside 0..2^40-1", (long long)r->step);
    return 0;
}

void dl_reply_encode(const dl_reply *h, uint8_t out[DL_REPLY_HEADER_BYTES]) {
    uint16_t version = (uint16_t)h->version, status = (uint16_t)h->status;
    memset(out, 0, DL_REPLY_HEADER_BYTES);
    memcpy(out, "TFDB", 4);
    PUT(out, 4, version);
    PUT(out, 6, status);
    PUT(out, 8, h->fingerprint);
    PUT(out, 16, h->step);
    const int32_t ints[10] = {h->rank, h->world, h->B, h->L, h->n_images, h->n_docs, h->C, h->h, h->w, h->patch};
    memcpy(out + 24, ints, 40);
    memcpy(out + 64, dtypes, 8);
    PUT(out, 72, h->payload_bytes);
    PUT(out, 80, h->payload_crc);
}

int dl_reply_parse(const void *data, size_t len, dl_reply *h, char *err) {
    memset(h, 0, sizeof *h);
    if (len < 8 || memcmp(data, "TFDB", 4)) return set_error(err, "not a dataloader reply (bad magic)");
    uint16_t version, status;
    GET(data, 4, version);
    GET(data, 6, status);
    h->version = version;
    h->status = status;
    if (version != DL_PROTOCOL)
        return set_error(err, "the loader speaks protocol version %u, this client %d", version, DL_PROTOCOL);
    if (len != DL_REPLY_HEADER_BYTES)
        return set_error(err, "reply header is %zu bytes, expected %d", len, DL_REPLY_HEADER_BYTES);
    GET(data, 8, h->fingerprint);
    GET(data, 16, h->step);
    int32_t ints[10];
    memcpy(ints, (const uint8_t *)data + 24, 40);
    h->rank = ints[0];
    h->world = ints[1];
    h->B = ints[2];
    h->L = ints[3];
    h->n_images = ints[4];
    h->n_docs = ints[5];
    h->C = ints[6];
    h->h = ints[7];
    h->w = ints[8];
    h->patch = ints[9];
    GET(data, 72, h->payload_bytes);
    GET(data, 80, h->payload_crc);
    if (status > DL_INFO) return set_error(err, "unknown reply status %u", status);
    if (status == DL_OK && memcmp((const uint8_t *)data + 64, dtypes, 8))
        return set_error(err, "reply dtypes differ from this client's (I64 I32 I32 I32 I32 I32 F32)");
    return 0;
}

size_t dl_payload_layout(const dl_reply *h, size_t off[7]) {
    if (h->B < 0 || h->L < 0 || h->n_images < 0 || h->n_docs < 0 || h->C < 0 || h->h < 0 || h->w < 0) return 0;
    /* Every count below is under 2^31 and every product of two under 2^62. */
    uint64_t BL = (uint64_t)h->B * (uint64_t)h->L, lat = (uint64_t)h->C * (uint64_t)h->h * (uint64_t)h->w;
    if (BL > ((uint64_t)1 << 36) || lat > ((uint64_t)1 << 36)) return 0;
    uint64_t sizes[7] = {8ull * (uint64_t)h->n_docs,     4 * BL, 4 * BL, 4 * BL, 4 * BL, 4ull * (uint64_t)h->n_images,
                         4 * lat * (uint64_t)h->n_images};
    uint64_t at = 0;
    for (int k = 0; k < 7; k++) {
        off[k] = (size_t)at;
        at += (sizes[k] + 7) & ~7ull; /* 8-byte aligned, so a view needs no copy */
    }
    return at > ((uint64_t)1 << 40) ? 0 : (size_t)at;
}

void dl_batch_view(dl_batch *b, void *payload, const dl_reply *h) {
    size_t off[7];
    dl_payload_layout(h, off);
    uint8_t *p = payload;
    *b = (dl_batch){.step = h->step,
                    .rank = h->rank,
                    .world = h->world,
                    .B = h->B,
                    .L = h->L,
                    .n_images = h->n_images,
                    .n_docs = h->n_docs,
                    .C = h->C,
                    .h = h->h,
                    .w = h->w,
                    .patch = h->patch};
    b->sample_ids = (int64_t *)(void *)(p + off[0]);
    b->tokens = (int32_t *)(void *)(p + off[1]);
    b->modality = (int32_t *)(void *)(p + off[2]);
    b->doc = (int32_t *)(void *)(p + off[3]);
    b->image = (int32_t *)(void *)(p + off[4]);
    b->noise_limit = (int32_t *)(void *)(p + off[5]);
    b->latents = (float *)(void *)(p + off[6]);
}
