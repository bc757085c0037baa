/* test_vae_serve.c - tests of `vae_service serve` (vae_service/serve.c) over
 * real ZeroMQ sockets. A tiny VAE (configs/vae-tiny.json, random weights) is
 * saved in a mkdtemp folder; $BIN/vae_service serve runs as a child process
 * on tcp://127.0.0.1:* (the server binds a free port and names it in its
 * start line, so there is no race for a port). Checks: info; encode of a PNG
 * and a WebP made here, encode_rgb and decode against image_decode +
 * vae_encode / vae_decode in this process on the same weights; decode to
 * WebP; error replies for malformed requests, after which the server still
 * answers; two clients at once and a DEALER client; SIGTERM ends it with
 * status 0; bad startup input exits 2 with one line. The child is killed on
 * every way out (atexit, and PR_SET_PDEATHSIG should this process crash). */
#include "check.h"
#include "proc.h"
#include "../nn/kernels.h"
#include "../vae/image_decode.h"
#include "../vae/vae.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include <stb/stb_image_write.h>
#include <webp/decode.h>
#include <webp/encode.h>

#define TIMEOUT_MS 20000 /* a hung server fails the test instead of hanging it */
#define MAX_REPLY 300

static char dir[] = "/tmp/test_vae_serve.XXXXXX";
static char vae_dir[4200], server_bin[4200];
static pid_t child = -1;
static int child_out = -1; /* read end of the child's stdout */
static int server_dead;    /* a request timed out: the REQ socket is stuck */

static void kill_child(void) { kill_wait(&child); }

/* ---- requests ------------------------------------------------------------- */

typedef struct {
    int n; /* frames after the header */
    zmq_msg_t m[MAX_REPLY];
    cJSON *header;
} answer;

static void answer_free(answer *a) {
    for (int i = 0; i < a->n; i++) zmq_msg_close(&a->m[i]);
    a->n = 0;
    cJSON_Delete(a->header);
    a->header = NULL;
}

/* Receives a reply: the header, then every further frame into a->m. */
static int receive(void *sock, answer *a) {
    memset(a, 0, sizeof *a);
    zmq_msg_t h;
    zmq_msg_init(&h);
    if (zmq_msg_recv(&h, sock, 0) < 0) {
        zmq_msg_close(&h);
        server_dead = 1;
        return -1;
    }
    int more = zmq_msg_more(&h);
    char *text = malloc(zmq_msg_size(&h) + 1);
    memcpy(text, zmq_msg_data(&h), zmq_msg_size(&h));
    text[zmq_msg_size(&h)] = '\0';
    a->header = cJSON_Parse(text);
    free(text);
    zmq_msg_close(&h);
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
        more = zmq_msg_more(&m);
        if (a->n < MAX_REPLY)
            a->m[a->n++] = m;
        else
            zmq_msg_close(&m);
    }
    return 0;
}

/* Sends the header text and nparts payload frames, waits for the reply. */
static int request(void *sock, const char *header, const void *const *data, const size_t *len, int nparts, answer *a) {
    memset(a, 0, sizeof *a);
    if (server_dead) return -1;
    if (zmq_send(sock, header, strlen(header), nparts ? ZMQ_SNDMORE : 0) < 0) return -1;
    for (int i = 0; i < nparts; i++)
        if (zmq_send(sock, data[i], len[i], i + 1 < nparts ? ZMQ_SNDMORE : 0) < 0) return -1;
    return receive(sock, a);
}

static int ok_of(const answer *a) { return a->header && cJSON_IsTrue(cJSON_GetObjectItem(a->header, "ok")); }

static double num_of(const answer *a, const char *name) {
    const cJSON *j = a->header ? cJSON_GetObjectItem(a->header, name) : NULL;
    return cJSON_IsNumber(j) ? j->valuedouble : NAN;
}

static const char *error_of(const answer *a) {
    const cJSON *j = a->header ? cJSON_GetObjectItem(a->header, "error") : NULL;
    return cJSON_IsString(j) ? j->valuestring : "";
}

/* Largest |reply - want| over n floats of frame m; INFINITY when the frame
 * has another size. The frame is copied out: it need not be aligned. */
static double frame_diff(zmq_msg_t *m, const float *want, size_t n) {
    if (zmq_msg_size(m) != n * sizeof(float)) return INFINITY;
    float *got = malloc(n * sizeof(float));
    memcpy(got, zmq_msg_data(m), n * sizeof(float));
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)got[i] - want[i]));
    free(got);
    return d;
}

/* ---- data ----------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t n;
} buf;

static void stb_put(void *ctx, void *data, int n) {
    buf *b = ctx;
    b->p = realloc(b->p, b->n + n);
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static unsigned char *pattern(int w, int h, int seed) {
    unsigned char *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                px[(y * w + x) * 3 + c] = (unsigned char)((x * 37 + y * 11 * (c + 1) + seed * 53 + c * 80) & 255);
    return px;
}

static uint64_t rng_state = 12345;

static float uniform(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) / (double)(1ull << 24));
}

static uint8_t to_u8(float x) {
    float v = (x + 1.0f) * 127.5f + 0.5f;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* ---- tests ---------------------------------------------------------------- */

static void test_info(void *sock) {
    answer a;
    int rc = request(sock, "{\"op\":\"info\"}", NULL, NULL, 0, &a);
    CHECK(rc == 0 && ok_of(&a) && a.n == 0, "info: ok, no payload");
    CHECK(num_of(&a, "version") == 1 && num_of(&a, "latent_channels") == 4 && num_of(&a, "downscale") == 2 &&
              num_of(&a, "in_channels") == 3 && num_of(&a, "out_channels") == 3,
          "info: version 1, latent_channels 4, downscale 2, in_channels 3");
    answer_free(&a);
}

static void test_encode(void *sock, vae_model *v) {
    /* A PNG (20x12, cropped to its center) and a lossy WebP (16x24). */
    unsigned char *p1 = pattern(20, 12, 1), *p2 = pattern(16, 24, 2);
    buf png = {0};
    stbi_write_png_to_func(stb_put, &png, 20, 12, 3, p1, 20 * 3);
    uint8_t *webp = NULL;
    size_t webp_len = WebPEncodeRGB(p2, 16, 24, 16 * 3, 90, &webp);
    CHECK(png.n > 0 && webp_len > 0, "encode: test images made");

    int S = 8, C = 4, h = S / 2;
    size_t per = (size_t)3 * S * S, lat = (size_t)C * h * h;
    float *rgb = malloc(sizeof(float) * 2 * per), *mean = malloc(sizeof(float) * 2 * lat),
          *logvar = malloc(sizeof(float) * 2 * lat);
    skip_reason why;
    int dec = image_decode(png.p, png.n, S, rgb, &why) == 0 && image_decode(webp, webp_len, S, rgb + per, &why) == 0;
    CHECK(dec, "encode: image_decode in-process");
    vae_encode(v, rgb, 2, S, S, mean, logvar);

    answer a;
    const void *data[2] = {png.p, webp};
    size_t len[2] = {png.n, webp_len};
    int rc = request(sock, "{\"op\":\"encode\",\"size\":8}", data, len, 2, &a);
    CHECK(rc == 0 && ok_of(&a) && a.n == 2, "encode: ok with mean and logvar frames (%s)", error_of(&a));
    CHECK(num_of(&a, "n") == 2 && num_of(&a, "C") == C && num_of(&a, "h") == h && num_of(&a, "w") == h,
          "encode: header n 2, C 4, h 4, w 4");
    if (a.n == 2) {
        double dm = frame_diff(&a.m[0], mean, 2 * lat), dl = frame_diff(&a.m[1], logvar, 2 * lat);
        CHECK(dm <= 1e-6 && dl <= 1e-6, "encode: mean and logvar match in-process vae_encode (max diff %g, %g)", dm,
              dl);
    }
    answer_free(&a);

    /* The same images with a truncated PNG as image 1: an error naming it. */
    const void *bad[2] = {png.p, png.p};
    size_t bad_len[2] = {png.n, png.n / 2};
    rc = request(sock, "{\"op\":\"encode\",\"size\":8}", bad, bad_len, 2, &a);
    CHECK(rc == 0 && !ok_of(&a) && a.n == 0 && strcmp(error_of(&a), "image 1: corrupt image") == 0,
          "encode: truncated PNG -> \"image 1: corrupt image\" (%s)", error_of(&a));
    answer_free(&a);
    const void *junk[1] = {"not an image at all"};
    size_t junk_len[1] = {19};
    rc = request(sock, "{\"op\":\"encode\",\"size\":8}", junk, junk_len, 1, &a);
    CHECK(rc == 0 && !ok_of(&a) && strcmp(error_of(&a), "image 0: not an image") == 0,
          "encode: junk bytes -> \"image 0: not an image\" (%s)", error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"encode\",\"size\":7}", data, len, 2, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "multiple"), "encode: size 7 refused (%s)", error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"encode\",\"size\":8}", NULL, NULL, 0, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "image frames"), "encode: no images refused (%s)",
          error_of(&a));
    answer_free(&a);

    free(p1), free(p2), free(png.p), WebPFree(webp), free(rgb), free(mean), free(logvar);
}

static void test_encode_rgb(void *sock, vae_model *v) {
    int n = 2, H = 8, W = 12, C = 4, h = H / 2, w = W / 2;
    size_t count = (size_t)n * 3 * H * W, lat = (size_t)n * C * h * w;
    float *x = malloc(sizeof(float) * count), *mean = malloc(sizeof(float) * lat),
          *logvar = malloc(sizeof(float) * lat);
    for (size_t i = 0; i < count; i++) x[i] = uniform(-1, 1);
    vae_encode(v, x, n, H, W, mean, logvar);

    answer a;
    const void *data[1] = {x};
    size_t len[1] = {sizeof(float) * count};
    int rc = request(sock, "{\"op\":\"encode_rgb\",\"n\":2,\"H\":8,\"W\":12}", data, len, 1, &a);
    CHECK(rc == 0 && ok_of(&a) && a.n == 2 && num_of(&a, "h") == h && num_of(&a, "w") == w,
          "encode_rgb: ok, h 4, w 6 (%s)", error_of(&a));
    if (a.n == 2) {
        double dm = frame_diff(&a.m[0], mean, lat), dl = frame_diff(&a.m[1], logvar, lat);
        CHECK(dm <= 1e-6 && dl <= 1e-6, "encode_rgb: matches in-process vae_encode (max diff %g, %g)", dm, dl);
    }
    answer_free(&a);

    len[0] -= 4;
    rc = request(sock, "{\"op\":\"encode_rgb\",\"n\":2,\"H\":8,\"W\":12}", data, len, 1, &a);
    CHECK(rc == 0 && !ok_of(&a) && a.n == 0 && strstr(error_of(&a), "bytes"),
          "encode_rgb: payload 4 bytes short refused (%s)", error_of(&a));
    answer_free(&a);
    len[0] += 4;
    x[5] = NAN;
    rc = request(sock, "{\"op\":\"encode_rgb\",\"n\":2,\"H\":8,\"W\":12}", data, len, 1, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "not finite"), "encode_rgb: NaN refused (%s)", error_of(&a));
    answer_free(&a);
    /* Sizes the server must refuse before allocating anything for them. */
    rc = request(sock, "{\"op\":\"encode_rgb\",\"n\":256,\"H\":4096,\"W\":4096}", NULL, NULL, 0, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "pixels"), "encode_rgb: 256 x 4096^2 refused (%s)",
          error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"encode_rgb\",\"n\":2,\"H\":8192,\"W\":8}", NULL, NULL, 0, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "\"H\""), "encode_rgb: H 8192 refused (%s)", error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"encode_rgb\",\"n\":2,\"H\":9,\"W\":8}", data, len, 1, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "multiple"), "encode_rgb: H 9 refused (%s)", error_of(&a));
    answer_free(&a);
    free(x), free(mean), free(logvar);
}

static void test_decode(void *sock, vae_model *v) {
    int n = 2, h = 4, w = 6, C = 4, H = 8, W = 12;
    size_t lat = (size_t)n * C * h * w, count = (size_t)n * 3 * H * W;
    float *z = malloc(sizeof(float) * lat), *img = malloc(sizeof(float) * count);
    for (size_t i = 0; i < lat; i++) z[i] = uniform(-2, 2);
    vae_decode(v, z, n, h, w, img);

    answer a;
    const void *data[1] = {z};
    size_t len[1] = {sizeof(float) * lat};
    int rc = request(sock, "{\"op\":\"decode\",\"n\":2,\"h\":4,\"w\":6}", data, len, 1, &a);
    CHECK(rc == 0 && ok_of(&a) && a.n == 1 && num_of(&a, "H") == H && num_of(&a, "W") == W,
          "decode: ok, H 8, W 12, one frame (%s)", error_of(&a));
    if (a.n == 1) {
        double d = frame_diff(&a.m[0], img, count);
        CHECK(d <= 1e-6, "decode: matches in-process vae_decode (max diff %g)", d);
    }
    answer_free(&a);

    rc = request(sock, "{\"op\":\"decode\",\"n\":2,\"h\":4,\"w\":6,\"format\":\"webp\"}", data, len, 1, &a);
    CHECK(rc == 0 && ok_of(&a) && a.n == 2, "decode webp: ok, one frame per image (%s)", error_of(&a));
    for (int i = 0; i < a.n && i < 2; i++) {
        int ww = 0, hh = 0;
        const uint8_t *p = zmq_msg_data(&a.m[i]);
        size_t plen = zmq_msg_size(&a.m[i]);
        CHECK(WebPGetInfo(p, plen, &ww, &hh) && ww == W && hh == H, "decode webp: image %d is a %dx%d WebP", i, ww, hh);
        uint8_t *rgb = WebPDecodeRGB(p, plen, &ww, &hh);
        int same = rgb != NULL;
        for (int y = 0; same && y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++)
                    same &= rgb[(y * W + x) * 3 + c] == to_u8(img[(((size_t)i * 3 + c) * H + y) * W + x]);
        CHECK(same, "decode webp: image %d is lossless: pixels are the F32 decode's, rounded", i);
        WebPFree(rgb);
    }
    answer_free(&a);

    len[0] = sizeof(float) * lat - 4;
    rc = request(sock, "{\"op\":\"decode\",\"n\":2,\"h\":4,\"w\":6}", data, len, 1, &a);
    CHECK(rc == 0 && !ok_of(&a) && a.n == 0 && strstr(error_of(&a), "bytes"), "decode: wrong payload size refused (%s)",
          error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"decode\",\"n\":100000,\"h\":4,\"w\":6}", NULL, NULL, 0, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "\"n\""), "decode: n 100000 refused (%s)", error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"decode\",\"n\":1e300,\"h\":-4,\"w\":6.5}", NULL, NULL, 0, &a);
    CHECK(rc == 0 && !ok_of(&a), "decode: n 1e300 refused (%s)", error_of(&a));
    answer_free(&a);
    len[0] = sizeof(float) * lat;
    rc = request(sock, "{\"op\":\"decode\",\"n\":2,\"h\":4,\"w\":6,\"format\":\"tiff\"}", data, len, 1, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "format"), "decode: format tiff refused (%s)", error_of(&a));
    answer_free(&a);
    free(z), free(img);
}

static void test_errors(void *sock) {
    static const struct {
        const char *header, *want, *name;
    } cases[] = {
        {"{\"op\":\"frobnicate\"}", "unknown op", "unknown op"},
        {"{\"op\":", "JSON", "bad JSON"},
        {"{\"op\":\"info\"} trailing", "JSON", "JSON with trailing bytes"},
        {"", "JSON", "empty header"},
        {"[1,2]", "object", "header not an object"},
        {"{\"size\":8}", "op", "missing op"},
        {"{\"op\":7}", "op", "op not a string"},
        {"{\"op\":\"info\",\"version\":2}", "version", "protocol version 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        answer a;
        int rc = request(sock, cases[i].header, NULL, NULL, 0, &a);
        CHECK(rc == 0 && !ok_of(&a) && a.n == 0 && strstr(error_of(&a), cases[i].want), "errors: %s -> error (%s)",
              cases[i].name, error_of(&a));
        answer_free(&a);
    }
    answer a;
    const void *data[1] = {"x"};
    size_t len[1] = {1};
    int rc = request(sock, "{\"op\":\"info\"}", data, len, 1, &a);
    CHECK(rc == 0 && !ok_of(&a), "errors: info with a payload refused (%s)", error_of(&a));
    answer_free(&a);
    char nul[] = "{\"op\":\"info\"}\0junk";
    zmq_send(sock, nul, sizeof nul - 1, 0);
    rc = receive(sock, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "NUL"), "errors: header with a NUL byte refused (%s)",
          error_of(&a));
    answer_free(&a);
    const void *many[300];
    size_t many_len[300];
    for (int i = 0; i < 300; i++) many[i] = "x", many_len[i] = 1;
    rc = request(sock, "{\"op\":\"encode\",\"size\":8}", many, many_len, 300, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "too many frames"), "errors: 300 image frames refused (%s)",
          error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"encode\",\"size\":8}", many, many_len, 257, &a);
    CHECK(rc == 0 && !ok_of(&a) && strstr(error_of(&a), "1 to 256"), "errors: 257 image frames refused (%s)",
          error_of(&a));
    answer_free(&a);
    rc = request(sock, "{\"op\":\"info\"}", NULL, NULL, 0, &a);
    CHECK(rc == 0 && ok_of(&a), "errors: the server still answers after the errors");
    answer_free(&a);
}

/* Two REQ clients with requests in flight at once, and a DEALER client that
 * sends the empty delimiter itself. */
static void test_clients(void *ctx, const char *endpoint, void *sock) {
    void *other = zmq_socket(ctx, ZMQ_REQ), *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int t = TIMEOUT_MS, zero = 0;
    zmq_setsockopt(other, ZMQ_RCVTIMEO, &t, sizeof t);
    zmq_setsockopt(other, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &t, sizeof t);
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(other, endpoint);
    zmq_connect(dealer, endpoint);
    const char *info = "{\"op\":\"info\"}";
    zmq_send(sock, info, strlen(info), 0);
    zmq_send(other, info, strlen(info), 0);
    answer a, b;
    int ra = receive(sock, &a), rb = receive(other, &b);
    CHECK(ra == 0 && rb == 0 && ok_of(&a) && ok_of(&b), "clients: two REQ clients at once both answered");
    answer_free(&a), answer_free(&b);

    zmq_send(dealer, "", 0, ZMQ_SNDMORE);
    zmq_send(dealer, info, strlen(info), 0);
    int rc = receive(dealer, &a); /* the delimiter comes back first, as "header" */
    CHECK(rc == 0 && a.n == 1 && zmq_msg_size(&a.m[0]) > 0, "clients: DEALER gets [delimiter, reply]");
    if (rc == 0 && a.n == 1) {
        char text[4096];
        size_t k = zmq_msg_size(&a.m[0]) < sizeof text - 1 ? zmq_msg_size(&a.m[0]) : sizeof text - 1;
        memcpy(text, zmq_msg_data(&a.m[0]), k);
        text[k] = '\0';
        cJSON *j = cJSON_Parse(text);
        CHECK(j && cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")), "clients: DEALER's reply is the info reply");
        cJSON_Delete(j);
    }
    answer_free(&a);
    zmq_close(other);
    zmq_close(dealer);
}

/* Starts $BIN/vae_service serve on a free port; endpoint gets what its start
 * line names. --batch when batch is not NULL. */
static int start_server(const char *batch, char *endpoint, size_t len) {
    char *argv[] = {server_bin,    "serve",      "--vae",
                    vae_dir,       "--endpoint", "tcp://127.0.0.1:*",
                    "--threads",   "2",          batch ? "--batch" : NULL,
                    (char *)batch, NULL};
    server_dead = 0;
    child = spawn(argv, &child_out, NULL);
    char line[8192] = "";
    int got = child > 0 ? read_text(child_out, line, sizeof line, 1, 60000) : -1;
    char *ep = got > 0 ? strrchr(line, ' ') : NULL;
    CHECK(got > 0 && strncmp(line, "serving ", 8) == 0 && ep && strncmp(ep + 1, "tcp://127.0.0.1:", 16) == 0,
          "start%s%s: \"serving VAE_DIR on ENDPOINT\" (%.*s)", batch ? " --batch " : "", batch ? batch : "",
          (int)strcspn(line, "\n"), line);
    if (!ep) {
        kill_child();
        return -1;
    }
    snprintf(endpoint, len, "%s", ep + 1);
    endpoint[strcspn(endpoint, "\n")] = '\0';
    return 0;
}

/* SIGTERM: the server finishes, closes and exits 0. */
static void stop_server(void) {
    int status = -1;
    kill(child, SIGTERM);
    int ended = wait_exit(child, 10000, &status) == 0;
    if (ended) child = -1;
    CHECK(ended && WIFEXITED(status) && WEXITSTATUS(status) == 0, "stop: SIGTERM -> exit 0 within 10 s (status %d)",
          status);
    kill_child();
    close(child_out);
}

static void *connect_req(void *ctx, const char *endpoint) {
    void *sock = zmq_socket(ctx, ZMQ_REQ);
    int t = TIMEOUT_MS, zero = 0;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &t, sizeof t);
    zmq_setsockopt(sock, ZMQ_SNDTIMEO, &t, sizeof t);
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    CHECK(zmq_connect(sock, endpoint) == 0, "start: connected to %s", endpoint);
    return sock;
}

static void test_batch(void *sock, vae_model *v) {
    int n = 3, H = 8, W = 8, C = 4, h = 4, w = 4;
    size_t count = (size_t)n * 3 * H * W, lat = (size_t)n * C * h * w;
    float *x = malloc(sizeof(float) * count), *mean = malloc(sizeof(float) * lat),
          *logvar = malloc(sizeof(float) * lat), *img = malloc(sizeof(float) * count);
    for (size_t i = 0; i < count; i++) x[i] = uniform(-1, 1);
    vae_encode(v, x, n, H, W, mean, logvar);
    vae_decode(v, mean, n, h, w, img);
    answer a;
    const void *data[1] = {x};
    size_t len[1] = {sizeof(float) * count};
    int rc = request(sock, "{\"op\":\"encode_rgb\",\"n\":3,\"H\":8,\"W\":8}", data, len, 1, &a);
    double dm = a.n == 2 ? frame_diff(&a.m[0], mean, lat) : INFINITY,
           dl = a.n == 2 ? frame_diff(&a.m[1], logvar, lat) : INFINITY;
    CHECK(rc == 0 && ok_of(&a) && dm <= 1e-5 && dl <= 1e-5, "batch 1: encode_rgb of 3 matches (max diff %g, %g)", dm,
          dl);
    answer_free(&a);
    data[0] = mean;
    len[0] = sizeof(float) * lat;
    rc = request(sock, "{\"op\":\"decode\",\"n\":3,\"h\":4,\"w\":4}", data, len, 1, &a);
    double d = a.n == 1 ? frame_diff(&a.m[0], img, count) : INFINITY;
    CHECK(rc == 0 && ok_of(&a) && d <= 1e-5, "batch 1: decode of 3 matches (max diff %g)", d);
    answer_free(&a);
    free(x), free(mean), free(logvar), free(img);
}

/* Exit status 2 and one line on stderr starting "error: ". */
static void check_bad_start(const char *vae, const char *endpoint, const char *name) {
    char *argv[] = {server_bin, "serve", "--vae", (char *)vae, "--endpoint", (char *)endpoint, NULL};
    int out, err, status = -1;
    pid_t pid = spawn(argv, &out, &err);
    char text[4096];
    read_text(err, text, sizeof text, 0, TIMEOUT_MS);
    int ended = wait_exit(pid, TIMEOUT_MS, &status) == 0;
    if (!ended) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    char *nl = strchr(text, '\n');
    CHECK(ended && WIFEXITED(status) && WEXITSTATUS(status) == 2 && strncmp(text, "error: ", 7) == 0 && nl &&
              nl[1] == '\0',
          "startup: %s -> exit 2, one line (%.*s)", name, (int)strcspn(text, "\n"), text);
    close(out), close(err);
}

int main(void) {
    atexit(kill_child);
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    const char *bin = getenv("BIN") ? getenv("BIN") : "bin";
    snprintf(server_bin, sizeof server_bin, "%s/vae_service", bin);
    snprintf(vae_dir, sizeof vae_dir, "%s/vae", dir);
    nn_init(2);

    char err[ERR_LEN];
    vae_config c;
    int rc = vae_config_load("configs/vae-tiny.json", &c, err);
    CHECK(rc == 0, "setup: configs/vae-tiny.json loads (%s)", rc ? err : "");
    if (rc) return CHECK_DONE();
    vae_model *made = vae_create(&c);
    vae_init_weights(made, 7);
    rc = vae_save(made, vae_dir, err);
    vae_free(made);
    CHECK(rc == 0, "setup: tiny VAE saved (%s)", rc ? err : "");
    vae_model *v = vae_load(vae_dir, err); /* the weights exactly as the server reads them */
    CHECK(v != NULL, "setup: tiny VAE loads");
    if (rc || !v) return CHECK_DONE();

    char endpoint[256];
    if (start_server(NULL, endpoint, sizeof endpoint)) return CHECK_DONE();
    void *ctx = zmq_ctx_new();
    void *sock = connect_req(ctx, endpoint);
    test_info(sock);
    test_encode(sock, v);
    test_encode_rgb(sock, v);
    test_decode(sock, v);
    test_errors(sock);
    test_clients(ctx, endpoint, sock);
    CHECK(!server_dead, "no request timed out");
    zmq_close(sock);
    check_bad_start(vae_dir, endpoint, "endpoint already in use");
    stop_server();

    /* --batch 1: a request of 3 runs as 3 VAE calls, with the same results
     * up to the rounding of other GEMM shapes. */
    if (start_server("1", endpoint, sizeof endpoint) == 0) {
        sock = connect_req(ctx, endpoint);
        test_batch(sock, v);
        zmq_close(sock);
        stop_server();
    }
    zmq_ctx_term(ctx);

    char missing[4300];
    snprintf(missing, sizeof missing, "%s/no-such-vae", dir);
    check_bad_start(missing, "tcp://127.0.0.1:*", "missing VAE folder");
    check_bad_start(vae_dir, "bogus://nowhere", "endpoint zmq_bind refuses");
    check_bad_start(vae_dir, "tcp://127.0.0.1:99999", "port 99999");

    vae_free(v);
    CHECK(remove_tree(dir) == 0, "temporary folder removed");
    return CHECK_DONE();
}
