/* The shared security flags and their validation (see security.h). */
#include "common/security.h"

#include <string.h>

struct security_flags security_flags_defaults(void)
{
    return (struct security_flags){"", "", "", "", false, "", "", "", "", ""};
}

size_t security_flags_list(struct security_flags *f, const char *peer_help, struct flag *out)
{
    const struct flag fl[SECURITY_NFLAGS] = {
        {"tls-cert", FLAG_STRING, &f->tls_cert,
         peer_help ? peer_help
                   : "PEM certificate of the gRPC port (TLS on; reloaded when the file changes)",
         0, 0},
        {"tls-key", FLAG_STRING, &f->tls_key, "PEM private key of --tls-cert", 0, 0},
        {"tls-ca", FLAG_STRING, &f->tls_ca,
         "PEM CA bundle that signs client certificates (in a cluster: the cluster CA)", 0, 0},
        {"tls-client-auth", FLAG_STRING, &f->tls_client_auth,
         "none, request or require a client certificate signed by --tls-ca (default: request "
         "with --tls-ca, else none)", 0, 0},
        {"insecure", FLAG_BOOL, &f->insecure,
         "allow plaintext gRPC on a non-loopback --listen (protected mode refuses it)", 0, 0},
        {"etcd-ca", FLAG_STRING, &f->etcd_ca, "PEM CA of etcd's certificate (https:// endpoints)",
         0, 0},
        {"etcd-cert", FLAG_STRING, &f->etcd_cert, "PEM client certificate for etcd", 0, 0},
        {"etcd-key", FLAG_STRING, &f->etcd_key, "PEM private key of --etcd-cert", 0, 0},
        {"etcd-user", FLAG_STRING, &f->etcd_user, "etcd user (etcd authentication enabled)", 0,
         0},
        {"etcd-password-file", FLAG_STRING, &f->etcd_password_file,
         "file whose first line is --etcd-user's password (read at each authentication)", 0,
         0},
    };
    memcpy(out, fl, sizeof(fl));
    return SECURITY_NFLAGS;
}

eddy_err security_configure(const struct security_flags *f, const char *listen,
                            struct tls_config *tls, struct etcd_security *etcd, char *err,
                            size_t errlen)
{
    *tls = (struct tls_config){.cert = f->tls_cert, .key = f->tls_key, .ca = f->tls_ca};
    *etcd = (struct etcd_security){f->etcd_ca, f->etcd_cert, f->etcd_key, f->etcd_user,
                                   f->etcd_password_file};
    if (tls_server_configure(tls, f->tls_client_auth, listen, f->insecure, err, errlen) !=
            EDDY_OK ||
        etcd_security_check(etcd, err, errlen) != EDDY_OK)
        return EDDY_ERR_INVALID;
    return EDDY_OK;
}
