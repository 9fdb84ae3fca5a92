/* The gate of the public API: bearer tokens (or client-certificate identities) from the
 * token file, the role each method needs, per-tenant quotas, and the audit line and
 * metrics of every admin call (docs/security.md). Plugged into rpc_server as its gate, so
 * it runs once per call before any handler. */
#ifndef EDDY_AUTH_H
#define EDDY_AUTH_H

#include <grpc/grpc.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/metrics.h"
#include "common/rpc_server.h"

struct auth_opts {
    const char *token_file; /* required; read at auth_new, then re-read when it changes */
    int64_t poll_ms;        /* how often the file is checked (default 1000) */
    double events_per_s;    /* per-tenant default of Ingest's events per second; 0 =
                               unlimited; a grant's events_per_s overrides it */
    double calls_per_s;     /* per-tenant default of calls per second, every gated call */
    metrics *metrics;       /* borrowed, must outlive the auth; NULL = no metrics */
};

/* Thread-safe: the gate runs on every CQ thread at once. */
typedef struct auth auth;

/* Read the token file (a missing or bad file is an error, said in 'err'). Caller owns *out;
 * free with auth_free after the server that uses it. */
eddy_err auth_new(const struct auth_opts *o, auth **out, char *err, size_t errlen);

/* Accepts NULL. */
void auth_free(auth *a);

/* The roles (enum token_role bits, any one suffices) a method needs: 0 for methods that
 * need no token (grpc.health.v1, server reflection, which describes the API the repository
 * publishes anyway, and the internal eddy.state.v1 API, which answers only
 * cluster members' certificates); admin for every public method not listed as ingest or
 * read. */
unsigned auth_method_roles(const char *method);

/* The decision for a call of 'method' whose "authorization" metadata is 'authorization'
 * ('len' bytes, "Bearer <secret>"; NULL when the call has none: then the names of the
 * peer's verified certificate may map to a grant, if 'call' is not NULL), with 'events'
 * events (Ingest's batch size; 0 otherwise) at monotonic time 'now_ns'. What auth_gate
 * does, with the clock and the metadata taken out for tests. */
void auth_check(auth *a, const char *method, const char *authorization, size_t len,
                grpc_call *call, size_t events, int64_t now_ns, struct rpc_gate_verdict *v);

/* rpc_gate_fn and rpc_audit_fn; 'ud' is the auth. */
void auth_gate(void *ud, const struct rpc_gate_call *gc, struct rpc_gate_verdict *v);
void auth_audit(void *ud, const char *method, const char *who, const ProtobufCMessage *req,
                grpc_status_code code, int64_t duration_ns);

/* The request's identifying fields as "user_id=u1 partition=3" (top-level scalars that are
 * set; values cut to 64 bytes, quotes and control characters replaced by '?'). */
void auth_describe_request(const ProtobufCMessage *req, char *out, size_t outlen);

#endif
