/* zmq_keys.h - ZeroMQ CURVE for the project's services (dataloader serve,
 * vae_service serve) and their clients: key files, `PROG keygen`, the CURVE
 * options of a server's and a client's socket, and whether an endpoint stays
 * on this machine.
 *
 * A key file is one line: a 40-character Z85 key (ZeroMQ's text form of 32
 * bytes). `keygen --out DIR` writes the server's pair as DIR/server.key (the
 * secret key, mode 0600) and DIR/server.pub (the public key, for clients).
 * The server needs only the secret file (its public key follows from it);
 * a client needs only the public file, and makes a fresh pair of its own for
 * every connection. Any client that has the server's public key may connect:
 * there is no list of allowed clients. */
#ifndef COMMON_ZMQ_KEYS_H
#define COMMON_ZMQ_KEYS_H

#include "cli.h"

#define ZKEY_LEN 40 /* Z85 characters of a CURVE key */

/* Reads a key file into key (ZKEY_LEN + 1 bytes, NUL-terminated). Anything
 * but one Z85 key (and a line end) is bad input: err names the file. */
int zkey_read(const char *path, char *key, char *err);

/* 1 when the endpoint cannot be reached from another machine: ipc://,
 * inproc://, tcp:// on 127.x.x.x, localhost or [::1]. A tcp:// on *, 0.0.0.0,
 * an interface name or any other address is not local. */
int zkey_endpoint_is_local(const char *endpoint);

/* A server socket, before its bind: CURVE with this secret key. */
int zkey_set_server(void *sock, const char *secret, char *err);

/* A client socket, before its connect: CURVE to the server whose public key
 * is in the file server_pub, with a fresh key pair for this client. */
int zkey_set_client(void *sock, const char *server_pub, char *err);

/* `PROG keygen --out DIR [--force]`: the command each service's program
 * lists. */
extern const cli_command zkey_keygen_command;

#endif
