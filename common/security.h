/* The security flags eddy-node and eddy-coordinator share (TLS of the gRPC port,
 * protected mode, etcd's TLS and authentication) and their checks, in one place so the two
 * daemons read and validate them the same way (docs/security.md). */
#ifndef EDDY_SECURITY_H
#define EDDY_SECURITY_H

#include <stdbool.h>
#include <stddef.h>

#include "common/auth.h"
#include "common/config.h"
#include "common/err.h"
#include "common/etcd.h"
#include "common/tls.h"

/* The values of the flags; strings borrowed from argv/environ ("" = unset). */
struct security_flags {
    const char *tls_cert, *tls_key, *tls_ca, *tls_client_auth;
    bool insecure;
    const char *etcd_ca, *etcd_cert, *etcd_key, *etcd_user, *etcd_password_file;
    const char *token_file;                     /* "" = tokens off */
    double tenant_events_per_s, tenant_calls_per_s; /* 0 = unlimited */
};

#define SECURITY_NFLAGS 13

/* Every field "" and insecure false. */
struct security_flags security_flags_defaults(void);

/* Write the SECURITY_NFLAGS flag definitions pointing into 'f' to out[0..]; returns
 * SECURITY_NFLAGS. 'peer_help' adds what --tls-cert means for calls to peers (NULL:
 * nothing). */
size_t security_flags_list(struct security_flags *f, const char *peer_help, struct flag *out);

/* From the flags: the server's TLS (client_auth parsed, files checked, protected mode for
 * 'listen') and etcd's security. 'tls' and 'etcd' borrow the strings of 'f'. A usage error
 * (EDDY_ERR_INVALID) says why in 'err': also quotas without --token-file. Tokens do not
 * lift protected mode (a bearer token sent in plaintext can be sniffed and replayed): a
 * token file with --insecure on a non-loopback address is logged as a warning. */
eddy_err security_configure(const struct security_flags *f, const char *listen,
                            struct tls_config *tls, struct etcd_security *etcd, char *err,
                            size_t errlen);

/* The gate of --token-file: *out is NULL (tokens off) without one; otherwise the file is
 * read now (a missing or bad file is an error, said in 'err'). Caller owns *out; free with
 * auth_free after the server it gates. 'reg' is where its metrics go (may be NULL). */
eddy_err security_auth_new(const struct security_flags *f, metrics *reg, auth **out, char *err,
                           size_t errlen);

/* Plug 'a' (may be NULL: no gate) into the options of a server. */
void security_gate_server(auth *a, struct rpc_server_opts *so);

#endif
