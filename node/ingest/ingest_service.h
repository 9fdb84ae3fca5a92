/* The public eddy.v1.Eddy service of a node: decodes and validates requests on the RPC
 * handler threads and hands them to the state backend (node/backend.h): this process's
 * engine in --dev, the partition owners in a cluster. It knows nothing of either. */
#ifndef EDDY_INGEST_SERVICE_H
#define EDDY_INGEST_SERVICE_H

#include "common/rpc_server.h"
#include "node/backend.h"
#include "node/ingest/validate.h"

/* The read methods timed by eddy_serving_seconds{method}. */
enum ingest_read { INGEST_RECOMMEND, INGEST_PROFILE, INGEST_TOP, INGEST_COUNTS, INGEST_READS };

/* Their gRPC method names, the values of the 'method' label. */
extern const char *const ingest_read_names[INGEST_READS];

/* What the handlers count (each may be NULL; borrowed, must outlive the service). */
struct ingest_metrics {
    metric_counter *rejected[VALIDATE_FIELD_COUNT + 1]; /* by validate_field_index; the
                                                           last one: any other field */
    metric_counter *backpressure;    /* Ingest refused: RESOURCE_EXHAUSTED from the backend */
    metric_counter *batches;         /* Ingest calls whose valid events were acknowledged */
    metric_counter *recommendations; /* Recommend calls answered OK */
    metric_histogram *serving[INGEST_READS]; /* call arrival to answer, any status */
};

struct ingest_service {
    struct backend state;    /* where requests go (its implementation is borrowed) */
    struct limits lim;
    int64_t max_batch;       /* events per Ingest request */
    struct ingest_metrics m; /* all NULL: no metrics */
    /* Whether a per-user read (Recommend, GetUserProfile) would be answered at once, with
     * no RPC and no wait (--dev: the engine has applied all it acknowledged); such a
     * call then runs on the RPC server's CQ thread (rpc_server_set_inline), saving two
     * thread hand-offs. Must not block; called on a CQ thread with 'reads_now_ud'. NULL:
     * reads always go to the handler threads (a cluster, whose reads are RPCs). */
    bool (*reads_now)(void *ud);
    void *reads_now_ud;

    /* set by ingest_service_register */
    struct ingest_read_route {
        struct ingest_service *svc;
        enum ingest_read read;
        rpc_handler_fn *fn;
    } routes[INGEST_READS];
};

/* Whether the handlers refuse 'msg' (any of the six requests, as decoded) before it
 * reaches the backend: an Ingest batch over max_batch, a missing user_id, a time range
 * that ends before it starts. The reason, sent as INVALID_ARGUMENT, goes to 'why'. An
 * Ingest's invalid events are not refusals: validate_event rejects each alone. Pure. */
bool ingest_request_refused(const struct ingest_service *svc, const ProtobufCMessage *msg,
                            char *why, size_t whylen);

/* Register the six methods of eddy.v1.Eddy on 's'. 'svc' must outlive the server. */
eddy_err ingest_service_register(struct ingest_service *svc, rpc_server *s);

#endif
