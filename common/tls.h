/* TLS for Eddy's gRPC servers and channels: certificates read from PEM files, a server
 * that picks up new files at the next handshake (cert-manager rotation, no restart), client
 * credentials with an optional client certificate (mTLS), and the check that a call's peer
 * presented a certificate the configured CA signed. */
#ifndef EDDY_TLS_H
#define EDDY_TLS_H

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

/* What a server asks of its clients' certificates. A certificate that is presented is
 * always verified against the CA (a foreign one fails the handshake). */
enum tls_client_auth {
    TLS_CLIENT_AUTH_NONE,    /* never asked for */
    TLS_CLIENT_AUTH_REQUEST, /* asked for, optional: callers without one are anonymous */
    TLS_CLIENT_AUTH_REQUIRE, /* the handshake fails without one */
};

/* PEM file paths (borrowed; NULL or "" = not set). A server needs cert and key, plus ca
 * unless client_auth is NONE. A channel needs ca (the servers' CA) and may present
 * cert + key. 'server_name' (channels only) overrides the name checked in the server's
 * certificate (default: the host of the target). */
struct tls_config {
    const char *cert, *key, *ca;
    enum tls_client_auth client_auth;
    const char *server_name;
};

/* Whether 't' turns TLS on: a server with a certificate, or a channel with a CA. */
bool tls_server_enabled(const struct tls_config *t);
bool tls_channel_enabled(const struct tls_config *t);

/* "none", "request" or "require" -> *out; EDDY_ERR_INVALID otherwise. */
eddy_err tls_parse_client_auth(const char *s, enum tls_client_auth *out);
const char *tls_client_auth_name(enum tls_client_auth a);

/* Check a server configuration before anything listens: cert and key both or neither,
 * the files readable, the key matching the certificate, a CA when clients are asked for
 * certificates. On failure 'err' says why (EDDY_ERR_INVALID or EDDY_ERR_IO). */
eddy_err tls_server_check(const struct tls_config *t, char *err, size_t errlen);

/* The server flags of eddy-node and eddy-coordinator: parse 'client_auth' ("" = request
 * when t->ca is set, else none) into t->client_auth, check the files (tls_server_check),
 * and apply protected mode: plaintext on a 'listen' address that is not loopback is
 * refused unless 'insecure'. A usage error (EDDY_ERR_INVALID) says why in 'err'. */
eddy_err tls_server_configure(struct tls_config *t, const char *client_auth, const char *listen,
                              bool insecure, char *err, size_t errlen);

/* The reloading server side: owns copies of the paths and the files' last seen state.
 * Thread-safe (gRPC calls it from its handshake threads). Free with tls_server_free only
 * after every grpc_server using its credentials has been destroyed. */
typedef struct tls_server tls_server;

/* Caller owns the result. NULL on allocation failure or if the files cannot be loaded
 * (then 'err' says why). */
tls_server *tls_server_new(const struct tls_config *t, char *err, size_t errlen);
void tls_server_free(tls_server *ts);

/* New credentials whose certificates are re-read at a handshake when a file changed (its
 * size, mtime or inode). A half-written rotation (a key that does not match the
 * certificate, a PEM that does not parse) keeps the previous certificates and is tried
 * again at the next handshake. Caller releases with grpc_server_credentials_release. */
grpc_server_credentials *tls_server_credentials(tls_server *ts);

/* Channel credentials for 't' (files read now). Caller releases with
 * grpc_channel_credentials_release. NULL if a file cannot be read ('err' says why). */
grpc_channel_credentials *tls_channel_credentials(const struct tls_config *t, char *err,
                                                  size_t errlen);

/* Whether the peer of 'call' presented a certificate the server's CA verified (false on
 * a plaintext connection or without a client certificate). */
bool tls_call_peer_verified(grpc_call *call);

/* For a peer whose certificate the CA verified: call 'match' with each of its names (the
 * subject CN, then each subjectAltName) until one returns true; returns that result (false
 * without a verified certificate). */
bool tls_call_peer_match(grpc_call *call, bool (*match)(void *ud, const char *name), void *ud);

/* Whether 'listen' ("host:port") binds only a loopback address (127.0.0.0/8, ::1,
 * localhost). Protected mode refuses other addresses without TLS. */
bool tls_listen_is_loopback(const char *listen);

#endif
