/* wire.h - the dataloader's wire format, shared by the service and the
 * client library (no ZeroMQ here, so the parser can be fuzzed alone).
 *
 * Every integer is little-endian. A request is one frame of 32 bytes:
 *    0  "TFDQ"        4  u16 version     6  u16 op (1 batch, 2 info)
 *    8  u64 fingerprint of dataset + config (0: any)
 *   16  i64 step     24  i32 rank        28  i32 world
 * A reply is a 96-byte header frame and one payload frame:
 *    0  "TFDB"        4  u16 version     6  u16 status (0 batch, 1 error, 2 info)
 *    8  u64 fingerprint                 16  i64 step
 *   24  i32 rank  28 world  32 B (rows)  36 L  40 n_images  44 n_docs
 *   48  i32 C  52 h  56 w  60 patch
 *   64  u8 dtypes[8] of the payload's tensors, in payload order
 *       (sample_ids, tokens, modality, doc, image, noise_limit, latents): 2 1 1 1 1 1 3 0
 *       with 1 = I32, 2 = I64, 3 = F32
 *   72  u64 payload bytes   80 u32 CRC-32C of the payload   84..95 zero
 * The batch payload is the tensors back to back in that order:
 *   sample_ids I64 [n_docs], tokens/modality/doc/image I32 [B, L],
 *   noise_limit I32 [n_images], latents F32 [n_images, C, h, w].
 * An error reply carries the message (UTF-8) as payload, an info reply a
 * JSON object. */
#ifndef DATALOADER_CLIENT_WIRE_H
#define DATALOADER_CLIENT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define DL_PROTOCOL 1
#define DL_REQUEST_BYTES 32
#define DL_REPLY_HEADER_BYTES 96
#define DL_MAX_REQUEST 4096 /* the service's ZMQ_MAXMSGSIZE */
#define DL_MAX_STEP ((int64_t)1 << 40)
#define DL_MAX_WORLD 65536

enum { DL_OP_BATCH = 1, DL_OP_INFO = 2 };
enum { DL_OK = 0, DL_ERROR = 1, DL_INFO = 2 };
enum { DL_I32 = 1, DL_I64 = 2, DL_F32 = 3 };

typedef struct {
    int version, op;
    uint64_t fingerprint;
    int64_t step;
    int32_t rank, world;
} dl_request;

typedef struct {
    int version, status;
    uint64_t fingerprint;
    int64_t step;
    int32_t rank, world, B, L, n_images, n_docs, C, h, w, patch;
    uint64_t payload_bytes;
    uint32_t payload_crc;
} dl_reply;

/* One rank's rows of one step, as the trainer reads them. */
typedef struct {
    int64_t step;
    int rank, world, B, L, n_images, n_docs, C, h, w, patch;
    int64_t *sample_ids;                      /* [n_docs]: text doc d -> d, image i -> -1 - i */
    int32_t *tokens, *modality, *doc, *image; /* [B*L] */
    int32_t *noise_limit;                     /* [n_images]: 1 for image-first pairs */
    float *latents;                           /* [n_images, C, h, w], normalized */
} dl_batch;

void dl_request_encode(const dl_request *r, uint8_t out[DL_REQUEST_BYTES]);

/* Parses a request frame. Refuses (with err) a short or long frame, a wrong
 * magic, another version (err says which; *version holds it when known), an
 * unknown op, rank outside [0, world), world outside [1, 65536], step
 * outside [0, 2^40). */
int dl_request_parse(const void *data, size_t len, dl_request *r, char *err);

void dl_reply_encode(const dl_reply *h, uint8_t out[DL_REPLY_HEADER_BYTES]);
int dl_reply_parse(const void *data, size_t len, dl_reply *h, char *err);

/* Payload bytes of a batch with these counts; off[7] gets each tensor's
 * offset. Returns 0 when a count is negative or the size overflows. */
size_t dl_payload_layout(const dl_reply *h, size_t off[7]);

/* Points b's arrays into payload (8-byte aligned) as h describes. */
void dl_batch_view(dl_batch *b, void *payload, const dl_reply *h);

#endif
