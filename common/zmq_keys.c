/* zmq_keys.c - CURVE key files, keygen and socket options (zmq_keys.h). */
#include "zmq_keys.h"
#include "atomic_file.h"
#include "dir.h"
#include "error.h"
#include "file_read.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static const char z85_chars[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

int zkey_read(const char *path, char *key, char *err) {
    size_t len;
    char *text = file_read(path, 4096, &len, err);
    if (!text) return -1;
    /* One key and a line end (as keygen writes it, or as an editor saves it). */
    while (len > 0 && strchr("\r\n", text[len - 1])) len--;
    int ok = len == ZKEY_LEN && strspn(text, z85_chars) == ZKEY_LEN;
    uint8_t bin[32];
    if (ok) {
        memcpy(key, text, ZKEY_LEN);
        key[ZKEY_LEN] = '\0';
        ok = zmq_z85_decode(bin, key) != NULL;
    }
    free(text);
    if (!ok)
        return set_error(err, "%s: not a CURVE key (expected one line of %d Z85 characters, as keygen writes)", path,
                         ZKEY_LEN);
    return 0;
}

int zkey_endpoint_is_local(const char *endpoint) {
    if (!strncmp(endpoint, "ipc://", 6) || !strncmp(endpoint, "inproc://", 9)) return 1;
    if (strncmp(endpoint, "tcp://", 6) != 0) return 0; /* pgm, ws, ...: reach other machines */
    const char *host = endpoint + 6, *colon = strrchr(host, ':');
    if (!colon) return 0;
    char h[256];
    size_t n = (size_t)(colon - host);
    if (n >= sizeof h) return 0;
    memcpy(h, host, n);
    h[n] = '\0';
    if (!strcmp(h, "localhost")) return 1;
    struct in_addr a4;
    if (inet_pton(AF_INET, h, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h[n - 1] = '\0';
        if (inet_pton(AF_INET6, h + 1, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    }
    return 0; /* *, 0.0.0.0, a host or interface name, another address */
}

/* A Z85 key goes to ZeroMQ as 41 bytes: the text and its NUL. */
static int set_key(void *sock, int option, const char *key, const char *what, char *err) {
    if (zmq_setsockopt(sock, option, key, ZKEY_LEN + 1) == 0) return 0;
    return set_error(err, "zmq: cannot set the CURVE %s: %s%s", what, zmq_strerror(errno),
                     zmq_has("curve") ? "" : " (this libzmq was built without CURVE)");
}

int zkey_set_server(void *sock, const char *secret, char *err) {
    int on = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &on, sizeof on))
        return set_error(err, "zmq: cannot make a CURVE server: %s%s", zmq_strerror(errno),
                         zmq_has("curve") ? "" : " (this libzmq was built without CURVE)");
    return set_key(sock, ZMQ_CURVE_SECRETKEY, secret, "secret key", err);
}

int zkey_set_client(void *sock, const char *server_pub, char *err) {
    char server[ZKEY_LEN + 1], pub[ZKEY_LEN + 1], sec[ZKEY_LEN + 1];
    if (zkey_read(server_pub, server, err)) return -1;
    if (zmq_curve_keypair(pub, sec))
        return set_error(err, "zmq: cannot make a CURVE key pair: %s", zmq_strerror(errno));
    if (set_key(sock, ZMQ_CURVE_SERVERKEY, server, "server key", err) ||
        set_key(sock, ZMQ_CURVE_PUBLICKEY, pub, "public key", err) ||
        set_key(sock, ZMQ_CURVE_SECRETKEY, sec, "secret key", err))
        return -1;
    return 0;
}

static int cmd_keygen(const args *a) {
    char err[ERR_LEN], key_path[4096], pub_path[4096], pub[ZKEY_LEN + 1], sec[ZKEY_LEN + 1];
    const char *dir = arg_str(a, "out");
    snprintf(key_path, sizeof key_path, "%s/server.key", dir);
    snprintf(pub_path, sizeof pub_path, "%s/server.pub", dir);
    /* A new pair locks out every client that holds the old public key. */
    if (!arg_switch(a, "force"))
        for (const char *p = key_path; p; p = p == key_path ? pub_path : NULL)
            if (access(p, F_OK) == 0)
                die_input("%s %s: %s exists (--force replaces the pair; clients then need the new server.pub)",
                          a->prog->name, a->cmd->name, p);
    if (make_dir(dir, err)) die_input("%s %s: %s", a->prog->name, a->cmd->name, err);
    if (zmq_curve_keypair(pub, sec))
        die("%s %s: zmq_curve_keypair: %s", a->prog->name, a->cmd->name, zmq_strerror(errno));
    /* atomic_write creates its temp file 0644 less the umask: with 077 the
     * secret is never readable by others, not even before the rename. */
    mode_t old = umask(077);
    file_piece ks[2] = {{sec, ZKEY_LEN}, {"\n", 1}}, ps[2] = {{pub, ZKEY_LEN}, {"\n", 1}};
    int rc = atomic_write(key_path, ks, 2, err);
    umask(old);
    if (rc || atomic_write(pub_path, ps, 2, err)) die("%s", err);
    printf("wrote %s (secret: the server's --curve-key) and %s (public: for the clients), public key %s\n", key_path,
           pub_path, pub);
    return 0;
}

static const cli_flag keygen_flags[] = {
    {"out", FLAG_TEXT | FLAG_REQUIRED, "DIR", NULL, NULL,
     "writes DIR/server.key (secret, mode 0600) and DIR/server.pub"},
    {"force", FLAG_SWITCH, NULL, NULL, NULL, "replace an existing pair"},
    {0},
};

const cli_command zkey_keygen_command = {
    "keygen", "makes the CURVE key pair of a server bound beyond loopback", cmd_keygen, {keygen_flags}};
