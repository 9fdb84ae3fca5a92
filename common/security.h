/* The security flags eddy-node and eddy-coordinator share (TLS of the gRPC port,
 * protected mode, etcd's TLS and authentication) and their checks, in one place so the two
 * daemons read and validate them the same way (docs/security.md). */
#ifndef EDDY_SECURITY_H
#define EDDY_SECURITY_H

#include <stdbool.h>
#include <stddef.h>

#include "common/config.h"
#include "common/err.h"
#include "common/etcd.h"
#include "common/tls.h"

/* The values of the flags; strings borrowed from argv/environ ("" = unset). */
struct security_flags {
    const char *tls_cert, *tls_key, *tls_ca, *tls_client_auth;
    bool insecure;
    const char *etcd_ca, *etcd_cert, *etcd_key, *etcd_user, *etcd_password_file;
};

#define SECURITY_NFLAGS 10

/* Every field "" and insecure false. */
struct security_flags security_flags_defaults(void);

/* Write the SECURITY_NFLAGS flag definitions pointing into 'f' to out[0..]; returns
 * SECURITY_NFLAGS. 'peer_help' adds what --tls-cert means for calls to peers (NULL:
 * nothing). */
size_t security_flags_list(struct security_flags *f, const char *peer_help, struct flag *out);

/* From the flags: the server's TLS (client_auth parsed, files checked, protected mode for
 * 'listen') and etcd's security. 'tls' and 'etcd' borrow the strings of 'f'. A usage error
 * (EDDY_ERR_INVALID) says why in 'err'. */
eddy_err security_configure(const struct security_flags *f, const char *listen,
                            struct tls_config *tls, struct etcd_security *etcd, char *err,
                            size_t errlen);

#endif
