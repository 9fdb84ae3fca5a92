/* The public API's gate: tokens, roles, quotas, audit (see auth.h).
 *
 * Quotas are kept per node: each process has its own buckets per tenant, like Kafka's
 * per-broker quotas, so a tenant's cluster-wide rate is at most the sum over the nodes it
 * calls. The buckets outlive reloads of the token file (keyed by tenant name), so rotating
 * a tenant's token does not refill its bucket. */
#include "common/auth.h"

#include <grpc/slice.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strmap.h"
#include "common/tls.h"
#include "common/token_bucket.h"
#include "common/tokens.h"
#include "eddy/v1/eddy.pb-c.h"

#define INGEST_METHOD "/eddy.v1.Eddy/Ingest"
#define GRPC_CODES 17

/* The admin methods with their own series in eddy_admin_calls_total; others share "other". */
static const char *const admin_methods[] = {"DeleteUser", "Reprocess", "Drain", "other"};
#define NADMIN (sizeof(admin_methods) / sizeof(admin_methods[0]))

enum fail_reason { FAIL_MISSING, FAIL_UNKNOWN, FAIL_DENIED, FAIL_QUOTA_CALLS, FAIL_QUOTA_EVENTS,
                   NFAIL };
static const char *const fail_names[NFAIL] = {"missing_token", "unknown_token",
                                              "permission_denied", "quota_calls",
                                              "quota_events"};

/* A tenant's buckets; guarded by auth.qmu. */
struct tenant_quota {
    struct token_bucket events, calls;
};

struct auth {
    token_file *tf;
    double events_per_s, calls_per_s;
    pthread_mutex_t qmu;    /* guards 'tenants' and every bucket in it; held for a lookup
                               and two bucket updates */
    struct strmap tenants;  /* tenant -> struct tenant_quota */
    metric_counter *failures[NFAIL];
    metric_counter *admin[NADMIN][GRPC_CODES];
};

static const struct { const char *path; unsigned roles; } method_roles[] = {
    {INGEST_METHOD, TOKEN_ROLE_INGEST},
    {"/eddy.v1.Eddy/Recommend", TOKEN_ROLE_READ},
    {"/eddy.v1.Eddy/GetUserProfile", TOKEN_ROLE_READ},
    {"/eddy.v1.Eddy/TopProducts", TOKEN_ROLE_READ},
    {"/eddy.v1.Eddy/EventCounts", TOKEN_ROLE_READ},
    {"/eddy.cluster.v1.Coordinator/ClusterStatus", TOKEN_ROLE_READ},
};

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

unsigned auth_method_roles(const char *method)
{
    if (has_prefix(method, "/grpc.health.v1.") || has_prefix(method, "/grpc.reflection.") ||
        has_prefix(method, "/eddy.state.v1."))
        return 0;
    for (size_t i = 0; i < sizeof(method_roles) / sizeof(method_roles[0]); i++)
        if (strcmp(method, method_roles[i].path) == 0)
            return method_roles[i].roles;
    return TOKEN_ROLE_ADMIN;
}

eddy_err auth_new(const struct auth_opts *o, auth **out, char *err, size_t errlen)
{
    *out = NULL;
    auth *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return EDDY_ERR_NOMEM;
    }
    eddy_err e = token_file_open(o->token_file, o->poll_ms, &a->tf, err, errlen);
    if (e != EDDY_OK) {
        free(a);
        return e;
    }
    a->events_per_s = o->events_per_s > 0 ? o->events_per_s : 0;
    a->calls_per_s = o->calls_per_s > 0 ? o->calls_per_s : 0;
    pthread_mutex_init(&a->qmu, NULL);
    strmap_init(&a->tenants, TOKENS_MAX);
    static const char *const reason_label[] = {"reason"};
    metric_family *ff = metrics_family(o->metrics, METRIC_COUNTER, "eddy_auth_failures_total",
                                       "Calls refused by the token check or a tenant quota, "
                                       "by reason.",
                                       reason_label, 1, NULL, 0);
    for (int i = 0; i < NFAIL; i++)
        a->failures[i] = metric_family_counter(ff, (const char *const[]){fail_names[i]});
    static const char *const admin_labels[] = {"method", "code"};
    metric_family *af = metrics_family(o->metrics, METRIC_COUNTER, "eddy_admin_calls_total",
                                       "Admin calls (DeleteUser, Reprocess, Drain, ...) by "
                                       "method and outcome; each also leaves an audit line.",
                                       admin_labels, 2, NULL, 0);
    for (size_t m = 0; m < NADMIN; m++)
        for (int c = 0; c < GRPC_CODES; c++)
            a->admin[m][c] = metric_family_counter(
                af, (const char *const[]){admin_methods[m],
                                          rpc_status_label((grpc_status_code)c)});
    log_info("msg=\"tokens on: public API calls need a token\" token_file=\"%s\" "
             "tenant_events_per_s=%g tenant_calls_per_s=%g", o->token_file, a->events_per_s,
             a->calls_per_s);
    *out = a;
    return EDDY_OK;
}

void auth_free(auth *a)
{
    if (!a)
        return;
    token_file_close(a->tf);
    strmap_release(&a->tenants, free);
    pthread_mutex_destroy(&a->qmu);
    free(a);
}

static void refuse(auth *a, struct rpc_gate_verdict *v, enum fail_reason r,
                   grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void refuse(auth *a, struct rpc_gate_verdict *v, enum fail_reason r,
                   grpc_status_code code, const char *fmt, ...)
{
    metric_counter_inc(a->failures[r]);
    v->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->msg, sizeof(v->msg), fmt, ap);
    va_end(ap);
}

static bool cert_match(void *ud, const char *name)
{
    void **args = ud;
    return token_file_find_cert(args[0], name, args[1]);
}

/* Take one call (and 'events' events) from the tenant's buckets; false with the verdict
 * set when over quota. */
static bool quota_take(auth *a, const struct token_grant *g, size_t events, int64_t now_ns,
                       struct rpc_gate_verdict *v)
{
    double calls_rate = g->calls_per_s >= 0 ? g->calls_per_s : a->calls_per_s;
    double events_rate = g->events_per_s >= 0 ? g->events_per_s : a->events_per_s;
    if (calls_rate <= 0 && (events_rate <= 0 || events == 0))
        return true;
    int64_t retry_ms = 0;
    bool ok = true;
    enum fail_reason why = FAIL_QUOTA_CALLS;
    pthread_mutex_lock(&a->qmu);
    eddy_err e = EDDY_OK;
    bool added = false;
    void **slot = strmap_slot(&a->tenants, g->tenant, strlen(g->tenant), &added, &e);
    struct tenant_quota *q = slot ? *slot : NULL;
    if (slot && added && !(q = *slot = calloc(1, sizeof(*q))))
        strmap_del(&a->tenants, g->tenant, strlen(g->tenant));
    if (q) { /* without one (out of memory) the call goes through: a quota is no lock */
        ok = token_bucket_take(&q->calls, calls_rate, calls_rate, 1, now_ns, &retry_ms);
        if (ok && events > 0) {
            why = FAIL_QUOTA_EVENTS;
            ok = token_bucket_take(&q->events, events_rate, events_rate, (double)events,
                                   now_ns, &retry_ms);
        }
    }
    pthread_mutex_unlock(&a->qmu);
    if (ok)
        return true;
    metric_counter_inc(a->failures[why]);
    v->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    v->retry_after_ms = retry_ms;
    snprintf(v->msg, sizeof(v->msg),
             "tenant %s is over its quota of %g %s per second on this node; retry after "
             "%" PRId64 " ms",
             g->tenant, why == FAIL_QUOTA_EVENTS ? events_rate : calls_rate,
             why == FAIL_QUOTA_EVENTS ? "events" : "calls", retry_ms);
    return false;
}

void auth_check(auth *a, const char *method, const char *authorization, size_t len,
                grpc_call *call, size_t events, int64_t now_ns, struct rpc_gate_verdict *v)
{
    unsigned need = auth_method_roles(method);
    v->code = GRPC_STATUS_OK;
    if (need == 0)
        return;
    v->audit = (need & TOKEN_ROLE_ADMIN) != 0;
    snprintf(v->who, sizeof(v->who), "anonymous");
    struct token_grant g;
    bool found;
    if (authorization) {
        if (len <= 7 || strncasecmp(authorization, "Bearer ", 7) != 0) {
            refuse(a, v, FAIL_UNKNOWN, GRPC_STATUS_UNAUTHENTICATED,
                   "the authorization metadata must be 'Bearer <token>'");
            return;
        }
        found = len - 7 <= TOKEN_SECRET_MAX &&
                token_file_find_secret(a->tf, authorization + 7, len - 7, &g);
        if (!found) {
            refuse(a, v, FAIL_UNKNOWN, GRPC_STATUS_UNAUTHENTICATED,
                   "unknown token (not in the token file: revoked, or mistyped)");
            return;
        }
    } else {
        void *args[2] = {a->tf, &g};
        found = call && tls_call_peer_match(call, cert_match, args);
        if (!found) {
            refuse(a, v, FAIL_MISSING, GRPC_STATUS_UNAUTHENTICATED,
                   "%s needs a token: metadata 'authorization: Bearer <token>'", method);
            return;
        }
    }
    snprintf(v->who, sizeof(v->who), "%s/%s", g.tenant, g.who);
    if (!(g.roles & need)) {
        refuse(a, v, FAIL_DENIED, GRPC_STATUS_PERMISSION_DENIED, "%s needs the role %s",
               method, need & TOKEN_ROLE_INGEST ? "ingest"
                       : need & TOKEN_ROLE_READ ? "read" : "admin");
        return;
    }
    quota_take(a, &g, events, now_ns, v);
}

void auth_gate(void *ud, const struct rpc_gate_call *gc, struct rpc_gate_verdict *v)
{
    auth *a = ud;
    const char *authorization = NULL;
    size_t len = 0;
    for (size_t i = 0; i < gc->md->count; i++) {
        const grpc_metadata *m = &gc->md->metadata[i];
        if (grpc_slice_str_cmp(m->key, "authorization") == 0) {
            authorization = (const char *)GRPC_SLICE_START_PTR(m->value);
            len = GRPC_SLICE_LENGTH(m->value);
            break;
        }
    }
    size_t events = 0;
    if (strcmp(gc->method, INGEST_METHOD) == 0 && gc->req)
        events = ((const Eddy__V1__IngestRequest *)gc->req)->n_events;
    auth_check(a, gc->method, authorization, len, gc->call, events, clock_mono_ns(), v);
}

/* Append 'v' to out[*used..] with quotes, backslashes and control bytes as '?'. */
static void put_value(char *out, size_t outlen, size_t *used, const char *v, size_t n)
{
    for (size_t i = 0; i < n && i < 64 && *used + 1 < outlen; i++) {
        unsigned char c = (unsigned char)v[i];
        out[(*used)++] = c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
    }
    out[*used] = '\0';
}

void auth_describe_request(const ProtobufCMessage *req, char *out, size_t outlen)
{
    size_t used = 0;
    out[0] = '\0';
    if (!req || outlen == 0)
        return;
    const ProtobufCMessageDescriptor *d = req->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *p = (const char *)req + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED)
            continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)((const char *)req + f->quantifier_offset) != f->id)
            continue;
        char num[32] = "";
        const char *sv = NULL;
        switch (f->type) {
        case PROTOBUF_C_TYPE_STRING:
            sv = *(char *const *)p;
            if (!sv || !*sv)
                continue;
            break;
        case PROTOBUF_C_TYPE_BOOL:
            if (!*(const protobuf_c_boolean *)p)
                continue;
            snprintf(num, sizeof(num), "true");
            break;
        case PROTOBUF_C_TYPE_UINT32:
            if (!*(const uint32_t *)p && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
                continue;
            snprintf(num, sizeof(num), "%" PRIu32, *(const uint32_t *)p);
            break;
        case PROTOBUF_C_TYPE_UINT64:
            if (!*(const uint64_t *)p && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
                continue;
            snprintf(num, sizeof(num), "%" PRIu64, *(const uint64_t *)p);
            break;
        default:
            continue;
        }
        if (used + 1 >= outlen)
            break;
        int w = snprintf(out + used, outlen - used, "%s%s=", used ? " " : "", f->name);
        if (w < 0 || (size_t)w >= outlen - used)
            break;
        used += (size_t)w;
        put_value(out, outlen, &used, sv ? sv : num, strlen(sv ? sv : num));
    }
}

void auth_audit(void *ud, const char *method, const char *who, const ProtobufCMessage *req,
                grpc_status_code code, int64_t duration_ns)
{
    auth *a = ud;
    const char *slash = strrchr(method, '/');
    const char *name = slash ? slash + 1 : method;
    size_t m = 0;
    while (m < NADMIN - 1 && strcmp(admin_methods[m], name) != 0)
        m++;
    if ((int)code >= 0 && (int)code < GRPC_CODES)
        metric_counter_inc(a->admin[m][code]);
    char target[512];
    auth_describe_request(req, target, sizeof(target));
    log_audit("msg=\"admin call\" who=\"%s\" method=%s target=\"%s\" code=%s duration_ms=%.3f", who,
             method, target, rpc_status_label(code), (double)duration_ns / 1e6);
}
