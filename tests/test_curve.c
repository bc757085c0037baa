/* test_curve.c - CURVE on the services' sockets, over real ZeroMQ: `dataloader
 * serve` (the dataloader fixture) and `vae_service serve` (a tiny VAE of
 * `vae_service init`) each bound to tcp://0.0.0.0:* (any free port; the test
 * connects to 127.0.0.1 and that port).
 * Checks, for each service: with --insecure it binds beyond loopback and a
 * plain client is served; with --curve-key (keys of `keygen`) a client with
 * the server's public key gets its reply (the dataloader's client library:
 * info and a batch; the VAE: info over REQ), while a plain client and one
 * holding another server's public key get nothing within a timeout, and the
 * service, still running, serves the keyed client again; SIGTERM then exits
 * 0. Which endpoints count as loopback. The command-line side (keygen's files, the refusals) is
 * tests/test_curve.sh. */
#include "check.h"
#include "dl_fixture.h"
#include "proc.h"
#include "../dataloader_client/client.h"
#include "../common/zmq_keys.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define NO_REPLY_MS 1000 /* a handshake on loopback takes about a millisecond */

const char *__lsan_default_suppressions(void); /* as test_dataloader_serve.c: libzmq's own rare leak */
const char *__lsan_default_suppressions(void) { return "leak:libzmq.so"; }

static fixture fx;
static char bin_dir[512], keys[256], other[256], pub[300], other_pub[300], vae_dir[256];
static pid_t child = -1;

static void kill_child(void) { kill_wait(&child); }

/* Runs a command to its end; its exit status, or -1. */
static int run(char *const argv[]) {
    int out = -1, status = -1;
    pid_t pid = spawn(argv, &out, NULL);
    char text[4096];
    while (pid > 0 && read_text(out, text, sizeof text, 0, 60000) > 0) {} /* until EOF */
    if (pid > 0) close(out);
    if (pid < 0 || wait_exit(pid, 60000, &status)) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Starts a server (argv), reads its start line "serving ... on ENDPOINT ..."
 * and sets local to tcp://127.0.0.1:PORT of the port it bound. */
static int start(char *const argv[], char *bound, char *local) {
    int out = -1;
    child = spawn(argv, &out, NULL); /* stderr: the test's log */
    char line[1024];
    int got = child > 0 ? read_text(out, line, sizeof line, 1, 60000) : -1;
    if (child > 0) close(out);
    const char *on = got > 0 ? strstr(line, " on ") : NULL;
    if (!on || sscanf(on + 4, "%255s", bound) != 1 || !strrchr(bound, ':')) {
        kill_child();
        return -1;
    }
    snprintf(local, 256, "tcp://127.0.0.1%s", strrchr(bound, ':'));
    return 0;
}

/* SIGTERM: the server exits 0. */
static void stop(const char *what) {
    int status = -1;
    kill(child, SIGTERM);
    int ended = wait_exit(child, 10000, &status) == 0;
    if (ended) child = -1;
    CHECK(ended && WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: SIGTERM -> exit 0 (status %d)", what, status);
    kill_child();
}

/* A dataloader client (server_key: a public key file or NULL) asks for info
 * and step 0; 1 when both came. Few short tries: no reply is expected to
 * take long. */
static int dl_served(const char *endpoint, const char *server_key, char *err) {
    dl_client_options o = {0, 300, 3, 0, server_key};
    dl_client *c = dl_client_open(endpoint, 0, 1, 0, &o, err);
    char *info = c ? dl_client_info(c, err) : NULL;
    dl_batch b;
    int ok = info && strstr(info, "\"fingerprint\"") && dl_client_next(c, &b, err) == 0 && b.step == 0 && b.B == 4;
    free(info);
    dl_client_close(c);
    return ok;
}

/* A plain DEALER sends a well-formed batch request: 1 when any reply came. */
static int dl_raw_reply(const char *endpoint) {
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(sock, endpoint);
    dl_request rq = {DL_PROTOCOL, DL_OP_BATCH, 0, 0, 0, 1};
    uint8_t buf[DL_REQUEST_BYTES];
    dl_request_encode(&rq, buf);
    zmq_send(sock, buf, sizeof buf, ZMQ_DONTWAIT); /* queued until a connection is up, if ever */
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    int got = zmq_poll(&item, 1, NO_REPLY_MS) > 0;
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return got;
}

/* A REQ client (server_key: a public key file or NULL) asks the VAE service
 * for info: 1 when an "ok":true reply came within NO_REPLY_MS (3 s when one
 * is expected). */
static int vae_info(const char *endpoint, const char *server_key, int expect) {
    char err[ERR_LEN];
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_REQ);
    int zero = 0, wait_ms = expect ? 3000 : NO_REPLY_MS;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &wait_ms, sizeof wait_ms);
    int ok = 0;
    if (server_key && zkey_set_client(sock, server_key, err))
        CHECK(0, "client key %s (%s)", server_key, err);
    else if (zmq_connect(sock, endpoint) == 0 && zmq_send(sock, "{\"op\":\"info\"}", 13, 0) == 13) {
        char reply[4096];
        int n = zmq_recv(sock, reply, sizeof reply - 1, 0);
        if (n > 0) {
            reply[n < (int)sizeof reply - 1 ? n : (int)sizeof reply - 1] = '\0';
            ok = strstr(reply, "\"ok\":true") != NULL;
        }
    }
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return ok;
}

static void test_dataloader(void) {
    char path[600], bound[256], local[256], err[ERR_LEN] = "";
    snprintf(path, sizeof path, "%s/dataloader", bin_dir);
    char *argv[] = {
        path,         "serve",           "--text",     fx.text,     "--latents", fx.latents,        "--tokenizer",
        fx.tok,       "--patch-size",    "2",          "--seq-len", "128",       "--rows-per-rank", "4",
        "--endpoint", "tcp://0.0.0.0:*", "--insecure", NULL,        NULL};

    int up = start(argv, bound, local) == 0;
    CHECK(up && strncmp(bound, "tcp://0.0.0.0:", 14) == 0, "dataloader --insecure: binds %s", up ? bound : "nothing");
    if (up) {
        CHECK(dl_served(local, NULL, err), "dataloader --insecure: a plain client gets info and a batch (%s)", err);
        stop("dataloader --insecure");
    }

    argv[16] = "--curve-key";
    argv[17] = keys;
    up = start(argv, bound, local) == 0;
    CHECK(up, "dataloader --curve-key: binds %s", up ? bound : "nothing");
    if (!up) return;
    CHECK(dl_served(local, pub, err), "dataloader --curve-key: a client with server.pub gets info and a batch (%s)",
          err);
    err[0] = '\0';
    CHECK(!dl_served(local, NULL, err) && strstr(err, "no reply"),
          "dataloader --curve-key: a client without the key gets no reply (%s)", err);
    CHECK(!dl_raw_reply(local), "dataloader --curve-key: a plain DEALER's request gets no reply in %d ms", NO_REPLY_MS);
    err[0] = '\0';
    CHECK(!dl_served(local, other_pub, err) && strstr(err, "no reply"),
          "dataloader --curve-key: a client with another server's key gets no reply (%s)", err);
    err[0] = '\0';
    CHECK(kill(child, 0) == 0 && dl_served(local, pub, err),
          "dataloader --curve-key: still running, it serves the keyed client again (%s)", err);
    stop("dataloader --curve-key");
}

static void test_vae(void) {
    char path[600], bound[256], local[256];
    snprintf(path, sizeof path, "%s/vae_service", bin_dir);
    char *init[] = {path, "init", "--config", "configs/vae-tiny.json", "--out", vae_dir, NULL};
    int made = run(init) == 0;
    CHECK(made, "vae_service init: a tiny VAE for the service");
    if (!made) return;
    char *argv[] = {path,        "serve", "--vae",      vae_dir, "--endpoint", "tcp://0.0.0.0:*",
                    "--threads", "1",     "--insecure", NULL,    NULL};

    int up = start(argv, bound, local) == 0;
    CHECK(up && strncmp(bound, "tcp://0.0.0.0:", 14) == 0, "vae_service --insecure: binds %s", up ? bound : "nothing");
    if (up) {
        CHECK(vae_info(local, NULL, 1), "vae_service --insecure: a plain REQ gets info");
        stop("vae_service --insecure");
    }

    argv[8] = "--curve-key";
    argv[9] = keys;
    up = start(argv, bound, local) == 0;
    CHECK(up, "vae_service --curve-key: binds %s", up ? bound : "nothing");
    if (!up) return;
    CHECK(vae_info(local, pub, 1), "vae_service --curve-key: a REQ with server.pub gets info");
    CHECK(!vae_info(local, NULL, 0), "vae_service --curve-key: a plain REQ gets no reply in %d ms", NO_REPLY_MS);
    CHECK(!vae_info(local, other_pub, 0), "vae_service --curve-key: a REQ with another server's key gets no reply");
    CHECK(kill(child, 0) == 0 && vae_info(local, pub, 1),
          "vae_service --curve-key: still running, it serves the keyed client again");
    stop("vae_service --curve-key");
}

/* Which endpoints may go without keys. */
static void test_local(void) {
    static const char *const local[] = {"tcp://127.0.0.1:5555", "tcp://127.1.2.3:*",  "tcp://localhost:5555",
                                        "tcp://[::1]:5555",     "ipc:///tmp/dl.sock", "inproc://x"};
    static const char *const remote[] = {
        "tcp://*:5555",      "tcp://0.0.0.0:5555",         "tcp://10.0.0.7:5555", "tcp://[::]:5555",
        "tcp://eth0:5555",   "tcp://128.0.0.1:5555",       "tcp://node7:5555",    "tcp://127.0.0.1.x:5555",
        "ws://127.0.0.1:80", "pgm://eth0;239.192.1.1:5555"};
    for (size_t k = 0; k < sizeof local / sizeof *local; k++)
        CHECK(zkey_endpoint_is_local(local[k]), "loopback: %s", local[k]);
    for (size_t k = 0; k < sizeof remote / sizeof *remote; k++)
        CHECK(!zkey_endpoint_is_local(remote[k]), "beyond loopback: %s", remote[k]);
}

int main(void) {
    atexit(kill_child);
    test_local();
    snprintf(bin_dir, sizeof bin_dir, "%s", getenv("BIN") ? getenv("BIN") : "bin");
    if (fixture_make(&fx, 100, 1, 20, 0, 4, 8, 8)) {
        CHECK(0, "fixture made");
        return 1;
    }
    snprintf(keys, sizeof keys, "%s/keys", fx.dir);
    snprintf(other, sizeof other, "%s/other", fx.dir);
    snprintf(pub, sizeof pub, "%s/server.pub", keys);
    snprintf(other_pub, sizeof other_pub, "%s/server.pub", other);
    snprintf(vae_dir, sizeof vae_dir, "%s/vae", fx.dir);
    char path[600];
    snprintf(path, sizeof path, "%s/dataloader", bin_dir);
    char *k1[] = {path, "keygen", "--out", keys, NULL}, *k2[] = {path, "keygen", "--out", other, NULL};
    int keyed = run(k1) == 0 && run(k2) == 0;
    CHECK(keyed, "dataloader keygen: two key pairs");
    if (keyed) {
        test_dataloader();
        test_vae();
    }
    CHECK(remove_tree(fx.dir) == 0, "temporary folder removed");
    return CHECK_DONE();
}
