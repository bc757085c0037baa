/* serve.c - `vae_service serve`: the VAE as a ZeroMQ service, so that the
 * sampler can encode images and decode latents without holding a VAE itself.
 *
 *   vae_service serve --vae VAE_DIR --endpoint tcp://127.0.0.1:PORT [--threads T] [--batch B]
 *       [--curve-key DIR | --insecure]
 *
 * One ZMQ_ROUTER socket bound to ENDPOINT answers any number of REQ (or
 * DEALER) clients. Requests are handled one at a time, in arrival order: the
 * VAE already uses every core for one batch, so overlapping requests would
 * only share the cores and need more memory. --batch B caps the images per
 * vae_encode / vae_decode call (default: the whole request in one call), which
 * bounds the VAE's working memory for large requests. A port of `*` binds any
 * free port; the start line names the endpoint actually bound. Beyond
 * loopback it speaks CURVE with --curve-key (common/zmq_keys.h; clients set
 * ZMQ_CURVE_SERVERKEY to its server.pub), or binds without it only when told
 * --insecure.
 *
 * Wire protocol, version 1
 * ------------------------
 * A request is one multipart message: [envelope] HEADER PAYLOAD...
 * The envelope is what ROUTER puts in front (the client's identity) up to and
 * including the first empty frame: the delimiter a REQ socket adds itself (a
 * DEALER client should send it too). The reply goes back with the same
 * envelope. HEADER is a JSON object in UTF-8 (at most 64 KiB); PAYLOAD frames
 * are binary. Tensors are F32 little-endian, C order. A request may say
 * "version":1; any other version is refused. Replies are HEADER PAYLOAD...
 *
 *   {"op":"info"}
 *     -> {"ok":true,"version":1,"vae":DIR,"in_channels":3,"out_channels":3,
 *         "latent_channels":C,"downscale":f,"block_out_channels":[...],
 *         "scaling_factor":s,"shift_factor":t,"sample_size":S,"dtype":"F32",
 *         "max_images":256,"max_side":4096,"max_pixels":67108864}
 *   {"op":"encode","size":S} + one frame per image, each a WebP, PNG or JPEG
 *     file (decoded, alpha on white, center-cropped, resized to S x S)
 *     -> {"ok":true,"n":N,"C":C,"h":S/f,"w":S/f,"dtype":"F32"}
 *        + mean F32 [n, C, h, w] + logvar F32 [n, C, h, w]
 *   {"op":"encode_rgb","n":N,"H":H,"W":W} + images F32 [n, 3, H, W] in [-1, 1]
 *     -> the encode reply, h = H/f, w = W/f
 *   {"op":"decode","n":N,"h":h,"w":w} + latents F32 [n, C, h, w]
 *     -> {"ok":true,"n":N,"H":h*f,"W":w*f,"dtype":"F32"} + images F32 [n, 3, H, W]
 *   the same with "format":"webp"
 *     -> {"ok":true,"n":N,"H":H,"W":W,"format":"webp"} + one lossless WebP file per image
 *   anything wrong -> {"ok":false,"error":"..."} and no payload frames.
 *
 * Latents are the VAE's own (encode's mean): the sampler applies
 * scaling_factor and shift_factor itself. Every number in a request is checked
 * before anything is allocated from it: 1 <= n <= 256, S, H, W multiples of f
 * in [f, 4096], n*H*W <= 2^26 pixels, payload bytes exactly what the header
 * implies, values finite. A frame over 1 GiB never reaches this code: ZeroMQ
 * drops it and the connection that sent it (ZMQ_MAXMSGSIZE).
 *
 * SIGINT and SIGTERM end the loop after the request in progress; the exit
 * line on stderr counts the requests served. */
#include "commands.h"
#include "../common/timing.h"
#include "../common/zmq_service.h"
#include "../vae/image_decode.h"
#include "../vae/vae.h"
#include "../nn/kernels.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <webp/encode.h>
#include <zmq.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "serve.c sends floats as they are in memory; the protocol says little-endian"
#endif

#define PROTOCOL_VERSION 1
#define MAX_IMAGES 256
#define MAX_SIDE 4096
#define MAX_PIXELS ((int64_t)1 << 26) /* n * H * W of one request */
#define MAX_HEADER (64 << 10)
#define MAX_FRAME ((int64_t)1 << 30) /* ZMQ_MAXMSGSIZE */
#define MAX_FRAMES (ZSVC_MAX_ENVELOPE + 2 + MAX_IMAGES)
#define POLL_MS 200 /* how soon a signal is noticed when idle */

enum { OP_INFO, OP_ENCODE, OP_ENCODE_RGB, OP_DECODE, OPS };
static const char *const op_names[OPS] = {"info", "encode", "encode_rgb", "decode"};

typedef struct {
    vae_model *v;
    const vae_config *c;
    const char *dir;
    int f, batch; /* downscale; images per VAE call, 0 = all */
    long requests, errors, by_op[OPS], encoded, decoded, lost;
} server;

/* Payload frames are sent without a copy: ZeroMQ calls release when done. */
typedef struct {
    cJSON *header;
    int n;
    zsvc_part p[MAX_IMAGES + 1];
} reply;

static void release_malloc(void *data, void *hint) {
    (void)hint;
    free(data);
}
static void release_webp(void *data, void *hint) {
    (void)hint;
    WebPFree(data);
}

static void reply_add(reply *r, void *data, size_t len, zmq_free_fn *release) {
    r->p[r->n++] = (zsvc_part){data, len, release};
}

static void reply_clear(reply *r) {
    for (int i = 0; i < r->n; i++) r->p[i].release(r->p[i].data, NULL);
    r->n = 0;
}

/* ------------------------------------------------------------ checking */

/* An integer field in [lo, hi] and a multiple of `multiple`. JSON numbers are
 * doubles: compare as doubles so that 1e30 or 2.5 cannot reach an int. */
static int get_int(const cJSON *req, const char *name, int lo, int hi, int multiple, int *out, char *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(req, name);
    if (!j) return set_error(err, "missing \"%s\"", name);
    double d = j->valuedouble;
    if (!cJSON_IsNumber(j) || !(d >= lo && d <= hi) || d != floor(d))
        return set_error(err, "\"%s\" must be an integer in [%d, %d]", name, lo, hi);
    if ((int)d % multiple)
        return set_error(err, "\"%s\" %d is not a multiple of the downscale %d", name, (int)d, multiple);
    *out = (int)d;
    return 0;
}

static int check_pixels(int n, int H, int W, char *err) {
    if ((int64_t)n * H * W > MAX_PIXELS)
        return set_error(err, "%d images of %dx%d are over the limit of %lld pixels a request", n, H, W,
                         (long long)MAX_PIXELS);
    return 0;
}

/* The floats of a payload frame of exactly `count` floats, all finite. Frames
 * are normally aligned (ZeroMQ mallocs them); a misaligned one is copied
 * rather than read through a misaligned float pointer. *copy is what to free. */
static const float *payload_f32(zmq_msg_t *m, size_t count, const char *what, float **copy, char *err) {
    *copy = NULL;
    size_t len = zmq_msg_size(m);
    if (len != count * sizeof(float)) {
        set_error(err, "%s payload is %zu bytes, expected %zu (%zu floats)", what, len, count * sizeof(float), count);
        return NULL;
    }
    const float *x = zmq_msg_data(m);
    if ((uintptr_t)x % _Alignof(float)) {
        *copy = xmalloc(len);
        memcpy(*copy, x, len);
        x = *copy;
    }
    for (size_t i = 0; i < count; i++)
        if (!isfinite(x[i])) {
            free(*copy);
            *copy = NULL;
            set_error(err, "%s payload: value %zu is not finite", what, i);
            return NULL;
        }
    return x;
}

/* ------------------------------------------------------------ ops */

static void run_encode(server *s, const float *images, int n, int H, int W, float *mean, float *logvar) {
    size_t per = (size_t)s->c->in_channels * H * W, lat = (size_t)s->c->latent_channels * (H / s->f) * (W / s->f);
    int b = s->batch > 0 ? s->batch : n;
    for (int i = 0; i < n; i += b) {
        int m = n - i < b ? n - i : b;
        vae_encode(s->v, images + i * per, m, H, W, mean + i * lat, logvar + i * lat);
    }
    s->encoded += n;
}

/* The encode reply for images [n, 3, H, W]. */
static void encode_reply(server *s, const float *images, int n, int H, int W, reply *r) {
    int C = s->c->latent_channels, h = H / s->f, w = W / s->f;
    size_t bytes = sizeof(float) * n * C * h * w;
    float *mean = xmalloc(bytes), *logvar = xmalloc(bytes);
    run_encode(s, images, n, H, W, mean, logvar);
    cJSON_AddNumberToObject(r->header, "n", n);
    cJSON_AddNumberToObject(r->header, "C", C);
    cJSON_AddNumberToObject(r->header, "h", h);
    cJSON_AddNumberToObject(r->header, "w", w);
    cJSON_AddStringToObject(r->header, "dtype", "F32");
    reply_add(r, mean, bytes, release_malloc);
    reply_add(r, logvar, bytes, release_malloc);
}

static int op_info(server *s, const cJSON *req, zmq_msg_t *pl, int npl, reply *r, char *err) {
    (void)req;
    (void)pl;
    if (npl) return set_error(err, "info takes no payload frames, got %d", npl);
    const vae_config *c = s->c;
    cJSON *h = r->header;
    cJSON_AddNumberToObject(h, "version", PROTOCOL_VERSION);
    cJSON_AddStringToObject(h, "vae", s->dir);
    cJSON_AddNumberToObject(h, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(h, "out_channels", c->out_channels);
    cJSON_AddNumberToObject(h, "latent_channels", c->latent_channels);
    cJSON_AddNumberToObject(h, "downscale", s->f);
    cJSON_AddItemToObject(h, "block_out_channels", cJSON_CreateIntArray(c->block_out_channels, c->n_blocks));
    cJSON_AddNumberToObject(h, "scaling_factor", c->scaling_factor);
    cJSON_AddNumberToObject(h, "shift_factor", c->shift_factor);
    cJSON_AddNumberToObject(h, "sample_size", c->sample_size);
    cJSON_AddStringToObject(h, "dtype", "F32");
    cJSON_AddNumberToObject(h, "max_images", MAX_IMAGES);
    cJSON_AddNumberToObject(h, "max_side", MAX_SIDE);
    cJSON_AddNumberToObject(h, "max_pixels", (double)MAX_PIXELS);
    return 0;
}

static int op_encode(server *s, const cJSON *req, zmq_msg_t *pl, int npl, reply *r, char *err) {
    int S;
    if (get_int(req, "size", s->f, MAX_SIDE, s->f, &S, err)) return -1;
    if (npl < 1 || npl > MAX_IMAGES)
        return set_error(err, "encode takes 1 to %d image frames, got %d", MAX_IMAGES, npl);
    if (check_pixels(npl, S, S, err)) return -1;
    size_t per = (size_t)3 * S * S;
    float *rgb = xmalloc(sizeof(float) * npl * per);
    for (int i = 0; i < npl; i++) {
        skip_reason why;
        if (image_decode(zmq_msg_data(&pl[i]), zmq_msg_size(&pl[i]), S, rgb + i * per, &why)) {
            free(rgb);
            return set_error(err, "image %d: %s", i, skip_reason_name(why));
        }
    }
    encode_reply(s, rgb, npl, S, S, r);
    free(rgb);
    return 0;
}

static int op_encode_rgb(server *s, const cJSON *req, zmq_msg_t *pl, int npl, reply *r, char *err) {
    int n, H, W;
    if (get_int(req, "n", 1, MAX_IMAGES, 1, &n, err) || get_int(req, "H", s->f, MAX_SIDE, s->f, &H, err) ||
        get_int(req, "W", s->f, MAX_SIDE, s->f, &W, err) || check_pixels(n, H, W, err))
        return -1;
    if (npl != 1) return set_error(err, "encode_rgb takes 1 payload frame, got %d", npl);
    float *copy;
    const float *x = payload_f32(&pl[0], (size_t)n * s->c->in_channels * H * W, "images [n, 3, H, W]", &copy, err);
    if (!x) return -1;
    encode_reply(s, x, n, H, W, r);
    free(copy);
    return 0;
}

static uint8_t to_u8(float x) {
    float v = (x + 1.0f) * 127.5f + 0.5f; /* the same rounding as decode's files */
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

static int op_decode(server *s, const cJSON *req, zmq_msg_t *pl, int npl, reply *r, char *err) {
    int n, h, w, f = s->f, webp = 0;
    if (get_int(req, "n", 1, MAX_IMAGES, 1, &n, err) || get_int(req, "h", 1, MAX_SIDE / f, 1, &h, err) ||
        get_int(req, "w", 1, MAX_SIDE / f, 1, &w, err) || check_pixels(n, h * f, w * f, err))
        return -1;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(req, "format");
    if (fmt) {
        if (!cJSON_IsString(fmt) || (strcmp(fmt->valuestring, "webp") && strcmp(fmt->valuestring, "f32")))
            return set_error(err, "\"format\" must be \"webp\" or \"f32\"");
        webp = strcmp(fmt->valuestring, "webp") == 0;
    }
    if (npl != 1) return set_error(err, "decode takes 1 payload frame, got %d", npl);
    int C = s->c->latent_channels, H = h * f, W = w * f, oc = s->c->out_channels;
    float *copy;
    const float *z = payload_f32(&pl[0], (size_t)n * C * h * w, "latents [n, C, h, w]", &copy, err);
    if (!z) return -1;

    size_t per = (size_t)oc * H * W, lat = (size_t)C * h * w;
    float *img = xmalloc(sizeof(float) * n * per);
    int b = s->batch > 0 ? s->batch : n;
    for (int i = 0; i < n; i += b) vae_decode(s->v, z + i * lat, n - i < b ? n - i : b, h, w, img + i * per);
    free(copy);
    s->decoded += n;

    cJSON_AddNumberToObject(r->header, "n", n);
    cJSON_AddNumberToObject(r->header, "H", H);
    cJSON_AddNumberToObject(r->header, "W", W);
    if (!webp) {
        cJSON_AddStringToObject(r->header, "dtype", "F32");
        reply_add(r, img, sizeof(float) * n * per, release_malloc);
        return 0;
    }
    cJSON_AddStringToObject(r->header, "format", "webp");
    uint8_t *rgb = xmalloc((size_t)H * W * 3);
    for (int i = 0; i < n; i++) {
        const float *x = img + i * per;
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++)
                for (int ch = 0; ch < 3; ch++)
                    rgb[((size_t)y * W + xx) * 3 + ch] = to_u8(x[((size_t)ch * H + y) * W + xx]);
        uint8_t *out = NULL;
        size_t bytes = WebPEncodeLosslessRGB(rgb, W, H, W * 3, &out);
        if (!bytes) {
            WebPFree(out);
            free(rgb);
            free(img);
            return set_error(err, "image %d: WebP encoding failed", i);
        }
        reply_add(r, out, bytes, release_webp);
    }
    free(rgb);
    free(img);
    return 0;
}

typedef int op_fn(server *s, const cJSON *req, zmq_msg_t *pl, int npl, reply *r, char *err);
static op_fn *const ops[OPS] = {op_info, op_encode, op_encode_rgb, op_decode};

/* Parses the header frame and runs its op; on failure *err says why and r
 * holds no payload. */
static int handle(server *s, zmq_msg_t *frames, int nframes, reply *r, char *err) {
    if (nframes < 1) return set_error(err, "no header frame");
    size_t len = zmq_msg_size(&frames[0]);
    if (len > MAX_HEADER) return set_error(err, "header is %zu bytes, limit %d", len, MAX_HEADER);
    /* cJSON wants a NUL-terminated string; a NUL inside would end it early
     * and let the rest pass unparsed. */
    if (memchr(zmq_msg_data(&frames[0]), 0, len)) return set_error(err, "header holds a NUL byte");
    char text[MAX_HEADER + 1];
    memcpy(text, zmq_msg_data(&frames[0]), len);
    text[len] = '\0';
    cJSON *req = cJSON_ParseWithOpts(text, NULL, 1);
    if (!req) return set_error(err, "header is not valid JSON");
    int rc = -1, op = -1;
    const cJSON *jop = cJSON_GetObjectItemCaseSensitive(req, "op");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(req, "version");
    if (!cJSON_IsObject(req)) {
        set_error(err, "header must be a JSON object");
    } else if (ver && !(cJSON_IsNumber(ver) && ver->valuedouble == PROTOCOL_VERSION)) {
        set_error(err, "unsupported protocol version (this server speaks %d)", PROTOCOL_VERSION);
    } else if (!cJSON_IsString(jop)) {
        set_error(err, "missing \"op\"");
    } else {
        for (int k = 0; k < OPS; k++)
            if (strcmp(jop->valuestring, op_names[k]) == 0) op = k;
        if (op < 0) {
            set_error(err, "unknown op \"%.64s\"", jop->valuestring);
        } else {
            rc = ops[op](s, req, frames + 1, nframes - 1, r, err);
            s->by_op[op]++;
        }
    }
    cJSON_Delete(req);
    return rc;
}

/* ------------------------------------------------------------ the loop */

/* Receives one whole request, answers it, and frees it. */
static void serve_one(server *s, zmq_service *svc) {
    static zmq_msg_t frames[MAX_FRAMES];
    static reply r;
    zsvc_request req;
    if (!zsvc_recv(svc, frames, MAX_FRAMES, &req)) return;
    s->requests++;

    char err[ERR_LEN];
    r.header = cJSON_CreateObject();
    cJSON_AddBoolToObject(r.header, "ok", 1);
    int rc = req.dropped ? set_error(err, "too many frames (limit %d payload frames)", MAX_IMAGES)
                         : handle(s, frames + req.nenv, req.n - req.nenv, &r, err);
    if (rc) {
        reply_clear(&r);
        cJSON_Delete(r.header);
        r.header = cJSON_CreateObject();
        cJSON_AddBoolToObject(r.header, "ok", 0);
        cJSON_AddStringToObject(r.header, "error", err);
        s->errors++;
    }
    char *text = cJSON_PrintUnformatted(r.header);
    if (!text) die("out of memory");
    if (zsvc_send(svc, &req, text, strlen(text), r.p, r.n)) s->lost++;
    r.n = 0;
    cJSON_free(text);
    cJSON_Delete(r.header);
    zsvc_request_close(&req);
}

static int cmd_serve(const args *a) {
    const char *dir = arg_str(a, "vae"), *endpoint = arg_str(a, "endpoint");
    int batch = arg_given(a, "batch") ? (int)arg_int(a, "batch") : 0;
    char err[ERR_LEN];
    zsvc_auth auth; /* first: a missing key should not wait for the VAE to load */
    if (zsvc_auth_from_args(a, endpoint, &auth, err)) die_input("%s %s: %s", a->prog->name, a->cmd->name, err);
    nn_init((int)arg_int(a, "threads"));
    vae_model *v = vae_load(dir, err);
    if (!v) die_input("%s", err);
    server s = {.v = v, .c = vae_cfg(v), .dir = dir, .f = vae_downscale(vae_cfg(v)), .batch = batch};

    zmq_service svc;
    if (zsvc_open(&svc, endpoint, MAX_FRAME, &auth, err)) {
        vae_free(v);
        die_input("%s %s: %s", a->prog->name, a->cmd->name, err);
    }
    printf("serving %s on %s\n", dir, svc.endpoint);
    fflush(stdout);
    double t0 = now_s();
    while (!zsvc_stopping())
        if (zsvc_wait(&svc, POLL_MS)) serve_one(&s, &svc);

    zsvc_close(&svc);
    vae_free(v);
    char lost[64] = "";
    if (s.lost) snprintf(lost, sizeof lost, ", %ld replies lost", s.lost);
    fprintf(stderr,
            "vae_service serve: %ld requests (info %ld, encode %ld, encode_rgb %ld, decode %ld; %ld errors%s), "
            "%ld images encoded, %ld decoded in %.1f s\n",
            s.requests, s.by_op[OP_INFO], s.by_op[OP_ENCODE], s.by_op[OP_ENCODE_RGB], s.by_op[OP_DECODE], s.errors,
            lost, s.encoded, s.decoded, now_s() - t0);
    return 0;
}

static const cli_flag serve_flags[] = {
    {"vae", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE folder"},
    {"endpoint", FLAG_TEXT | FLAG_REQUIRED, "tcp://HOST:PORT", NULL, NULL, "where to bind (port *: any free port)"},
    {"batch", FLAG_INT, "B", "[1, inf)", NULL, "images per encode or decode call (default: the whole request)"},
    {0},
};

const cli_command vae_serve_command = {"serve",
                                       "the VAE as a ZeroMQ service: encode images, decode latents",
                                       cmd_serve,
                                       {serve_flags, zsvc_auth_flags, cli_threads_flags}};
