/* zmq_service.c - the ROUTER end of the ZeroMQ services (zmq_service.h). */
#include "zmq_service.h"
#include "error.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

int zsvc_stopping(void) { return stop_requested; }

/* libzmq takes a TCP port modulo 65536 (tcp://host:99999 binds 34463), which
 * would serve on a port nobody asked for: refuse a numeric port over 65535. */
static int bad_tcp_port(const char *endpoint) {
    const char *colon = strrchr(endpoint, ':');
    if (strncmp(endpoint, "tcp://", 6) != 0 || !colon || !colon[1] || colon[strspn(colon + 1, "0123456789") + 1])
        return 0;
    return strlen(colon + 1) > 5 || atol(colon + 1) > 65535;
}

const cli_flag zsvc_auth_flags[] = {
    {"curve-key", FLAG_TEXT, "DIR|FILE", NULL, NULL,
     "the server's secret key (DIR/server.key of `keygen`): clients need its server.pub"},
    {"insecure", FLAG_SWITCH, NULL, NULL, NULL, "bind beyond loopback without CURVE (anyone who reaches it is served)"},
    {0},
};

int zsvc_auth_from_args(const args *a, const char *endpoint, zsvc_auth *auth, char *err) {
    memset(auth, 0, sizeof *auth);
    const char *key = arg_str(a, "curve-key");
    if (!key) {
        if (zkey_endpoint_is_local(endpoint) || arg_switch(a, "insecure")) return 0;
        return set_error(err,
                         "--endpoint %s is reachable from other machines: give --curve-key DIR (made by `%s keygen "
                         "--out DIR`; clients get DIR/server.pub) or --insecure",
                         endpoint, a->prog->name);
    }
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, stat(key, &st) == 0 && S_ISDIR(st.st_mode) ? "%s/server.key" : "%s", key);
    size_t n = strlen(path);
    if (n > 4 && !strcmp(path + n - 4, ".pub")) /* an easy slip: the clients' half */
        return set_error(err, "--curve-key %s: this is the public key; give the secret server.key", path);
    if (zkey_read(path, auth->secret, err)) return -1;
    auth->curve = 1;
    return 0;
}

int zsvc_open(zmq_service *s, const char *endpoint, int64_t max_frame, const zsvc_auth *auth, char *err) {
    memset(s, 0, sizeof *s);
    if (bad_tcp_port(endpoint)) return set_error(err, "--endpoint %s: port out of range", endpoint);
    s->ctx = zmq_ctx_new();
    s->sock = s->ctx ? zmq_socket(s->ctx, ZMQ_ROUTER) : NULL;
    if (!s->sock) die("zmq: %s", zmq_strerror(errno));
    /* Before the bind: every connection then starts with the handshake, and
     * a peer without the server's public key never gets a request in. */
    if (auth && auth->curve && zkey_set_server(s->sock, auth->secret, err)) {
        zsvc_close(s);
        return -1;
    }
    int linger = 1000; /* let the last replies leave, but never hang the exit */
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &max_frame, sizeof max_frame);
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(s->sock, endpoint)) {
        set_error(err, "--endpoint %s: %s", endpoint, zmq_strerror(errno));
        zsvc_close(s);
        return -1;
    }
    size_t len = sizeof s->endpoint;
    if (zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &len))
        snprintf(s->endpoint, sizeof s->endpoint, "%s", endpoint);

    /* No SA_RESTART: the signal must interrupt zmq_poll so the loop sees it. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return 0;
}

void zsvc_close(zmq_service *s) {
    if (s->sock) zmq_close(s->sock);
    if (s->ctx) zmq_ctx_term(s->ctx);
    s->sock = s->ctx = NULL;
}

int zsvc_wait(zmq_service *s, int ms) {
    if (stop_requested) return 0;
    zmq_pollitem_t item = {s->sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&item, 1, ms);
    if (rc < 0 && errno != EINTR) die("zmq_poll: %s", zmq_strerror(errno));
    return rc > 0 && (item.revents & ZMQ_POLLIN) && !stop_requested;
}

static int recv_part(void *sock, zmq_msg_t *m) {
    zmq_msg_init(m);
    for (;;) {
        if (zmq_msg_recv(m, sock, ZMQ_DONTWAIT) >= 0) return 0;
        if (errno != EINTR) {
            zmq_msg_close(m);
            return -1;
        }
    }
}

/* ZeroMQ delivers all parts of a message together, so none of these waits. */
int zsvc_recv(zmq_service *s, zmq_msg_t *frames, int max, zsvc_request *r) {
    *r = (zsvc_request){frames, 0, 0, 0};
    for (int more = 1; more;) {
        zmq_msg_t m;
        if (recv_part(s->sock, &m)) break;
        more = zmq_msg_more(&m);
        if (r->n < max)
            frames[r->n++] = m;
        else {
            zmq_msg_close(&m);
            r->dropped++;
        }
    }
    if (r->n == 0) return 0;
    r->nenv = 1;
    for (int i = 1; i < r->n && i <= ZSVC_MAX_ENVELOPE; i++)
        if (zmq_msg_size(&frames[i]) == 0) {
            r->nenv = i + 1;
            break;
        }
    return r->n;
}

void zsvc_request_close(zsvc_request *r) {
    for (int i = 0; i < r->n; i++) zmq_msg_close(&r->frames[i]);
    r->n = 0;
}

int zsvc_send(zmq_service *s, const zsvc_request *r, const void *head, size_t head_len, zsvc_part *parts, int n) {
    int ok = 1, i = 0;
    for (int k = 0; k < r->nenv && ok; k++) {
        zmq_msg_t env; /* a copy: the request's frames stay the caller's */
        zmq_msg_init(&env);
        zmq_msg_copy(&env, &r->frames[k]);
        ok = zmq_msg_send(&env, s->sock, ZMQ_SNDMORE) >= 0;
        if (!ok) zmq_msg_close(&env);
    }
    if (ok) ok = zmq_send(s->sock, head, head_len, n ? ZMQ_SNDMORE : 0) >= 0;
    for (; i < n && ok; i++) {
        zmq_msg_t m;
        if (zmq_msg_init_data(&m, parts[i].data, parts[i].len, parts[i].release, NULL)) {
            ok = 0;
            break;
        }
        if (zmq_msg_send(&m, s->sock, i + 1 < n ? ZMQ_SNDMORE : 0) < 0) {
            zmq_msg_close(&m); /* calls release */
            ok = 0;
            i++;
            break;
        }
    }
    for (; i < n; i++) parts[i].release(parts[i].data, NULL);
    return ok ? 0 : -1;
}
