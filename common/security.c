/* The shared security flags and their validation (see security.h). */
#include "common/security.h"

#include <stdio.h>
#include <string.h>

#include "common/log.h"

struct security_flags security_flags_defaults(void)
{
    return (struct security_flags){"", "", "", "", false, "", "", "", "", "", "", 0, 0};
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
        {"token-file", FLAG_STRING, &f->token_file,
         "bearer tokens and certificate identities with their tenant and roles (public API "
         "calls need one; re-read when the file changes; docs/security.md)", 0, 0},
        {"tenant-events-per-second", FLAG_DOUBLE, &f->tenant_events_per_s,
         "events per second each tenant may ingest on this node (0 = unlimited; the token "
         "file may override it per tenant)", 0, 0},
        {"tenant-calls-per-second", FLAG_DOUBLE, &f->tenant_calls_per_s,
         "calls per second each tenant may make on this node (0 = unlimited; the token file "
         "may override it per tenant)", 0, 0},
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
    bool tokens = f->token_file && *f->token_file;
    if (!tokens && (f->tenant_events_per_s > 0 || f->tenant_calls_per_s > 0)) {
        snprintf(err, errlen, "--tenant-events-per-second and --tenant-calls-per-second need "
                              "--token-file (tenants are named there)");
        return EDDY_ERR_INVALID;
    }
    if (f->tenant_events_per_s < 0 || f->tenant_calls_per_s < 0) {
        snprintf(err, errlen, "tenant quotas are >= 0 (0 = unlimited)");
        return EDDY_ERR_INVALID;
    }
    if (tokens && !tls_server_enabled(tls) && !tls_listen_is_loopback(listen))
        log_warn("msg=\"bearer tokens travel in plaintext: anyone on the path can replay "
                 "them; give the port TLS\" listen=%s", listen);
    return EDDY_OK;
}

eddy_err security_auth_new(const struct security_flags *f, metrics *reg, auth **out, char *err,
                           size_t errlen)
{
    *out = NULL;
    if (!f->token_file || !*f->token_file)
        return EDDY_OK;
    struct auth_opts ao = {.token_file = f->token_file, .events_per_s = f->tenant_events_per_s,
                           .calls_per_s = f->tenant_calls_per_s, .metrics = reg};
    return auth_new(&ao, out, err, errlen);
}

void security_gate_server(auth *a, struct rpc_server_opts *so)
{
    if (!a)
        return;
    so->gate = auth_gate;
    so->audit = auth_audit;
    so->gate_ud = a;
}
