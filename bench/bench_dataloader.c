/* bench_dataloader.c - the two sides of bench/bench_dataloader.sh.
 *
 *   raw-serve: the peer: a bare ZeroMQ ROUTER that answers every request with a
 *       96-byte header and an N-byte payload sent zero-copy from one buffer
 *       (no packing, no checksum: what ZeroMQ alone moves)
 *   clients: K threads, each one trainer rank of a world of K fetching steps
 *       through dataloader_client/client.h (prefetch 4), or with --raw the same
 *       request pattern on a bare DEALER (5 requests in flight). Prints one
 *       JSON line: batches/s, rows/s and MB/s over all clients, and the mean
 *       payload bytes of a reply. */
#include "../common/cli.h"
#include "../common/error.h"
#include "../common/timing.h"
#include "../common/zmq_service.h"
#include "../dataloader_client/client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static void keep(void *data, void *hint) {
    (void)data;
    (void)hint;
}

static int cmd_raw_serve(const args *a) {
    char err[ERR_LEN];
    size_t bytes = (size_t)arg_int(a, "bytes");
    uint8_t head[DL_REPLY_HEADER_BYTES] = {0};
    void *payload = xcalloc(1, bytes);
    zmq_service svc;
    if (zsvc_open(&svc, arg_str(a, "endpoint"), DL_MAX_REQUEST, NULL, err)) die_input("%s", err);
    printf("serving on %s\n", svc.endpoint);
    fflush(stdout);
    zmq_msg_t frames[ZSVC_MAX_ENVELOPE + 2];
    while (!zsvc_stopping()) {
        if (!zsvc_wait(&svc, 200)) continue;
        zsvc_request req;
        while (zsvc_recv(&svc, frames, ZSVC_MAX_ENVELOPE + 2, &req)) {
            zsvc_part part = {payload, bytes, keep};
            zsvc_send(&svc, &req, head, sizeof head, &part, 1);
            zsvc_request_close(&req);
        }
    }
    zsvc_close(&svc);
    free(payload);
    return 0;
}

typedef struct {
    const char *endpoint;
    int rank, world, raw;
    double seconds;
    long batches, rows;
    double bytes;
    char err[ERR_LEN];
} worker;

static void *run_client(void *arg) {
    worker *w = arg;
    double t0 = now_s();
    if (!w->raw) {
        dl_client *c = dl_client_open(w->endpoint, w->rank, w->world, 0, NULL, w->err);
        dl_batch b;
        while (c && now_s() - t0 < w->seconds) {
            if (dl_client_next(c, &b, w->err)) break;
            size_t off[7];
            dl_reply h = {.B = b.B, .L = b.L, .n_images = b.n_images, .n_docs = b.n_docs, .C = b.C, .h = b.h, .w = b.w};
            w->bytes += (double)dl_payload_layout(&h, off);
            w->batches++;
            w->rows += b.B;
        }
        dl_client_close(c);
        return NULL;
    }
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_DEALER);
    zmq_connect(sock, w->endpoint);
    uint8_t req[DL_REQUEST_BYTES] = {0};
    int in_flight = 0;
    while (now_s() - t0 < w->seconds) {
        while (in_flight < 5) {
            zmq_send(sock, req, sizeof req, 0);
            in_flight++;
        }
        zmq_msg_t head, body;
        zmq_msg_init(&head);
        zmq_msg_init(&body);
        zmq_msg_recv(&head, sock, 0);
        zmq_msg_recv(&body, sock, 0);
        w->bytes += (double)zmq_msg_size(&body);
        zmq_msg_close(&head);
        zmq_msg_close(&body);
        in_flight--;
        w->batches++;
    }
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return NULL;
}

static int cmd_clients(const args *a) {
    int k = (int)arg_int(a, "clients"), raw = arg_switch(a, "raw");
    double seconds = arg_num(a, "seconds");
    worker *w = xcalloc(k, sizeof(worker));
    pthread_t *t = xcalloc(k, sizeof(pthread_t));
    double t0 = now_s();
    for (int i = 0; i < k; i++) {
        w[i] = (worker){.endpoint = arg_str(a, "endpoint"), .rank = i, .world = k, .raw = raw, .seconds = seconds};
        pthread_create(&t[i], NULL, run_client, &w[i]);
    }
    long batches = 0, rows = 0;
    double bytes = 0;
    for (int i = 0; i < k; i++) {
        pthread_join(t[i], NULL);
        if (w[i].err[0]) die("client %d: %s", i, w[i].err);
        batches += w[i].batches;
        rows += w[i].rows;
        bytes += w[i].bytes;
    }
    double dt = now_s() - t0;
    printf("{\"clients\":%d,\"raw\":%s,\"batches_per_s\":%.1f,\"rows_per_s\":%.1f,\"mb_per_s\":%.1f,\"payload_bytes\":%"
           ".0f}\n",
           k, raw ? "true" : "false", batches / dt, rows / dt, bytes / dt / 1e6, batches ? bytes / batches : 0.0);
    free(w);
    free(t);
    return 0;
}

static const cli_flag serve_flags[] = {
    {"endpoint", FLAG_TEXT | FLAG_REQUIRED, "tcp://HOST:PORT", NULL, NULL, "where to bind"},
    {"bytes", FLAG_INT, "N", "[1, inf)", "1", "payload bytes of every reply"},
    {0},
};

static const cli_flag client_flags[] = {
    {"endpoint", FLAG_TEXT | FLAG_REQUIRED, "tcp://HOST:PORT", NULL, NULL, "the server"},
    {"clients", FLAG_INT, "K", "[1, inf)", "1", "client threads, one rank each"},
    {"seconds", FLAG_NUM, "S", "(0, inf)", "3", "how long to fetch"},
    {"raw", FLAG_SWITCH, NULL, NULL, NULL, "a bare DEALER instead of dataloader_client"},
    {0},
};

static const cli_command raw_serve_command = {
    "raw-serve", "a bare ZeroMQ ROUTER answering every request with N bytes", cmd_raw_serve, {serve_flags}};
static const cli_command clients_command = {
    "clients", "K clients fetching steps; prints batches/s, rows/s and MB/s", cmd_clients, {client_flags}};
static const cli_command *const commands[] = {&raw_serve_command, &clients_command};
static const cli_program program = {"bench_dataloader", "The dataloader's benchmark against raw ZeroMQ.", commands, 2};

int main(int argc, char **argv) { return cli_main(&program, argc, argv); }
