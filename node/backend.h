/* The state backend: what the public API (node/ingest/) needs of the state, behind one
 * interface. Its implementation is the router (node/cluster/router.c): the partition
 * owners over the internal State API, in a cluster and on a --dev node alike (a static
 * map that gives every partition to the node itself, called in-process).
 *
 * The ingest service validates a request, calls one operation and answers with what the
 * operation's callback reports; it never sees an engine, a store or a partition map.
 *
 * Contract of every operation (libuv's): 'done' runs exactly once, either before the call
 * returns (the router answers synchronously, on the calling handler thread) or later on
 * another thread. The request is borrowed until 'done' runs; what 'done' receives is
 * borrowed for the duration of the callback only. */
#ifndef EDDY_BACKEND_H
#define EDDY_BACKEND_H

#include <grpc/status.h>
#include <stddef.h>
#include <stdint.h>

#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/state.pb-c.h"

/* The outcome of an operation: a gRPC status and, unless OK, a message for the client. */
struct backend_status {
    grpc_status_code code;
    char message[512];
};

/* What an Ingest did with the valid events of a batch. */
struct backend_counts {
    uint32_t accepted, duplicates, late;
};

/* Ingest: counts are meaningful when st->code is OK. */
typedef void backend_ingest_done_fn(void *ud, const struct backend_status *st,
                                    const struct backend_counts *counts);
/* Reads and per-user requests: 'resp' is the answer when st->code is OK (else NULL). */
typedef void backend_reply_fn(void *ud, const struct backend_status *st,
                              const ProtobufCMessage *resp);

struct backend_ops {
    /* 'n' validated events that arrived at 'arrival_ns' (CLOCK_MONOTONIC), answered once
     * durable. RESOURCE_EXHAUSTED means backpressure: the client retries with backoff. */
    void (*ingest)(void *impl, Eddy__V1__Event *const *events, size_t n, int64_t arrival_ns,
                   backend_ingest_done_fn *done, void *ud);
    /* A request about one user (its oneof set: recommend, profile, counts or
     * delete_user), answered with the matching Eddy__State__V1__UserResponse. */
    void (*user)(void *impl, const char *user_id, Eddy__State__V1__UserRequest *req,
                 backend_reply_fn *done, void *ud);
    /* Global queries over every partition: Eddy__V1__TopProductsResponse and
     * Eddy__V1__EventCountsResponse. */
    void (*top)(void *impl, const Eddy__V1__TopProductsRequest *req, backend_reply_fn *done,
                void *ud);
    void (*counts)(void *impl, const Eddy__V1__EventCountsRequest *req,
                   backend_reply_fn *done, void *ud);
};

struct backend {
    const struct backend_ops *ops;
    void *impl; /* borrowed; outlives every call */
};

/* Fill 'st' with 'code' and a printf-style message. */
void backend_status_set(struct backend_status *st, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
