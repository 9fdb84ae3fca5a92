/* TLS credentials from PEM files for gRPC core, with certificate reload at handshake time.
 *
 * DESIGN
 * Reload: gRPC core calls a server's certificate-config fetcher at every handshake
 * (grpc_ssl_server_credentials_create_options_using_config_fetcher). The fetcher stats the
 * three files (three syscalls per new connection, nothing per call) and only when one
 * changed reads them, checks that the key matches the certificate and hands gRPC a new
 * config. Connections already open keep their session; new ones get the new certificate.
 * A rotation caught half-way (a new certificate beside the old key) is not taken: the
 * files' signature is not recorded, so the next handshake tries again. */
#include "common/tls.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/buf.h"
#include "common/log.h"

#define PEM_MAX (1u << 20) /* largest certificate, key or CA bundle file */

/* What a file looked like when it was last loaded. */
struct file_sig {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

struct tls_server {
    char *cert, *key, *ca;
    enum tls_client_auth client_auth;
    pthread_mutex_t mu; /* guards 'sig' (the fetcher runs on gRPC's handshake threads) */
    struct file_sig sig[3];
};

bool tls_server_enabled(const struct tls_config *t)
{
    return t && t->cert && *t->cert;
}

bool tls_channel_enabled(const struct tls_config *t)
{
    return t && t->ca && *t->ca;
}

static const char *const auth_names[] = {"none", "request", "require"};

eddy_err tls_parse_client_auth(const char *s, enum tls_client_auth *out)
{
    for (size_t i = 0; i < sizeof(auth_names) / sizeof(auth_names[0]); i++) {
        if (s && strcmp(s, auth_names[i]) == 0) {
            *out = (enum tls_client_auth)i;
            return EDDY_OK;
        }
    }
    return EDDY_ERR_INVALID;
}

const char *tls_client_auth_name(enum tls_client_auth a)
{
    return (unsigned)a < 3 ? auth_names[a] : "?";
}

static bool set(const char *s)
{
    return s && *s;
}

/* Read the whole of 'path' as a NUL-terminated string into 'b'. */
static eddy_err read_pem(const char *path, struct buf *b, char *err, size_t errlen)
{
    eddy_err e = EDDY_ERR_IO;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s", path);
        return e;
    }
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if ((e = buf_add(b, chunk, n)) != EDDY_OK) {
            snprintf(err, errlen, "%s: %s", path, eddy_strerror(e));
            goto out;
        }
    }
    e = ferror(f) ? EDDY_ERR_IO : EDDY_OK;
    if (e == EDDY_OK && b->len == 0) {
        e = EDDY_ERR_INVALID;
        snprintf(err, errlen, "%s is empty", path);
    } else if (e != EDDY_OK) {
        snprintf(err, errlen, "cannot read %s", path);
    }
out:
    fclose(f);
    return e;
}

/* Whether 'key_pem' is the private key of the certificate 'cert_pem'. */
static bool key_matches(const struct buf *cert_pem, const struct buf *key_pem)
{
    bool ok = false;
    BIO *cb = BIO_new_mem_buf(cert_pem->p, (int)cert_pem->len);
    BIO *kb = BIO_new_mem_buf(key_pem->p, (int)key_pem->len);
    X509 *x = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    if (x && k)
        ok = X509_check_private_key(x, k) == 1;
    EVP_PKEY_free(k);
    X509_free(x);
    BIO_free(kb);
    BIO_free(cb);
    return ok;
}

/* The certificate, key and (if set) CA of a server, read and checked. */
struct pems {
    struct buf cert, key, ca;
};

static void pems_release(struct pems *p)
{
    buf_release(&p->cert);
    buf_release(&p->key);
    buf_release(&p->ca);
}

static eddy_err pems_load(struct pems *p, const char *cert, const char *key, const char *ca,
                          char *err, size_t errlen)
{
    buf_init(&p->cert, PEM_MAX);
    buf_init(&p->key, PEM_MAX);
    buf_init(&p->ca, PEM_MAX);
    eddy_err e = read_pem(cert, &p->cert, err, errlen);
    if (e == EDDY_OK)
        e = read_pem(key, &p->key, err, errlen);
    if (e == EDDY_OK && set(ca))
        e = read_pem(ca, &p->ca, err, errlen);
    if (e == EDDY_OK && !key_matches(&p->cert, &p->key)) {
        e = EDDY_ERR_INVALID;
        snprintf(err, errlen, "%s is not the key of the certificate %s (or not PEM)", key, cert);
    }
    return e;
}

eddy_err tls_server_check(const struct tls_config *t, char *err, size_t errlen)
{
    if (set(t->cert) != set(t->key)) {
        snprintf(err, errlen, "--tls-cert and --tls-key go together");
        return EDDY_ERR_INVALID;
    }
    if (!set(t->cert)) {
        if (t->client_auth != TLS_CLIENT_AUTH_NONE) {
            snprintf(err, errlen, "--tls-client-auth %s needs --tls-cert and --tls-key",
                     tls_client_auth_name(t->client_auth));
            return EDDY_ERR_INVALID;
        }
        return EDDY_OK;
    }
    if (t->client_auth != TLS_CLIENT_AUTH_NONE && !set(t->ca)) {
        snprintf(err, errlen, "--tls-client-auth %s needs --tls-ca (the CA of client certificates)",
                 tls_client_auth_name(t->client_auth));
        return EDDY_ERR_INVALID;
    }
    struct pems p;
    eddy_err e = pems_load(&p, t->cert, t->key, t->ca, err, errlen);
    pems_release(&p);
    return e;
}

eddy_err tls_server_configure(struct tls_config *t, const char *client_auth, const char *listen,
                              bool insecure, char *err, size_t errlen)
{
    if (set(client_auth)) {
        if (tls_parse_client_auth(client_auth, &t->client_auth) != EDDY_OK) {
            snprintf(err, errlen, "--tls-client-auth must be none, request or require");
            return EDDY_ERR_INVALID;
        }
    } else {
        t->client_auth = tls_server_enabled(t) && set(t->ca) ? TLS_CLIENT_AUTH_REQUEST
                                                             : TLS_CLIENT_AUTH_NONE;
    }
    if (tls_server_check(t, err, errlen) != EDDY_OK)
        return EDDY_ERR_INVALID;
    if (!tls_server_enabled(t) && !insecure && !tls_listen_is_loopback(listen)) {
        snprintf(err, errlen, "protected mode: --listen %s is not a loopback address and TLS is "
                              "off; give --tls-cert and --tls-key (docs/security.md), or "
                              "--insecure to serve plaintext anyway", listen);
        return EDDY_ERR_INVALID;
    }
    return EDDY_OK;
}

static bool sig_of(const char *path, struct file_sig *s)
{
    struct stat st;
    memset(s, 0, sizeof(*s));
    if (!set(path))
        return true;
    if (stat(path, &st) != 0)
        return false;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->size = st.st_size;
    s->mtime = st.st_mtim;
    return true;
}

static bool sig_equal(const struct file_sig *a, const struct file_sig *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* The fetcher: a new config when a file changed and the new files are whole. */
static grpc_ssl_certificate_config_reload_status fetch(void *ud,
                                                       grpc_ssl_server_certificate_config **cfg)
{
    tls_server *ts = ud;
    grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    struct file_sig now[3];
    struct pems p;
    char err[256];
    bool first;

    pthread_mutex_lock(&ts->mu);
    first = ts->sig[0].ino == 0;
    if (!sig_of(ts->cert, &now[0]) || !sig_of(ts->key, &now[1]) || !sig_of(ts->ca, &now[2]))
        goto out_locked; /* a file is missing mid-rotation: keep the current ones */
    if (!first && sig_equal(&now[0], &ts->sig[0]) && sig_equal(&now[1], &ts->sig[1]) &&
        sig_equal(&now[2], &ts->sig[2]))
        goto out_locked;
    if (pems_load(&p, ts->cert, ts->key, ts->ca, err, sizeof(err)) != EDDY_OK) {
        pems_release(&p);
        log_warn("msg=\"new TLS certificate files not taken (yet)\" error=\"%s\"", err);
        st = first ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL : st;
        goto out_locked;
    }
    grpc_ssl_pem_key_cert_pair kp = {buf_str(&p.key), buf_str(&p.cert)};
    /* gRPC 1.51 asserts (ssl_security_connector.cc:366) on a fetched config without roots,
     * even when client certificates are not requested: then the server's own certificate
     * stands in, and is never used. */
    *cfg = grpc_ssl_server_certificate_config_create(
        set(ts->ca) ? buf_str(&p.ca) : buf_str(&p.cert), &kp, 1);
    pems_release(&p);
    if (*cfg == NULL) {
        st = first ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL : st;
        goto out_locked;
    }
    memcpy(ts->sig, now, sizeof(now));
    if (!first)
        log_info("msg=\"TLS certificates reloaded\" cert=%s", ts->cert);
    st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
out_locked:
    pthread_mutex_unlock(&ts->mu);
    return st;
}

tls_server *tls_server_new(const struct tls_config *t, char *err, size_t errlen)
{
    if (tls_server_check(t, err, errlen) != EDDY_OK)
        return NULL;
    tls_server *ts = calloc(1, sizeof(*ts));
    if (!ts)
        goto nomem;
    pthread_mutex_init(&ts->mu, NULL);
    ts->client_auth = t->client_auth;
    if (!(ts->cert = strdup(t->cert)) || !(ts->key = strdup(t->key)) ||
        (set(t->ca) && t->client_auth != TLS_CLIENT_AUTH_NONE && !(ts->ca = strdup(t->ca)))) {
        tls_server_free(ts);
        goto nomem;
    }
    return ts;
nomem:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void tls_server_free(tls_server *ts)
{
    if (!ts)
        return;
    free(ts->cert);
    free(ts->key);
    free(ts->ca);
    pthread_mutex_destroy(&ts->mu);
    free(ts);
}

grpc_server_credentials *tls_server_credentials(tls_server *ts)
{
    static const grpc_ssl_client_certificate_request_type req[] = {
        [TLS_CLIENT_AUTH_NONE] = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        [TLS_CLIENT_AUTH_REQUEST] = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY,
        [TLS_CLIENT_AUTH_REQUIRE] = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
    };
    grpc_ssl_server_credentials_options *o =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(req[ts->client_auth],
                                                                        fetch, ts);
    return o ? grpc_ssl_server_credentials_create_with_options(o) : NULL;
}

grpc_channel_credentials *tls_channel_credentials(const struct tls_config *t, char *err,
                                                  size_t errlen)
{
    grpc_channel_credentials *cc = NULL;
    struct buf ca = BUF_INIT(PEM_MAX), cert = BUF_INIT(PEM_MAX), key = BUF_INIT(PEM_MAX);
    if (set(t->cert) != set(t->key)) {
        snprintf(err, errlen, "--tls-cert and --tls-key go together");
        goto out;
    }
    if (read_pem(t->ca, &ca, err, errlen) != EDDY_OK)
        goto out;
    if (set(t->cert) && (read_pem(t->cert, &cert, err, errlen) != EDDY_OK ||
                         read_pem(t->key, &key, err, errlen) != EDDY_OK))
        goto out;
    grpc_ssl_pem_key_cert_pair kp = {buf_str(&key), buf_str(&cert)};
    cc = grpc_ssl_credentials_create(buf_str(&ca), set(t->cert) ? &kp : NULL, NULL, NULL);
    if (!cc)
        snprintf(err, errlen, "cannot create TLS credentials");
out:
    buf_release(&ca);
    buf_release(&cert);
    buf_release(&key);
    return cc;
}

bool tls_call_peer_verified(grpc_call *call)
{
    grpc_auth_context *ctx = grpc_call_auth_context(call);
    if (!ctx)
        return false;
    bool ok = grpc_auth_context_peer_is_authenticated(ctx) != 0;
    grpc_auth_context_release(ctx);
    return ok;
}

bool tls_call_peer_match(grpc_call *call, bool (*match)(void *ud, const char *name), void *ud)
{
    static const char *const props[] = {GRPC_X509_CN_PROPERTY_NAME,
                                        GRPC_X509_SAN_PROPERTY_NAME};
    grpc_auth_context *ctx = grpc_call_auth_context(call);
    bool found = false;
    if (!ctx)
        return false;
    for (size_t k = 0; !found && grpc_auth_context_peer_is_authenticated(ctx) && k < 2; k++) {
        grpc_auth_property_iterator it = grpc_auth_context_find_properties_by_name(ctx, props[k]);
        const grpc_auth_property *p;
        while (!found && (p = grpc_auth_property_iterator_next(&it)) != NULL) {
            char name[512];
            if (p->value_length >= sizeof(name))
                continue;
            memcpy(name, p->value, p->value_length);
            name[p->value_length] = '\0';
            found = match(ud, name);
        }
    }
    grpc_auth_context_release(ctx);
    return found;
}

bool tls_listen_is_loopback(const char *listen)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    size_t n = colon ? (size_t)(colon - listen) : strlen(listen);
    if (n >= sizeof(host))
        return false;
    memcpy(host, listen, n);
    host[n] = '\0';
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') { /* [::1]:7070 */
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    if (strcmp(host, "localhost") == 0)
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return memcmp(&a6, &in6addr_loopback, sizeof(a6)) == 0;
    return false; /* "", "0.0.0.0", "[::]", a host name: may be reachable from outside */
}
