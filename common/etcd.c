/* etcd v3.4 through the JSON gateway: requests are JSON over HTTP/1.1 POST (libcurl),
 * keys and values travel base64-encoded (OpenSSL), int64s as JSON strings, and fields
 * holding a default value (0, false, "") are omitted from replies.
 *
 * DESIGN: etcd calls block for a network round trip, so they never run on an RPC thread.
 * Unary calls run on the caller's thread with a pooled keep-alive CURL handle; a session
 * keeps its lease alive on a thread of its own (a slow keepalive must not delay anyone's
 * writes, and the loss rule needs a steady clock, not the callers' timing); a watch holds
 * one long HTTP stream on a thread of its own, woken through curl_multi_wakeup to stop. */
#include "common/etcd.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/worker.h"

#define POOL_MAX 8
#define ERR_MAX 256
#define TOKEN_MAX 512    /* longest auth token kept (simple tokens are ~30 bytes, JWT ~300) */
#define PASSWORD_MAX 1024

struct etcd_client {
    char **eps; /* base URLs without a trailing '/' */
    size_t n_eps;
    atomic_size_t cur; /* index of the endpoint calls go to */
    int64_t timeout_ms;
    struct curl_slist *headers; /* read-only once built: shared by every handle */
    pthread_mutex_t mu;         /* guards idle[] and n_idle, and 'token' */
    CURL *idle[POOL_MAX];
    size_t n_idle;
    char *ca, *cert, *key;      /* TLS files (NULL = unset); read-only once built */
    char *user, *password_file; /* authentication (NULL = none); read-only once built */
    char token[TOKEN_MAX];      /* "" = not authenticated yet; guarded by 'mu' */
    uint64_t token_gen;         /* bumped by each new token; guarded by 'mu' */
    pthread_mutex_t auth_mu;    /* one authentication at a time (see renew_token) */
};

/* --- small helpers ---------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* The last error of each thread, tagged with the client it came from. */
static _Thread_local struct {
    const etcd_client *c;
    char msg[ERR_MAX];
} last_err;

static eddy_err fail(const etcd_client *c, eddy_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static eddy_err fail(const etcd_client *c, eddy_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    last_err.c = c;
    vsnprintf(last_err.msg, sizeof(last_err.msg), fmt, ap);
    va_end(ap);
    return err;
}

const char *etcd_last_error(const etcd_client *c)
{
    return last_err.c == c ? last_err.msg : "";
}

/* Base64 of 'n' bytes; caller frees. */
static char *b64_encode(const void *p, size_t n)
{
    if (n > (size_t)INT32_MAX / 2)
        return NULL;
    char *o = malloc(4 * ((n + 2) / 3) + 1);
    if (o)
        EVP_EncodeBlock((unsigned char *)o, p, (int)n);
    return o;
}

/* Decode 's' into a malloc'd NUL-terminated buffer; '*len' excludes the NUL. EVP_DecodeBlock
 * counts the bytes the '=' padding stands for, so they are taken off. */
static char *b64_decode(const char *s, size_t *len)
{
    size_t n = strlen(s);
    if (n % 4 != 0 || n > (size_t)INT32_MAX)
        return NULL;
    unsigned char *o = malloc(3 * (n / 4) + 1);
    if (!o)
        return NULL;
    int k = n ? EVP_DecodeBlock(o, (const unsigned char *)s, (int)n) : 0;
    if (k < 0) {
        free(o);
        return NULL;
    }
    if (n >= 1 && s[n - 1] == '=')
        k--;
    if (n >= 2 && s[n - 2] == '=')
        k--;
    o[k] = '\0';
    *len = (size_t)k;
    return (char *)o;
}

/* int64 fields arrive as JSON strings; absent means 0, and so does a number no int64 holds
 * (converting it would be undefined behaviour: fuzz_etcd_json found 3.8e73). */
static int64_t jint(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (cJSON_IsString(v) && v->valuestring)
        return strtoll(v->valuestring, NULL, 10);
    if (cJSON_IsNumber(v) && v->valuedouble >= -9223372036854775808.0 &&
        v->valuedouble < 9223372036854775808.0)
        return (int64_t)v->valuedouble;
    return 0;
}

static const cJSON *jget(const cJSON *o, const char *name)
{
    return cJSON_GetObjectItemCaseSensitive(o, name);
}

static bool add_b64(cJSON *o, const char *name, const void *p, size_t n)
{
    char *s = b64_encode(p, n);
    bool ok = s && cJSON_AddStringToObject(o, name, s);
    free(s);
    return ok;
}

static bool add_i64(cJSON *o, const char *name, int64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%lld", (long long)v);
    return cJSON_AddStringToObject(o, name, s) != NULL;
}

/* The key just past every key starting with 'p' (add 1 to the last byte below 0xff);
 * length 0 stands for "\0", which etcd reads as "to the end of the keyspace". */
static size_t prefix_end(const char *p, size_t n, char *out)
{
    for (size_t i = n; i-- > 0;) {
        if ((unsigned char)p[i] != 0xff) {
            memcpy(out, p, i + 1);
            out[i] = (char)((unsigned char)p[i] + 1);
            return i + 1;
        }
    }
    return 0;
}

/* Add "key" (and "range_end" when 'prefix') for 'key' to 'o'. */
static bool add_key_range(cJSON *o, const char *key, bool prefix)
{
    size_t n = strlen(key);
    if (!prefix)
        return add_b64(o, "key", key, n);
    if (n == 0) /* everything: key = range_end = "\0" */
        return add_b64(o, "key", "", 1) && add_b64(o, "range_end", "", 1);
    char *end = malloc(n);
    if (!end)
        return false;
    size_t en = prefix_end(key, n, end);
    bool ok = add_b64(o, "key", key, n) && (en ? add_b64(o, "range_end", end, en)
                                                : add_b64(o, "range_end", "", 1));
    free(end);
    return ok;
}

void etcd_kv_release(struct etcd_kv *kv)
{
    if (!kv)
        return;
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof(*kv));
}

void etcd_kvs_release(struct etcd_kvs *kvs)
{
    if (!kvs)
        return;
    for (size_t i = 0; i < kvs->n; i++)
        etcd_kv_release(&kvs->kvs[i]);
    free(kvs->kvs);
    kvs->kvs = NULL;
    kvs->n = 0;
}

/* Fill 'kv' from a JSON KeyValue; on error 'kv' is zeroed. */
static eddy_err kv_decode(const cJSON *j, struct etcd_kv *kv)
{
    memset(kv, 0, sizeof(*kv));
    const cJSON *k = jget(j, "key"), *v = jget(j, "value");
    size_t klen = 0;
    kv->key = b64_decode(cJSON_IsString(k) ? k->valuestring : "", &klen);
    kv->value = b64_decode(cJSON_IsString(v) ? v->valuestring : "", &kv->value_len);
    if (!kv->key || !kv->value) {
        etcd_kv_release(kv);
        return EDDY_ERR_CORRUPT;
    }
    kv->create_revision = jint(j, "create_revision");
    kv->mod_revision = jint(j, "mod_revision");
    kv->version = jint(j, "version");
    kv->lease = jint(j, "lease");
    return EDDY_OK;
}

static eddy_err kvs_decode(const cJSON *arr, struct etcd_kvs *out)
{
    out->kvs = NULL;
    out->n = 0;
    int n = cJSON_GetArraySize(arr);
    if (n <= 0)
        return EDDY_OK;
    out->kvs = calloc((size_t)n, sizeof(*out->kvs));
    if (!out->kvs)
        return EDDY_ERR_NOMEM;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        eddy_err err = kv_decode(e, &out->kvs[out->n]);
        if (err != EDDY_OK) {
            etcd_kvs_release(out);
            return err;
        }
        out->n++;
    }
    return EDDY_OK;
}

/* --- the client and its requests -------------------------------------------------------- */

etcd_client *etcd_client_new(const char *endpoints, int64_t timeout_ms)
{
    return etcd_client_new_secure(endpoints, timeout_ms, NULL);
}

static bool set(const char *s)
{
    return s && *s;
}

/* strdup of an optional string: false only when out of memory. */
static bool dup_opt(char **dst, const char *src)
{
    *dst = set(src) ? strdup(src) : NULL;
    return !set(src) || *dst;
}

eddy_err etcd_security_check(const struct etcd_security *sec, char *err, size_t errlen)
{
    if (set(sec->user) != set(sec->password_file) || set(sec->cert) != set(sec->key)) {
        snprintf(err, errlen, "--etcd-user goes with --etcd-password-file, --etcd-cert with "
                              "--etcd-key");
        return EDDY_ERR_INVALID;
    }
    return EDDY_OK;
}

etcd_client *etcd_client_new_secure(const char *endpoints, int64_t timeout_ms,
                                    const struct etcd_security *sec)
{
    if (!endpoints || !*endpoints || timeout_ms <= 0)
        return NULL;
    if (sec && (set(sec->user) != set(sec->password_file) ||
                set(sec->cert) != set(sec->key)))
        return NULL;
    if (pthread_once(&curl_once, curl_init_once) != 0)
        return NULL;
    etcd_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->timeout_ms = timeout_ms;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->auth_mu, NULL);
    size_t n = 1;
    for (const char *p = endpoints; *p; p++)
        n += *p == ',';
    c->eps = calloc(n, sizeof(*c->eps));
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (!c->eps || !c->headers)
        goto fail;
    if (sec && (!dup_opt(&c->ca, sec->ca) || !dup_opt(&c->cert, sec->cert) ||
                !dup_opt(&c->key, sec->key) || !dup_opt(&c->user, sec->user) ||
                !dup_opt(&c->password_file, sec->password_file)))
        goto fail;
    for (const char *p = endpoints; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (p[len - 1] == '/' || p[len - 1] == ' '))
            len--;
        while (len && *p == ' ')
            p++, len--;
        if (len) {
            c->eps[c->n_eps] = strndup(p, len);
            if (!c->eps[c->n_eps++])
                goto fail;
        }
        p = e ? e + 1 : p + strlen(p);
    }
    if (c->n_eps == 0)
        goto fail;
    return c;
fail:
    etcd_client_free(c);
    return NULL;
}

void etcd_client_free(etcd_client *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_idle; i++)
        curl_easy_cleanup(c->idle[i]);
    for (size_t i = 0; c->eps && i < c->n_eps; i++)
        free(c->eps[i]);
    free(c->eps);
    curl_slist_free_all(c->headers);
    free(c->ca);
    free(c->cert);
    free(c->key);
    free(c->user);
    free(c->password_file);
    pthread_mutex_destroy(&c->auth_mu);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* The TLS files of 'c' on handle 'h' (the system's CAs when no CA is given). */
static void apply_tls(const etcd_client *c, CURL *h)
{
    if (c->ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca);
    if (c->cert) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert);
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->key);
    }
}

/* The current token's generation; *have: whether there is a token. */
static uint64_t token_gen(etcd_client *c, bool *have)
{
    pthread_mutex_lock(&c->mu);
    uint64_t g = c->token_gen;
    *have = c->token[0] != '\0';
    pthread_mutex_unlock(&c->mu);
    return g;
}

/* The headers of a request: the shared list, or (with authentication, unless 'anonymous')
 * a copy with the current token, whose generation goes to *gen; the caller frees the copy
 * with curl_slist_free_all. NULL when out of memory. */
static struct curl_slist *request_headers(etcd_client *c, bool anonymous, bool *owned,
                                          uint64_t *gen)
{
    *owned = false;
    *gen = 0;
    if (!c->user || anonymous)
        return c->headers;
    char line[TOKEN_MAX + 32];
    pthread_mutex_lock(&c->mu);
    snprintf(line, sizeof(line), "Authorization: %s", c->token);
    *gen = c->token_gen;
    pthread_mutex_unlock(&c->mu);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *h2 = h ? curl_slist_append(h, line) : NULL;
    if (!h2) {
        curl_slist_free_all(h);
        return NULL;
    }
    *owned = true;
    return h2;
}

const char *etcd_current_endpoint(etcd_client *c)
{
    return c->eps[atomic_load(&c->cur) % c->n_eps];
}

/* Move calls off endpoint 'failed' unless another thread already did. */
static void rotate(etcd_client *c, size_t failed)
{
    size_t expect = failed;
    atomic_compare_exchange_strong(&c->cur, &expect, (failed + 1) % c->n_eps);
}

static CURL *pool_get(etcd_client *c)
{
    CURL *h = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->n_idle)
        h = c->idle[--c->n_idle];
    pthread_mutex_unlock(&c->mu);
    return h ? h : curl_easy_init();
}

static void pool_put(etcd_client *c, CURL *h)
{
    pthread_mutex_lock(&c->mu);
    if (c->n_idle < POOL_MAX) {
        c->idle[c->n_idle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    curl_easy_cleanup(h);
}

/* The eddy_err for a gRPC status code carried in a gateway error body. */
static eddy_err from_grpc_code(int64_t code)
{
    switch (code) {
    case 3: /* INVALID_ARGUMENT */
    case 7: /* PERMISSION_DENIED */
    case 12: /* UNIMPLEMENTED */
    case 16: /* UNAUTHENTICATED */
        return EDDY_ERR_INVALID;
    case 5: /* NOT_FOUND */
    case 11: /* OUT_OF_RANGE: compacted or future revision */
        return EDDY_ERR_NOT_FOUND;
    case 6: /* ALREADY_EXISTS */
    case 9: /* FAILED_PRECONDITION */
    case 10: /* ABORTED */
        return EDDY_ERR_CONFLICT;
    case 8: /* RESOURCE_EXHAUSTED */
        return EDDY_ERR_FULL;
    case 4: /* DEADLINE_EXCEEDED */
        return EDDY_ERR_TIMEOUT;
    case 13: /* INTERNAL */
    case 15: /* DATA_LOSS */
        return EDDY_ERR_IO;
    default: /* 1 CANCELLED, 2 UNKNOWN (no leader, request timed out), 14 UNAVAILABLE */
        return EDDY_ERR_UNAVAILABLE;
    }
}

/* Map a non-200 reply: the gateway's {"code":..,"message":..} or plain text. */
static eddy_err http_error(const etcd_client *c, const char *ep, long http, const struct buf *b,
                           bool *auth_failed)
{
    cJSON *j = b->p ? cJSON_Parse(buf_str(b)) : NULL;
    const cJSON *msg = jget(j, "message");
    const cJSON *code = jget(j, "code");
    eddy_err err;
    if (cJSON_IsNumber(code)) {
        err = from_grpc_code(code->valueint); /* cJSON clamps it to the range of an int */
        *auth_failed = code->valueint == 16; /* UNAUTHENTICATED: invalid or expired token */
        fail(c, err, "%s: http %ld code %d: %s", ep, http, code->valueint,
             cJSON_IsString(msg) ? msg->valuestring : "");
    } else {
        err = http >= 500 ? EDDY_ERR_UNAVAILABLE : EDDY_ERR_INVALID;
        fail(c, err, "%s: http %ld: %.120s", ep, http, buf_str(b));
    }
    cJSON_Delete(j);
    return err;
}

enum req_kind {
    REQ_WRITE, /* may have been applied if the reply was lost: never resent */
    REQ_READ,  /* safe to resend on another endpoint */
};

/* One attempt of request() (endpoint retries included), without the token if 'anonymous'.
 * '*auth_failed' tells whether etcd refused the token of generation '*gen' (gateway code
 * 16: invalid or expired). */
static eddy_err request_once(etcd_client *c, const char *path, const cJSON *body,
                             enum req_kind kind, int64_t timeout_ms, cJSON **out,
                             bool anonymous, bool *auth_failed, uint64_t *gen)
{
    *out = NULL;
    *auth_failed = false;
    bool own_headers = false;
    struct curl_slist *headers = request_headers(c, anonymous, &own_headers, gen);
    char *json = cJSON_PrintUnformatted(body);
    CURL *h = pool_get(c);
    if (!json || !h || !headers) {
        free(json);
        if (h)
            curl_easy_cleanup(h);
        if (own_headers)
            curl_slist_free_all(headers);
        return fail(c, EDDY_ERR_NOMEM, "out of memory");
    }
    last_err.c = NULL;
    int64_t deadline = clock_mono_ms() + timeout_ms;
    size_t start = atomic_load(&c->cur);
    eddy_err err = EDDY_ERR_UNAVAILABLE;
    char cerr[CURL_ERROR_SIZE];
    struct buf_sink r = BUF_SINK_INIT(ETCD_MAX_REPLY);
    for (size_t attempt = 0; attempt < c->n_eps; attempt++) {
        size_t idx = (start + attempt) % c->n_eps;
        const char *ep = c->eps[idx];
        int64_t left = deadline - clock_mono_ms();
        if (left <= 0) {
            err = fail(c, EDDY_ERR_TIMEOUT, "%s%s: deadline of %lld ms passed", ep, path,
                       (long long)timeout_ms);
            break;
        }
        char url[512];
        snprintf(url, sizeof(url), "%s%s", ep, path);
        buf_reset(&r.b);
        r.err = EDDY_OK;
        cerr[0] = '\0';
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        apply_tls(c, h);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, json);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(json));
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_sink_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)left);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)left);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
        CURLcode rc = curl_easy_perform(h);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
        const char *why = cerr[0] ? cerr : curl_easy_strerror(rc);
        if (rc == CURLE_OK) {
            long http = 0;
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &http);
            if (http == 200) {
                *out = cJSON_Parse(buf_str(&r.b));
                err = *out ? EDDY_OK
                           : fail(c, EDDY_ERR_CORRUPT, "%s%s: reply is not JSON: %.80s", ep,
                                  path, buf_str(&r.b));
                break;
            }
            err = http_error(c, ep, http, &r.b, auth_failed);
            if (http < 500)
                break;
            rotate(c, idx);
            if (kind != REQ_READ)
                break;
        } else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) {
            /* Never delivered: safe to try the next endpoint for any request. */
            err = fail(c, EDDY_ERR_UNAVAILABLE, "%s: %s", ep, why);
            rotate(c, idx);
        } else if (rc == CURLE_OPERATION_TIMEDOUT) {
            err = fail(c, EDDY_ERR_TIMEOUT, "%s%s: %s", ep, path, why);
            rotate(c, idx);
            break;
        } else if (rc == CURLE_WRITE_ERROR && r.err == EDDY_ERR_TOO_LARGE) {
            err = fail(c, EDDY_ERR_TOO_LARGE, "%s%s: reply over %u bytes", ep, path,
                       ETCD_MAX_REPLY);
            break;
        } else if (rc == CURLE_WRITE_ERROR || rc == CURLE_OUT_OF_MEMORY) {
            err = fail(c, EDDY_ERR_NOMEM, "%s%s: out of memory", ep, path);
            break;
        } else {
            err = fail(c, EDDY_ERR_UNAVAILABLE, "%s%s: %s", ep, path, why);
            rotate(c, idx);
            if (kind != REQ_READ)
                break;
        }
    }
    buf_release(&r.b);
    free(json);
    pool_put(c, h);
    curl_slist_free_all(own_headers ? headers : NULL);
    return err;
}

/* Read the first line of the password file into 'pw'. */
static eddy_err read_password(const etcd_client *c, char *pw, size_t n)
{
    FILE *f = fopen(c->password_file, "r");
    if (!f)
        return fail(c, EDDY_ERR_IO, "cannot read the etcd password file %s", c->password_file);
    bool ok = fgets(pw, (int)n, f) != NULL;
    fclose(f);
    if (!ok)
        return fail(c, EDDY_ERR_INVALID, "the etcd password file %s is empty", c->password_file);
    pw[strcspn(pw, "\r\n")] = '\0';
    return EDDY_OK;
}

/* POST /v3/auth/authenticate and keep the token (a new generation). Under auth_mu. */
static eddy_err authenticate(etcd_client *c, int64_t timeout_ms)
{
    char pw[PASSWORD_MAX];
    eddy_err err = read_password(c, pw, sizeof(pw));
    cJSON *body = NULL, *reply = NULL;
    bool auth_failed;
    uint64_t unused;
    if (err != EDDY_OK)
        goto out;
    err = EDDY_ERR_NOMEM;
    body = cJSON_CreateObject();
    if (!body || !cJSON_AddStringToObject(body, "name", c->user) ||
        !cJSON_AddStringToObject(body, "password", pw))
        goto out;
    if ((err = request_once(c, "/v3/auth/authenticate", body, REQ_READ, timeout_ms, &reply,
                            true, &auth_failed, &unused)) != EDDY_OK)
        goto out;
    const cJSON *tok = jget(reply, "token");
    if (!cJSON_IsString(tok) || !*tok->valuestring || strlen(tok->valuestring) >= TOKEN_MAX) {
        err = fail(c, EDDY_ERR_CORRUPT, "etcd authenticate: no usable token in the reply");
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    snprintf(c->token, sizeof(c->token), "%s", tok->valuestring);
    c->token_gen++;
    pthread_mutex_unlock(&c->mu);
out:
    explicit_bzero(pw, sizeof(pw));
    if (body) { /* the password is in it too */
        cJSON *p = cJSON_GetObjectItem(body, "password");
        if (cJSON_IsString(p))
            explicit_bzero(p->valuestring, strlen(p->valuestring));
    }
    cJSON_Delete(body);
    cJSON_Delete(reply);
    if (err != EDDY_OK)
        log_warn("msg=\"etcd authentication failed\" user=%s error=\"%s\"", c->user,
                 etcd_last_error(c));
    return err;
}

/* Replace the token of generation 'seen' (the one that failed, or none). Single flight:
 * etcd hashes the password (bcrypt, 0.1-0.7 s on the 2-core test machine), so the threads that find the same
 * token refused wait for one authentication instead of each running their own; a thread
 * that finds a newer token than 'seen' just uses it. */
static eddy_err renew_token(etcd_client *c, uint64_t seen, int64_t timeout_ms)
{
    pthread_mutex_lock(&c->auth_mu);
    bool have;
    uint64_t now = token_gen(c, &have);
    eddy_err err = EDDY_OK;
    if (now == seen || !have) {
        err = authenticate(c, timeout_ms);
        if (err == EDDY_OK && now > 0)
            log_info("msg=\"etcd token renewed\" user=%s", c->user);
    }
    pthread_mutex_unlock(&c->auth_mu);
    return err;
}

/* POST 'body' to 'path' and parse the 200 reply into '*out' (caller deletes). The whole
 * call, endpoint retries included, is bounded by 'timeout_ms'. With authentication: a
 * token is fetched first if there is none, and renewed once if etcd refuses it. */
static eddy_err request(etcd_client *c, const char *path, const cJSON *body, enum req_kind kind,
                        int64_t timeout_ms, cJSON **out)
{
    bool auth_failed = false, have = true;
    uint64_t gen = 0;
    eddy_err err;
    if (c->user) {
        gen = token_gen(c, &have);
        if (!have && (err = renew_token(c, gen, timeout_ms)) != EDDY_OK)
            return err;
    }
    err = request_once(c, path, body, kind, timeout_ms, out, false, &auth_failed, &gen);
    if (auth_failed && renew_token(c, gen, timeout_ms) == EDDY_OK)
        err = request_once(c, path, body, kind, timeout_ms, out, false, &auth_failed, &gen);
    return err;
}

static eddy_err post(etcd_client *c, const char *path, const cJSON *body, enum req_kind kind,
                     cJSON **out)
{
    return request(c, path, body, kind, c->timeout_ms, out);
}

static int64_t header_revision(const cJSON *reply)
{
    return jint(jget(reply, "header"), "revision");
}

/* --- KV ---------------------------------------------------------------------------------- */

/* Add the fields of a PutRequest to 'o'. */
static bool put_fields(cJSON *o, const char *key, const void *val, size_t vlen, int64_t lease)
{
    bool ok = add_b64(o, "key", key, strlen(key)) && add_b64(o, "value", val, vlen);
    if (lease == ETCD_LEASE_KEEP)
        ok = ok && cJSON_AddTrueToObject(o, "ignore_lease");
    else if (lease > 0)
        ok = ok && add_i64(o, "lease", lease);
    return ok;
}

eddy_err etcd_put(etcd_client *c, const char *key, const void *val, size_t vlen, int64_t lease,
                  int64_t *revision)
{
    if (!key || !*key || (!val && vlen))
        return fail(c, EDDY_ERR_INVALID, "put: empty key");
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    if (!body || !put_fields(body, key, val ? val : "", vlen, lease))
        goto out;
    err = post(c, "/v3/kv/put", body, REQ_WRITE, &reply);
    if (err == EDDY_OK && revision)
        *revision = header_revision(reply);
out:
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

/* A Range answer's keys and header revision. */
static eddy_err range_reply(const cJSON *reply, struct etcd_kvs *out, int64_t *revision)
{
    eddy_err err = kvs_decode(jget(reply, "kvs"), out);
    if (revision)
        *revision = header_revision(reply);
    return err;
}

eddy_err etcd_decode_range(const char *json, size_t len, struct etcd_kvs *out,
                           int64_t *revision)
{
    out->kvs = NULL;
    out->n = 0;
    cJSON *reply = cJSON_ParseWithLength(json, len);
    eddy_err err = reply ? range_reply(reply, out, revision) : EDDY_ERR_CORRUPT;
    cJSON_Delete(reply);
    return err;
}

/* Range over 'key' (or its prefix): the reply's kvs and header revision. */
static eddy_err range(etcd_client *c, const char *key, bool prefix, struct etcd_kvs *out,
                      int64_t *revision)
{
    out->kvs = NULL;
    out->n = 0;
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    if (!body || !add_key_range(body, key, prefix))
        goto out;
    err = post(c, "/v3/kv/range", body, REQ_READ, &reply);
    if (err != EDDY_OK)
        goto out;
    err = range_reply(reply, out, revision);
    if (err != EDDY_OK)
        fail(c, err, "range: cannot decode kvs");
out:
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

eddy_err etcd_get(etcd_client *c, const char *key, struct etcd_kv *out, bool *found)
{
    memset(out, 0, sizeof(*out));
    *found = false;
    if (!key || !*key)
        return fail(c, EDDY_ERR_INVALID, "get: empty key");
    struct etcd_kvs kvs;
    eddy_err err = range(c, key, false, &kvs, NULL);
    if (err != EDDY_OK)
        return err;
    if (kvs.n > 0) {
        *out = kvs.kvs[0];
        memset(&kvs.kvs[0], 0, sizeof(kvs.kvs[0]));
        *found = true;
    }
    etcd_kvs_release(&kvs);
    return EDDY_OK;
}

eddy_err etcd_range_prefix(etcd_client *c, const char *prefix, struct etcd_kvs *out,
                           int64_t *revision)
{
    if (!prefix) {
        out->kvs = NULL;
        out->n = 0;
        return fail(c, EDDY_ERR_INVALID, "range: no prefix");
    }
    return range(c, prefix, true, out, revision);
}

static eddy_err delete_range(etcd_client *c, const char *key, bool prefix, int64_t *deleted)
{
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    if (!body || !add_key_range(body, key, prefix))
        goto out;
    err = post(c, "/v3/kv/deleterange", body, REQ_WRITE, &reply);
    if (err == EDDY_OK && deleted)
        *deleted = jint(reply, "deleted");
out:
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

eddy_err etcd_delete(etcd_client *c, const char *key)
{
    if (!key || !*key)
        return fail(c, EDDY_ERR_INVALID, "delete: empty key");
    return delete_range(c, key, false, NULL);
}

eddy_err etcd_delete_prefix(etcd_client *c, const char *prefix, int64_t *deleted)
{
    if (!prefix)
        return fail(c, EDDY_ERR_INVALID, "delete: no prefix");
    return delete_range(c, prefix, true, deleted);
}

eddy_err etcd_compact(etcd_client *c, int64_t revision)
{
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    if (body && add_i64(body, "revision", revision))
        err = post(c, "/v3/kv/compaction", body, REQ_WRITE, &reply);
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

/* --- transactions ------------------------------------------------------------------------ */

void etcd_txn_init(struct etcd_txn *t)
{
    memset(t, 0, sizeof(*t));
}

static struct etcd_txn_cmp *txn_cmp_slot(struct etcd_txn *t)
{
    if (t->n_cmp >= ETCD_TXN_MAX) {
        t->overflow = true;
        return NULL;
    }
    return &t->cmp[t->n_cmp++];
}

void etcd_txn_compare(struct etcd_txn *t, const char *key, enum etcd_cmp_target target,
                      enum etcd_cmp_result result, int64_t n)
{
    struct etcd_txn_cmp *cmp = txn_cmp_slot(t);
    if (cmp)
        *cmp = (struct etcd_txn_cmp){.key = key, .target = target, .result = result, .number = n};
}

void etcd_txn_compare_value(struct etcd_txn *t, const char *key, enum etcd_cmp_result result,
                            const void *value, size_t len)
{
    struct etcd_txn_cmp *cmp = txn_cmp_slot(t);
    if (cmp)
        *cmp = (struct etcd_txn_cmp){
            .key = key, .target = ETCD_CMP_VALUE, .result = result, .value = value,
            .value_len = len};
}

static void txn_add_op(struct etcd_txn *t, enum etcd_branch b, struct etcd_txn_op op)
{
    if ((unsigned)b > ETCD_ON_FAILURE || t->n_ops[b] >= ETCD_TXN_MAX) {
        t->overflow = true;
        return;
    }
    t->ops[b][t->n_ops[b]++] = op;
}

void etcd_txn_put(struct etcd_txn *t, enum etcd_branch b, const char *key, const void *val,
                  size_t vlen, int64_t lease)
{
    txn_add_op(t, b, (struct etcd_txn_op){.type = ETCD_OP_PUT, .key = key, .value = val,
                                          .value_len = vlen, .lease = lease});
}

void etcd_txn_delete(struct etcd_txn *t, enum etcd_branch b, const char *key, bool prefix)
{
    txn_add_op(t, b, (struct etcd_txn_op){.type = ETCD_OP_DELETE, .key = key, .prefix = prefix});
}

void etcd_txn_range(struct etcd_txn *t, enum etcd_branch b, const char *key, bool prefix)
{
    txn_add_op(t, b, (struct etcd_txn_op){.type = ETCD_OP_RANGE, .key = key, .prefix = prefix});
}

void etcd_txn_result_release(struct etcd_txn_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_ops; i++)
        etcd_kvs_release(&r->ops[i].kvs);
    free(r->ops);
    memset(r, 0, sizeof(*r));
}

static const char *const cmp_targets[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
static const char *const cmp_results[] = {"EQUAL", "NOT_EQUAL", "GREATER", "LESS"};

static cJSON *txn_compare_json(const struct etcd_txn_cmp *cmp)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cmp->key && add_b64(o, "key", cmp->key, strlen(cmp->key)) &&
              cJSON_AddStringToObject(o, "target", cmp_targets[cmp->target]) &&
              cJSON_AddStringToObject(o, "result", cmp_results[cmp->result]);
    switch (cmp->target) {
    case ETCD_CMP_VERSION:
        ok = ok && add_i64(o, "version", cmp->number);
        break;
    case ETCD_CMP_CREATE:
        ok = ok && add_i64(o, "create_revision", cmp->number);
        break;
    case ETCD_CMP_MOD:
        ok = ok && add_i64(o, "mod_revision", cmp->number);
        break;
    case ETCD_CMP_LEASE:
        ok = ok && add_i64(o, "lease", cmp->number);
        break;
    case ETCD_CMP_VALUE:
        ok = ok && add_b64(o, "value", cmp->value ? cmp->value : "", cmp->value_len);
        break;
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *txn_op_json(const struct etcd_txn_op *op)
{
    static const char *const names[] = {"request_put", "request_delete_range",
                                        "request_range"};
    cJSON *o = cJSON_CreateObject();
    cJSON *req = o ? cJSON_AddObjectToObject(o, names[op->type]) : NULL;
    bool ok = req && op->key;
    if (ok && op->type == ETCD_OP_PUT)
        ok = put_fields(req, op->key, op->value ? op->value : "", op->value_len, op->lease);
    else if (ok)
        ok = add_key_range(req, op->key, op->prefix);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static bool txn_ops_json(cJSON *body, const char *name, const struct etcd_txn_op *ops, size_t n)
{
    if (n == 0)
        return true;
    cJSON *arr = cJSON_AddArrayToObject(body, name);
    if (!arr)
        return false;
    for (size_t i = 0; i < n; i++) {
        cJSON *o = txn_op_json(&ops[i]);
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            return false;
        }
    }
    return true;
}

/* A Txn answer to 't': which branch ran, the revision, and the result of each op of that
 * branch ('*bad': the op whose range did not decode). */
static eddy_err txn_reply(const cJSON *reply, const struct etcd_txn *t, struct etcd_txn_result *r,
                          size_t *bad)
{
    r->succeeded = cJSON_IsTrue(jget(reply, "succeeded")); /* absent when false */
    r->revision = header_revision(reply);
    const struct etcd_txn_op *ops = t->ops[r->succeeded ? ETCD_ON_SUCCESS : ETCD_ON_FAILURE];
    size_t n = t->n_ops[r->succeeded ? ETCD_ON_SUCCESS : ETCD_ON_FAILURE];
    const cJSON *resps = jget(reply, "responses");
    if (n == 0)
        return EDDY_OK;
    r->ops = calloc(n, sizeof(*r->ops));
    if (!r->ops)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        const cJSON *resp = cJSON_GetArrayItem(resps, (int)i);
        struct etcd_op_result *res = &r->ops[r->n_ops++];
        res->type = ops[i].type;
        if (ops[i].type == ETCD_OP_RANGE) {
            eddy_err err = kvs_decode(jget(jget(resp, "response_range"), "kvs"), &res->kvs);
            if (err != EDDY_OK) {
                *bad = i;
                return err;
            }
        } else if (ops[i].type == ETCD_OP_DELETE) {
            res->deleted = jint(jget(resp, "response_delete_range"), "deleted");
        }
    }
    return EDDY_OK;
}

eddy_err etcd_decode_txn(const char *json, size_t len, const struct etcd_txn *t,
                         struct etcd_txn_result *r)
{
    memset(r, 0, sizeof(*r));
    size_t bad = 0;
    cJSON *reply = cJSON_ParseWithLength(json, len);
    eddy_err err = reply ? txn_reply(reply, t, r, &bad) : EDDY_ERR_CORRUPT;
    if (err != EDDY_OK)
        etcd_txn_result_release(r);
    cJSON_Delete(reply);
    return err;
}

eddy_err etcd_txn(etcd_client *c, const struct etcd_txn *t, struct etcd_txn_result *r)
{
    memset(r, 0, sizeof(*r));
    if (t->overflow)
        return fail(c, EDDY_ERR_TOO_LARGE, "txn: more than %d compares or ops", ETCD_TXN_MAX);
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    cJSON *cmps = body ? cJSON_AddArrayToObject(body, "compare") : NULL;
    if (!cmps)
        goto out;
    for (size_t i = 0; i < t->n_cmp; i++) {
        if ((unsigned)t->cmp[i].target > ETCD_CMP_LEASE ||
            (unsigned)t->cmp[i].result > ETCD_CMP_LESS || !t->cmp[i].key) {
            err = fail(c, EDDY_ERR_INVALID, "txn: bad compare %zu", i);
            goto out;
        }
        cJSON *o = txn_compare_json(&t->cmp[i]);
        if (!o || !cJSON_AddItemToArray(cmps, o)) {
            cJSON_Delete(o);
            goto out;
        }
    }
    if (!txn_ops_json(body, "success", t->ops[ETCD_ON_SUCCESS], t->n_ops[ETCD_ON_SUCCESS]) ||
        !txn_ops_json(body, "failure", t->ops[ETCD_ON_FAILURE], t->n_ops[ETCD_ON_FAILURE]))
        goto out;
    err = post(c, "/v3/kv/txn", body, REQ_WRITE, &reply);
    if (err != EDDY_OK)
        goto out;
    size_t bad = 0;
    err = txn_reply(reply, t, r, &bad);
    if (err == EDDY_ERR_CORRUPT)
        fail(c, err, "txn: cannot decode range %zu", bad);
    else if (err != EDDY_OK)
        fail(c, err, "out of memory");
out:
    if (err != EDDY_OK)
        etcd_txn_result_release(r);
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

eddy_err etcd_txn_cas(etcd_client *c, const char *key, int64_t expect_mod_revision,
                      const void *val, size_t vlen, int64_t lease, bool *succeeded,
                      struct etcd_kv *current)
{
    if (current)
        memset(current, 0, sizeof(*current));
    *succeeded = false;
    if (!key || !*key || expect_mod_revision < 0)
        return fail(c, EDDY_ERR_INVALID, "cas: empty key or negative revision");
    struct etcd_txn t;
    etcd_txn_init(&t);
    /* A missing key has mod_revision 0, so one compare covers create-if-absent too. */
    etcd_txn_compare(&t, key, ETCD_CMP_MOD, ETCD_CMP_EQUAL, expect_mod_revision);
    etcd_txn_put(&t, ETCD_ON_SUCCESS, key, val, vlen, lease);
    etcd_txn_range(&t, ETCD_ON_SUCCESS, key, false); /* reads the write it follows */
    etcd_txn_range(&t, ETCD_ON_FAILURE, key, false);
    struct etcd_txn_result r;
    eddy_err err = etcd_txn(c, &t, &r);
    if (err != EDDY_OK)
        return err;
    *succeeded = r.succeeded;
    const struct etcd_kvs *kvs = &r.ops[r.n_ops - 1].kvs;
    if (current && kvs->n > 0) {
        *current = kvs->kvs[0];
        memset(&kvs->kvs[0], 0, sizeof(kvs->kvs[0]));
    }
    etcd_txn_result_release(&r);
    return EDDY_OK;
}

/* --- leases ------------------------------------------------------------------------------ */

static eddy_err lease_grant(etcd_client *c, int64_t ttl_s, int64_t timeout_ms, int64_t *id,
                            int64_t *granted)
{
    if (ttl_s <= 0)
        return fail(c, EDDY_ERR_INVALID, "lease grant: TTL must be > 0");
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    /* "TTL", not "ttl": the gateway ignores unknown fields and would grant the minimum. */
    if (!body || !add_i64(body, "TTL", ttl_s))
        goto out;
    err = request(c, "/v3/lease/grant", body, REQ_WRITE, timeout_ms, &reply);
    if (err != EDDY_OK)
        goto out;
    *id = jint(reply, "ID");
    if (granted)
        *granted = jint(reply, "TTL");
    if (*id == 0)
        err = fail(c, EDDY_ERR_CORRUPT, "lease grant: reply without ID");
out:
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

eddy_err etcd_lease_grant(etcd_client *c, int64_t ttl_s, int64_t *id, int64_t *granted_ttl_s)
{
    return lease_grant(c, ttl_s, c->timeout_ms, id, granted_ttl_s);
}

static eddy_err lease_keepalive(etcd_client *c, int64_t id, int64_t timeout_ms,
                                int64_t *ttl_left)
{
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    if (!body || !add_i64(body, "ID", id))
        goto out;
    err = request(c, "/v3/lease/keepalive", body, REQ_READ, timeout_ms, &reply);
    if (err != EDDY_OK)
        goto out;
    /* A stream endpoint: {"result":{...}} or {"error":{"grpc_code":..,"message":..}}. */
    const cJSON *res = jget(reply, "result"), *e = jget(reply, "error");
    if (!res) {
        const cJSON *code = jget(e, "grpc_code"), *msg = jget(e, "message");
        err = fail(c, cJSON_IsNumber(code) ? from_grpc_code(code->valueint) : EDDY_ERR_CORRUPT,
                   "lease keepalive: %s", cJSON_IsString(msg) ? msg->valuestring : "no result");
        goto out;
    }
    /* An expired lease still gets HTTP 200, only without a TTL. */
    int64_t ttl = jint(res, "TTL");
    if (ttl <= 0) {
        err = fail(c, EDDY_ERR_NOT_FOUND, "lease %lld expired", (long long)id);
        goto out;
    }
    if (ttl_left)
        *ttl_left = ttl;
out:
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

eddy_err etcd_lease_keepalive(etcd_client *c, int64_t id, int64_t *ttl_left)
{
    return lease_keepalive(c, id, c->timeout_ms, ttl_left);
}

static eddy_err lease_revoke(etcd_client *c, int64_t id, int64_t timeout_ms)
{
    cJSON *body = cJSON_CreateObject(), *reply = NULL;
    eddy_err err = EDDY_ERR_NOMEM;
    if (body && add_i64(body, "ID", id))
        err = request(c, "/v3/lease/revoke", body, REQ_WRITE, timeout_ms, &reply);
    cJSON_Delete(body);
    cJSON_Delete(reply);
    return err;
}

eddy_err etcd_lease_revoke(etcd_client *c, int64_t id)
{
    return lease_revoke(c, id, c->timeout_ms);
}

/* --- sessions ------------------------------------------------------------------------------ */

/* The session thread owns the keepalive schedule; 'mu' guards the fields below it, read by
 * etcd_session_alive from any thread. */
struct etcd_session {
    etcd_client *c;
    int64_t lease;
    int64_t ttl_ms;
    int64_t margin_ms;
    etcd_session_lost_fn *on_lost;
    void *ud;
    struct worker worker; /* the keepalive thread */
    pthread_mutex_t mu;   /* guards the three below */
    bool lost;            /* final */
    bool expired;         /* etcd said the lease is gone: no revoke needed */
    int64_t deadline_ms;  /* CLOCK_MONOTONIC: alive strictly before this */
};

int64_t etcd_session_lease(const etcd_session *s)
{
    return s->lease;
}

int64_t etcd_session_ttl(const etcd_session *s)
{
    return s->ttl_ms / 1000;
}

/* Under s->mu: apply the time rule, making loss final. */
static bool session_alive_locked(etcd_session *s)
{
    if (!s->lost && clock_mono_ms() >= s->deadline_ms)
        s->lost = true;
    return !s->lost;
}

bool etcd_session_alive(etcd_session *s)
{
    pthread_mutex_lock(&s->mu);
    bool alive = session_alive_locked(s);
    pthread_mutex_unlock(&s->mu);
    return alive;
}

static void session_main(struct worker *wk, void *arg)
{
    etcd_session *s = arg;
    int64_t interval = s->ttl_ms / 3, retry = s->ttl_ms / 12 > 50 ? s->ttl_ms / 12 : 50;
    /* A keepalive that hangs must not hold the thread past the next one. */
    int64_t call_timeout = interval < s->c->timeout_ms ? interval : s->c->timeout_ms;
    int64_t next = clock_mono_ms() + interval;
    int failures = 0;
    while (!worker_stopping(wk)) {
        pthread_mutex_lock(&s->mu);
        bool alive = session_alive_locked(s);
        int64_t wake = next < s->deadline_ms ? next : s->deadline_ms;
        pthread_mutex_unlock(&s->mu);
        if (!alive)
            break;
        int64_t now = clock_mono_ms();
        if (now < wake) {
            worker_wait(wk, wake - now);
            continue; /* re-check stop and the deadline */
        }
        int64_t sent = clock_mono_ms();
        int64_t ttl_left = 0;
        eddy_err err = lease_keepalive(s->c, s->lease, call_timeout, &ttl_left);
        const char *why = etcd_last_error(s->c);
        pthread_mutex_lock(&s->mu);
        if (err == EDDY_OK) {
            int64_t ttl = ttl_left * 1000 < s->ttl_ms ? ttl_left * 1000 : s->ttl_ms;
            /* Only a keepalive sent while still alive may extend the deadline: loss is final. */
            if (session_alive_locked(s) && sent + ttl - s->margin_ms > s->deadline_ms)
                s->deadline_ms = sent + ttl - s->margin_ms;
            next = sent + interval;
            failures = 0;
        } else if (err == EDDY_ERR_NOT_FOUND) {
            s->lost = s->expired = true;
            log_warn("msg=\"etcd lease expired\" lease=%lld", (long long)s->lease);
        } else {
            if (failures++ % 10 == 0) /* the first of a run, then every tenth */
                log_warn("msg=\"etcd keepalive failed\" lease=%lld failures=%d err=\"%s\"",
                         (long long)s->lease, failures, why);
            next = clock_mono_ms() + retry;
        }
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&s->mu);
    bool notify = s->lost && !worker_stopping(wk);
    pthread_mutex_unlock(&s->mu);
    if (notify) {
        log_warn("msg=\"etcd session lost\" lease=%lld", (long long)s->lease);
        if (s->on_lost)
            s->on_lost(s, s->ud);
    }
}

etcd_session *etcd_session_new(etcd_client *c, int64_t ttl_s, etcd_session_lost_fn *on_lost,
                               void *ud)
{
    etcd_session *s = calloc(1, sizeof(*s));
    if (!s) {
        fail(c, EDDY_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->c = c;
    s->on_lost = on_lost;
    s->ud = ud;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        fail(c, EDDY_ERR_NOMEM, "cannot create a mutex");
        return NULL;
    }
    int64_t sent = clock_mono_ms(), granted = 0;
    if (lease_grant(c, ttl_s, c->timeout_ms, &s->lease, &granted) != EDDY_OK)
        goto fail;
    s->ttl_ms = (granted > 0 ? granted : ttl_s) * 1000;
    s->margin_ms = s->ttl_ms / 4 > 100 ? s->ttl_ms / 4 : 100;
    s->deadline_ms = sent + s->ttl_ms - s->margin_ms;
    if (worker_start(&s->worker, "etcd-lease", session_main, s) != EDDY_OK) {
        lease_revoke(c, s->lease, c->timeout_ms);
        fail(c, EDDY_ERR_NOMEM, "cannot start the session thread");
        goto fail;
    }
    return s;
fail:
    pthread_mutex_destroy(&s->mu);
    free(s);
    return NULL;
}

void etcd_session_free(etcd_session *s)
{
    if (!s)
        return;
    worker_stop(&s->worker);
    if (!s->expired) { /* best effort: if etcd is unreachable the lease simply expires */
        int64_t t = s->c->timeout_ms < 1000 ? s->c->timeout_ms : 1000;
        eddy_err err = lease_revoke(s->c, s->lease, t);
        if (err != EDDY_OK && err != EDDY_ERR_NOT_FOUND)
            log_warn("msg=\"etcd lease revoke failed\" lease=%lld err=\"%s\"",
                     (long long)s->lease, etcd_last_error(s->c));
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* --- watches ------------------------------------------------------------------------------ */

/* Everything but 'stop', 'mu'/'cv' and 'connected' belongs to the watch thread. */
struct etcd_watch {
    etcd_client *c;
    char *key;
    bool prefix;
    etcd_watch_fn *cb;
    void *ud;
    struct worker worker; /* the watch thread; its stop also wakes 'multi' */
    CURL *h;
    CURLM *multi;
    atomic_bool connected;
    int64_t next_rev;  /* where a new stream starts: after the last revision delivered */
    int64_t conn_rev;  /* start_revision requested by the current stream (0: now) */
    bool created;      /* etcd confirmed the current stream */
    bool renew;        /* the last stream failed before etcd confirmed it: new token first */
    uint64_t token_gen; /* the token generation the current stream sent */
    bool restart;      /* close the stream and reopen at once (after RESYNC) */
    char why[ERR_MAX]; /* why the current stream failed */
    struct buf line;   /* bytes received and not yet split into lines */
};

static int64_t watch_deliver(const struct etcd_event *ev, void *ud)
{
    etcd_watch *w = ud;
    if (!worker_stopping(&w->worker))
        w->cb(ev, w->ud);
    return 0;
}

/* Decode the PUT and DELETE events of a watch answer's "events" in turn, each handed to
 * 'cb', and the newest mod_revision among them into '*last'. False at the first event
 * that does not decode (the ones before it were delivered). */
static bool watch_events(const cJSON *events, int64_t hrev, etcd_watch_fn *cb, void *ud,
                         int64_t *last)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, events)
    {
        struct etcd_event ev = {.revision = hrev};
        const cJSON *type = jget(e, "type"), *prev = jget(e, "prev_kv");
        ev.type = cJSON_IsString(type) && strcmp(type->valuestring, "DELETE") == 0
                      ? ETCD_EVENT_DELETE
                      : ETCD_EVENT_PUT; /* PUT is the default: omitted */
        if (kv_decode(jget(e, "kv"), &ev.kv) != EDDY_OK ||
            (prev && kv_decode(prev, &ev.prev_kv) != EDDY_OK)) {
            etcd_kv_release(&ev.kv);
            return false;
        }
        cb(&ev, ud);
        if (ev.kv.mod_revision > *last)
            *last = ev.kv.mod_revision;
        etcd_kv_release(&ev.kv);
        etcd_kv_release(&ev.prev_kv);
    }
    return true;
}

eddy_err etcd_decode_watch_events(const char *json, size_t len, etcd_watch_fn *cb, void *ud,
                                  int64_t *last)
{
    *last = 0;
    cJSON *j = cJSON_ParseWithLength(json, len);
    const cJSON *res = jget(j, "result");
    eddy_err err = EDDY_ERR_CORRUPT;
    if (res && watch_events(jget(res, "events"), header_revision(res), cb, ud, last))
        err = EDDY_OK;
    cJSON_Delete(j);
    return err;
}

/* Handle one {"result":{...}} line. Returns false to close the stream (error or RESYNC). */
static bool watch_line(etcd_watch *w, const char *p, size_t n)
{
    while (n && (p[n - 1] == '\r' || p[n - 1] == ' '))
        n--;
    if (n == 0)
        return true;
    cJSON *j = cJSON_ParseWithLength(p, n);
    const cJSON *res = jget(j, "result");
    bool keep = false;
    if (!res) {
        /* An error body ({"error":{...}} in the stream, {"code":..} or plain text). */
        const cJSON *e = jget(j, "error"), *msg = jget(e ? e : j, "message");
        if (cJSON_IsString(msg))
            snprintf(w->why, sizeof(w->why), "%s", msg->valuestring);
        else
            snprintf(w->why, sizeof(w->why), "%.*s", (int)(n < 200 ? n : 200), p);
        goto out;
    }
    int64_t hrev = header_revision(res);
    bool created = cJSON_IsTrue(jget(res, "created"));
    if (created) {
        w->created = true;
        atomic_store(&w->connected, true);
        if (w->conn_rev == 0 && w->next_rev == 0 && hrev > 0)
            w->next_rev = hrev + 1; /* "from now" means after the revision it was created at */
    }
    if (cJSON_IsTrue(jget(res, "canceled"))) {
        int64_t crev = jint(res, "compact_revision");
        if (crev <= 0) {
            /* refused, even if etcd said "created" in the same answer (it does when a
             * restarted etcd no longer knows our token): no stream was made, so the next
             * one starts with a new token (see 'renew') */
            w->created = false;
            const cJSON *reason = jget(res, "cancel_reason");
            snprintf(w->why, sizeof(w->why), "watch canceled: %s",
                     cJSON_IsString(reason) ? reason->valuestring : "no reason");
            goto out;
        }
        struct etcd_event ev = {.type = ETCD_EVENT_RESYNC, .revision = hrev,
                                .compact_revision = crev};
        int64_t from = worker_stopping(&w->worker) ? 0 : w->cb(&ev, w->ud);
        w->next_rev = from > 0 ? from : crev;
        w->restart = true;
        goto out;
    }
    const cJSON *events = jget(res, "events");
    if (cJSON_GetArraySize(events) > 0) {
        int64_t last = 0;
        if (!watch_events(events, hrev, watch_deliver, w, &last)) {
            snprintf(w->why, sizeof(w->why), "undecodable event");
            goto out;
        }
        if (last >= w->next_rev)
            w->next_rev = last + 1;
    } else if (!created && hrev >= w->next_rev) {
        /* A progress notification: etcd sends it only to watchers that are caught up. */
        w->next_rev = hrev + 1;
    }
    keep = true;
out:
    cJSON_Delete(j);
    return keep;
}

static size_t watch_write(char *d, size_t sz, size_t nm, void *u)
{
    etcd_watch *w = u;
    size_t n = sz * nm;
    if (worker_stopping(&w->worker))
        return 0;
    if (buf_add(&w->line, d, n) != EDDY_OK) {
        snprintf(w->why, sizeof(w->why), "watch line over %u bytes", ETCD_MAX_REPLY);
        return 0;
    }
    /* libcurl may split a line over writes or merge several lines into one. */
    char *nl;
    size_t used = 0;
    while ((nl = memchr(w->line.p + used, '\n', w->line.len - used)) != NULL) {
        bool keep = watch_line(w, w->line.p + used, (size_t)(nl - (w->line.p + used)));
        used = (size_t)(nl + 1 - w->line.p);
        if (!keep) {
            buf_reset(&w->line);
            return 0; /* abort the transfer */
        }
    }
    buf_consume(&w->line, used);
    return n;
}

/* Dead-peer detection for an idle stream: TCP keepalive probes after 5 s idle, every 2 s,
 * 3 misses; unacknowledged data gives up after 15 s. */
static int watch_sockopt(void *u, curl_socket_t fd, curlsocktype purpose)
{
    int on = 1, idle = 5, intvl = 2, cnt = 3;
    unsigned int user_timeout = 15000;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
    return CURL_SOCKOPT_OK;
}

static char *watch_body(etcd_watch *w)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *req = body ? cJSON_AddObjectToObject(body, "create_request") : NULL;
    bool ok = req && add_key_range(req, w->key, w->prefix) &&
              (w->next_rev <= 0 || add_i64(req, "start_revision", w->next_rev)) &&
              cJSON_AddTrueToObject(req, "prev_kv") &&
              cJSON_AddTrueToObject(req, "progress_notify");
    char *s = ok ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    return s;
}

/* Run one stream until it ends or stop is asked. */
static void watch_stream(etcd_watch *w, size_t idx)
{
    char url[512];
    char *body = watch_body(w);
    if (!body) {
        snprintf(w->why, sizeof(w->why), "out of memory");
        return;
    }
    snprintf(url, sizeof(url), "%s/v3/watch", w->c->eps[idx]);
    w->conn_rev = w->next_rev;
    w->restart = false;
    w->created = false;
    w->why[0] = '\0';
    buf_reset(&w->line);
    /* A stream that failed before etcd confirmed it may have sent a token etcd forgot
     * (restarted): renew it before the next one (single flight, see renew_token). */
    bool have = true;
    if (w->c->user)
        token_gen(w->c, &have);
    if (w->c->user && (w->renew || !have) &&
        renew_token(w->c, w->token_gen, w->c->timeout_ms) != EDDY_OK) {
        snprintf(w->why, sizeof(w->why), "%s", etcd_last_error(w->c));
        free(body);
        return;
    }
    bool own_headers = false;
    struct curl_slist *headers = request_headers(w->c, false, &own_headers, &w->token_gen);
    if (!headers) {
        snprintf(w->why, sizeof(w->why), "out of memory");
        free(body);
        return;
    }
    CURL *h = w->h;
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    apply_tls(w->c, h);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, w);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)w->c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_SOCKOPTFUNCTION, watch_sockopt);
    if (curl_multi_add_handle(w->multi, h) != CURLM_OK) {
        snprintf(w->why, sizeof(w->why), "curl_multi_add_handle failed");
        curl_slist_free_all(own_headers ? headers : NULL);
        free(body);
        return;
    }
    int running = 1;
    while (running && !worker_stopping(&w->worker)) {
        if (curl_multi_perform(w->multi, &running) != CURLM_OK)
            break;
        if (running)
            curl_multi_poll(w->multi, NULL, 0, 1000, NULL); /* woken by etcd_watch_stop */
    }
    int left;
    CURLMsg *m;
    while ((m = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (m->msg == CURLMSG_DONE && !w->why[0] && !w->restart)
            snprintf(w->why, sizeof(w->why), "stream ended: %s",
                     curl_easy_strerror(m->data.result));
    }
    curl_multi_remove_handle(w->multi, h);
    /* An error body may end without a newline. */
    if (!worker_stopping(&w->worker) && !w->restart && w->line.len > 0)
        watch_line(w, w->line.p, w->line.len);
    atomic_store(&w->connected, false);
    w->renew = !w->created && !worker_stopping(&w->worker);
    curl_slist_free_all(own_headers ? headers : NULL);
    free(body);
}

static void watch_main(struct worker *wk, void *arg)
{
    etcd_watch *w = arg;
    int64_t backoff = 50;
    while (!worker_stopping(&w->worker)) {
        size_t idx = atomic_load(&w->c->cur) % w->c->n_eps;
        watch_stream(w, idx);
        if (worker_stopping(&w->worker))
            break;
        if (w->restart) {
            backoff = 50;
            continue;
        }
        log_warn("msg=\"etcd watch reconnecting\" endpoint=%s key=\"%s\" next_revision=%lld "
                 "err=\"%s\"",
                 w->c->eps[idx], w->key, (long long)w->next_rev, w->why);
        rotate(w->c, idx);
        if (w->created) /* a stream that worked: the next failure is news, retry soon */
            backoff = 50;
        if (!worker_sleep(wk, backoff))
            break;
        backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
    }
}

etcd_watch *etcd_watch_start(etcd_client *c, const char *key, bool prefix,
                             int64_t start_revision, etcd_watch_fn *cb, void *ud)
{
    if (!c || !key || (!prefix && !*key) || !cb || start_revision < 0)
        return NULL;
    etcd_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->c = c;
    w->prefix = prefix;
    w->cb = cb;
    w->ud = ud;
    w->next_rev = start_revision;
    atomic_init(&w->connected, false);
    buf_init(&w->line, ETCD_MAX_REPLY);
    w->key = strdup(key);
    w->h = curl_easy_init();
    w->multi = curl_multi_init();
    if (!w->key || !w->h || !w->multi)
        goto fail;
    if (worker_start(&w->worker, "etcd-watch", watch_main, w) != EDDY_OK)
        goto fail;
    return w;
fail:
    curl_multi_cleanup(w->multi);
    curl_easy_cleanup(w->h);
    free(w->key);
    free(w);
    return NULL;
}

void etcd_watch_stop(etcd_watch *w)
{
    if (!w)
        return;
    worker_request_stop(&w->worker);
    curl_multi_wakeup(w->multi); /* out of curl_multi_poll */
    worker_stop(&w->worker);
    curl_multi_cleanup(w->multi);
    curl_easy_cleanup(w->h);
    buf_release(&w->line);
    free(w->key);
    free(w);
}

bool etcd_watch_connected(etcd_watch *w)
{
    return atomic_load(&w->connected);
}
