/* zmq_service.h - the ROUTER end shared by the project's ZeroMQ services
 * (vae_service serve, dataloader serve): bind an endpoint, wait for requests
 * while noticing SIGINT/SIGTERM, receive a request with its envelope, and
 * send a reply whose payload frames go out without a copy. Beyond loopback
 * a service speaks CURVE (zmq_keys.h), or binds only when told --insecure. */
#ifndef COMMON_ZMQ_SERVICE_H
#define COMMON_ZMQ_SERVICE_H

#include "cli.h"
#include "zmq_keys.h"

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#define ZSVC_MAX_ENVELOPE 8 /* identity frames a router chain may add */

typedef struct {
    void *ctx, *sock;
    char endpoint[1024]; /* what was bound (a port of `*` resolved) */
} zmq_service;

/* --curve-key DIR_OR_FILE and --insecure: every service command's flags. */
extern const cli_flag zsvc_auth_flags[];

typedef struct {
    int curve; /* 1: CURVE server with this secret key */
    char secret[ZKEY_LEN + 1];
} zsvc_auth;

/* From the command's --curve-key and --insecure, for binding endpoint: reads
 * the secret key (a folder means its server.key), or refuses an endpoint
 * beyond loopback without one unless --insecure. A command calls it before
 * its slow start-up, so that a missing key fails at once. */
int zsvc_auth_from_args(const args *a, const char *endpoint, zsvc_auth *auth, char *err);

/* Binds a ROUTER socket (with CURVE when auth says so; NULL: plain). Frames over max_frame bytes never reach the
 * service: ZeroMQ drops them and the connection that sent them. A TCP port
 * over 65535 is refused (libzmq would bind it modulo 65536). Installs
 * SIGINT/SIGTERM handlers that make zsvc_wait return 0. */
int zsvc_open(zmq_service *s, const char *endpoint, int64_t max_frame, const zsvc_auth *auth, char *err);
void zsvc_close(zmq_service *s);

/* 1 when a request is waiting; 0 after ms or once a stop signal came. */
int zsvc_wait(zmq_service *s, int ms);
int zsvc_stopping(void);

/* One whole request: frames[0..nenv) is the envelope (up to and including
 * the first empty frame, or the identity frame alone when a DEALER sent no
 * delimiter), the body follows. Frames past `max` are dropped and counted. */
typedef struct {
    zmq_msg_t *frames;
    int n, nenv, dropped;
} zsvc_request;

/* Receives into frames[max]; returns the frame count (0: nothing). */
int zsvc_recv(zmq_service *s, zmq_msg_t *frames, int max, zsvc_request *r);
void zsvc_request_close(zsvc_request *r);

/* A payload frame: ZeroMQ calls release(data, NULL) once it is sent. */
typedef struct {
    void *data;
    size_t len;
    zmq_free_fn *release;
} zsvc_part;

/* Sends envelope, a copy of head, then the parts without copying them. A
 * ROUTER send never blocks (a gone or slow peer's message is dropped), so a
 * failure loses only this reply: returns -1, and every part is released
 * either way. */
int zsvc_send(zmq_service *s, const zsvc_request *r, const void *head, size_t head_len, zsvc_part *parts, int n);

#endif
