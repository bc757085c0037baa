/* client.h - what a trainer rank links to get its rows from `dataloader
 * serve`: a DEALER socket that asks for steps ahead of the one being
 * trained on, times out and asks again, and rides through a loader restart
 * without skipping or repeating a step (rows depend only on the step, so any
 * loader process gives the same ones).
 *
 *   dl_client *c = dl_client_open("tcp://127.0.0.1:5555", rank, world, first_step, NULL, err);
 *   for (;;) { dl_batch b; if (dl_client_next(c, &b, err)) ...; train on b; }
 *   dl_client_close(c);
 *
 * Each call returns the next step in order, checked: header version and
 * fingerprint, step, rank, shapes, payload size and CRC-32C. */
#ifndef DATALOADER_CLIENT_H
#define DATALOADER_CLIENT_H

#include "wire.h"

#include <stdint.h>

typedef struct {
    int prefetch;           /* steps asked for ahead of the one returned (default 4) */
    int timeout_ms;         /* a step unanswered this long is asked again (default 2000) */
    int tries;              /* asks of one step before giving up (default 30) */
    uint64_t fingerprint;   /* the dataset/config to accept; 0: the first loader's, then pinned */
    const char *server_key; /* the loaders' public key file (server.pub): CURVE; NULL: plain */
} dl_client_options;

typedef struct dl_client dl_client;

/* NULL options: the defaults. endpoint may list several loaders serving the
 * same data, separated by commas: requests are spread over the ones
 * connected now, so when a replica dies its clients move to the others
 * within one timeout (the steps it had been asked are asked again of the
 * rest, none skipped or repeated). Connects lazily (ZeroMQ), so this fails
 * only on a malformed endpoint, bad arguments or a bad key file. Replicas
 * share one key pair: a server_key is the key of each. A loader that speaks
 * CURVE never answers a client without its key (nor one with the wrong
 * key): such a client runs out of tries. */
dl_client *dl_client_open(const char *endpoint, int rank, int world, int64_t first_step, const dl_client_options *o,
                          char *err);
void dl_client_close(dl_client *c);

/* The batch of the next step; its arrays stay valid until the next call.
 * Fails (with err) when the loader refuses (another protocol version or
 * fingerprint) or does not answer within the tries. */
int dl_client_next(dl_client *c, dl_batch *b, char *err);

/* The loader's info JSON (special token ids, shapes, config), malloc'ed. */
char *dl_client_info(dl_client *c, char *err);

/* The pinned fingerprint (0 before the first reply). */
uint64_t dl_client_fingerprint(const dl_client *c);

#endif
