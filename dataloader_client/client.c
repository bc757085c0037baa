/* client.c - the trainer's side of the dataloader service (client.h). */
#include "client.h"
#include "../common/crc32c.h"
#include "../common/error.h"
#include "../common/timing.h"
#include "../common/zmq_keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

enum { FREE, ASKED, READY };

typedef struct {
    int64_t step;
    int state, tries;
    int unsent; /* ASKED while no loader was connected: sent once one is */
    double asked_at;
    dl_reply h;
    zmq_msg_t payload; /* READY: the reply's payload frame */
} slot;

struct dl_client {
    void *ctx, *sock;
    char endpoint[512];
    int rank, world, window, timeout_ms, tries;
    int64_t next; /* the step dl_client_next returns next */
    uint64_t fingerprint;
    slot *slots;       /* step s waits in slots[s % window] */
    zmq_msg_t current; /* what the last dl_client_next returned */
    int has_current;
    void *copy; /* a misaligned payload, copied */
    char *info; /* an info reply not yet collected */
};

/* 1: sent; 0: no loader connected (ZMQ_IMMEDIATE), to be sent once one
 * is; -1: an error. */
static int send_request(dl_client *c, int op, int64_t step, char *err) {
    dl_request r = {DL_PROTOCOL, op, c->fingerprint, step, c->rank, c->world};
    uint8_t buf[DL_REQUEST_BYTES];
    dl_request_encode(&r, buf);
    if (zmq_send(c->sock, buf, sizeof buf, ZMQ_DONTWAIT) >= 0) return 1;
    if (errno == EAGAIN) return 0;
    return set_error(err, "%s: send: %s", c->endpoint, zmq_strerror(errno));
}

dl_client *dl_client_open(const char *endpoint, int rank, int world, int64_t first_step, const dl_client_options *o,
                          char *err) {
    dl_client_options d = {4, 2000, 30, 0, NULL};
    if (!o) o = &d;
    if (world < 1 || world > DL_MAX_WORLD || rank < 0 || rank >= world || first_step < 0 || o->prefetch < 0 ||
        o->prefetch > 1024 || o->timeout_ms < 1 || o->tries < 1) {
        set_error(err, "dl_client_open: bad arguments (rank %d, world %d, step %lld)", rank, world,
                  (long long)first_step);
        return NULL;
    }
    dl_client *c = xcalloc(1, sizeof *c);
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->rank = rank;
    c->world = world;
    c->next = first_step;
    c->window = o->prefetch + 1;
    c->timeout_ms = o->timeout_ms;
    c->tries = o->tries;
    c->fingerprint = o->fingerprint;
    c->slots = xcalloc(c->window, sizeof(slot));
    for (int k = 0; k < c->window; k++) c->slots[k].step = -1;
    c->ctx = zmq_ctx_new();
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_DEALER) : NULL;
    if (!c->sock) die("zmq: %s", zmq_strerror(errno));
    int linger = 0, ivl = 100, immediate = 1;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    /* Requests go only to loaders connected now: without this a DEALER keeps
     * queueing a share of them for a replica that died, and every one of
     * those waits out its timeout before the live replica is asked. */
    zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &immediate, sizeof immediate);
    if (o->server_key && zkey_set_client(c->sock, o->server_key, err)) {
        dl_client_close(c);
        return NULL;
    }
    /* Several loaders (replicas): a DEALER spreads the requests over them. */
    char *list = strdup(endpoint), *save = NULL;
    if (!list) die("out of memory");
    for (char *e = strtok_r(list, ",", &save); e; e = strtok_r(NULL, ",", &save))
        if (zmq_connect(c->sock, e)) {
            set_error(err, "%s: %s", e, zmq_strerror(errno));
            free(list);
            dl_client_close(c);
            return NULL;
        }
    free(list);
    return c;
}

void dl_client_close(dl_client *c) {
    if (!c) return;
    for (int k = 0; k < c->window; k++)
        if (c->slots[k].state == READY) zmq_msg_close(&c->slots[k].payload);
    if (c->has_current) zmq_msg_close(&c->current);
    for (zmq_msg_t m; c->sock;) { /* replies still queued: closed here, not left to zmq_close */
        zmq_msg_init(&m);
        int got = zmq_msg_recv(&m, c->sock, ZMQ_DONTWAIT);
        zmq_msg_close(&m);
        if (got < 0) break;
    }
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    free(c->slots);
    free(c->copy);
    free(c->info);
    free(c);
}

uint64_t dl_client_fingerprint(const dl_client *c) { return c->fingerprint; }

/* Drains whatever replies are waiting into their slots. A refusal or a
 * reply that cannot be from a loader of this protocol ends the client. */
static int receive(dl_client *c, char *err) {
    for (;;) {
        zmq_msg_t head, body;
        zmq_msg_init(&head);
        if (zmq_msg_recv(&head, c->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&head);
            if (errno == EAGAIN) return 0;
            if (errno == EINTR) continue;
            return set_error(err, "%s: receive: %s", c->endpoint, zmq_strerror(errno));
        }
        zmq_msg_init(&body);
        int has_body = zmq_msg_more(&head) && zmq_msg_recv(&body, c->sock, 0) >= 0;
        while (has_body && zmq_msg_more(&body)) { /* no reply has more frames: drop extras */
            zmq_msg_t extra;
            zmq_msg_init(&extra);
            zmq_msg_recv(&extra, c->sock, 0);
            zmq_msg_close(&extra);
        }
        dl_reply h;
        int rc = 0;
        if (dl_reply_parse(zmq_msg_data(&head), zmq_msg_size(&head), &h, err)) {
            rc = -1;
        } else if (!has_body || zmq_msg_size(&body) != h.payload_bytes ||
                   crc32c(0, zmq_msg_data(&body), zmq_msg_size(&body)) != h.payload_crc) {
            /* Damaged in transit: ask again at once. */
            for (int k = 0; k < c->window; k++)
                if (c->slots[k].step == h.step && c->slots[k].state == ASKED) c->slots[k].asked_at = 0;
        } else if (h.status == DL_ERROR) {
            rc = set_error(err, "%s: the loader refused step %lld: %.*s", c->endpoint, (long long)h.step,
                           (int)zmq_msg_size(&body), (const char *)zmq_msg_data(&body));
        } else if (c->fingerprint && h.fingerprint != c->fingerprint) {
            rc = set_error(err, "%s: the loader serves dataset/config %016llx, this client pinned %016llx", c->endpoint,
                           (unsigned long long)h.fingerprint, (unsigned long long)c->fingerprint);
        } else if (h.status == DL_INFO) {
            free(c->info);
            c->info = xmalloc(h.payload_bytes + 1);
            memcpy(c->info, zmq_msg_data(&body), h.payload_bytes);
            c->info[h.payload_bytes] = '\0';
        } else {
            size_t off[7];
            slot *s = &c->slots[((h.step % c->window) + c->window) % c->window];
            if (h.rank != c->rank || h.world != c->world) {
                rc = set_error(err, "%s: reply for rank %d of %d, this client is rank %d of %d", c->endpoint, h.rank,
                               h.world, c->rank, c->world);
            } else if (dl_payload_layout(&h, off) != h.payload_bytes) {
                rc = set_error(err, "%s: step %lld: payload size does not match its shapes", c->endpoint,
                               (long long)h.step);
            } else if (s->step == h.step && s->state == ASKED) { /* else stale or a duplicate */
                if (!c->fingerprint) c->fingerprint = h.fingerprint;
                s->h = h;
                s->state = READY;
                zmq_msg_init(&s->payload);
                zmq_msg_move(&s->payload, &body);
            }
        }
        zmq_msg_close(&head);
        zmq_msg_close(&body);
        if (rc) return rc;
    }
}

/* Waits for a reply until the earliest deadline among the asked steps, or,
 * with unsent requests, until a loader connects. */
static int wait_replies(dl_client *c, double deadline, int unsent, char *err) {
    double ms = (deadline - now_s()) * 1e3;
    zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN | (unsent ? ZMQ_POLLOUT : 0), 0};
    int rc = zmq_poll(&item, 1, ms < 1 ? 1 : (long)ms);
    if (rc < 0 && errno != EINTR) return set_error(err, "%s: poll: %s", c->endpoint, zmq_strerror(errno));
    return receive(c, err);
}

int dl_client_next(dl_client *c, dl_batch *b, char *err) {
    if (c->has_current) {
        zmq_msg_close(&c->current);
        c->has_current = 0;
    }
    for (;;) {
        /* Replies that came while the caller was busy (a long step, an
         * evaluation) are taken before any request is judged unanswered. */
        if (receive(c, err)) return -1;
        double now = now_s(), deadline = now + c->timeout_ms * 1e-3;
        int unsent = 0;
        for (int64_t s = c->next; s < c->next + c->window; s++) {
            slot *sl = &c->slots[s % c->window];
            if (sl->step != s) {
                if (sl->state == READY) zmq_msg_close(&sl->payload);
                *sl = (slot){.step = s, .state = FREE};
            }
            if (sl->state == READY) continue;
            if (sl->state == ASKED && sl->unsent) { /* a loader connected since: its timeout starts now */
                int sent = send_request(c, DL_OP_BATCH, s, err);
                if (sent < 0) return -1;
                if (sent) sl->unsent = 0, sl->asked_at = now;
            }
            if (sl->state == ASKED && now - sl->asked_at < c->timeout_ms * 1e-3) {
                unsent |= sl->unsent;
                if (sl->asked_at + c->timeout_ms * 1e-3 < deadline) deadline = sl->asked_at + c->timeout_ms * 1e-3;
                continue;
            }
            if (sl->tries >= c->tries)
                return set_error(err, "%s: no reply for step %lld after %d tries of %d ms", c->endpoint, (long long)s,
                                 sl->tries, c->timeout_ms);
            /* Say so when the step being waited for goes unanswered: the
             * loader is busy, restarting or gone, and a person watching
             * the run should know why it stands still. */
            if (sl->tries > 0 && s == c->next)
                fprintf(
                    stderr,
                    "rank %d: waiting for the dataloader at %s: step %lld unanswered for %d ms, asking again (%d/%d)\n",
                    c->rank, c->endpoint, (long long)s, c->timeout_ms, sl->tries + 1, c->tries);
            int sent = send_request(c, DL_OP_BATCH, s, err);
            if (sent < 0) return -1;
            sl->unsent = !sent;
            unsent |= sl->unsent;
            sl->state = ASKED;
            sl->tries++;
            sl->asked_at = now;
        }
        slot *sl = &c->slots[c->next % c->window];
        if (sl->state == READY) {
            zmq_msg_init(&c->current);
            zmq_msg_move(&c->current, &sl->payload);
            c->has_current = 1;
            void *data = zmq_msg_data(&c->current);
            if ((uintptr_t)data % 8) { /* views need 8-byte alignment; ZeroMQ gives it in practice */
                c->copy = realloc(c->copy, sl->h.payload_bytes ? sl->h.payload_bytes : 1);
                if (!c->copy) die("out of memory");
                memcpy(c->copy, data, sl->h.payload_bytes);
                data = c->copy;
            }
            dl_batch_view(b, data, &sl->h);
            sl->state = FREE;
            sl->step = -1;
            c->next++;
            return 0;
        }
        if (wait_replies(c, deadline, unsent, err)) return -1;
    }
}

char *dl_client_info(dl_client *c, char *err) {
    free(c->info);
    c->info = NULL;
    for (int tries = 0; tries < c->tries; tries++) {
        double deadline = now_s() + c->timeout_ms * 1e-3;
        int sent = 0;
        while (!c->info && now_s() < deadline) {
            if (!sent && (sent = send_request(c, DL_OP_INFO, 0, err)) < 0) return NULL;
            if (wait_replies(c, deadline, !sent, err)) return NULL;
        }
        if (c->info) {
            char *info = c->info;
            c->info = NULL;
            return info;
        }
    }
    set_error(err, "%s: no reply to info after %d tries of %d ms", c->endpoint, c->tries, c->timeout_ms);
    return NULL;
}
