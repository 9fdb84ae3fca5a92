/* A gRPC server on the core C API: registered unary, server-streaming and bidirectional
 * streaming methods, one
 * completion queue per I/O thread, a generic handler answering UNIMPLEMENTED, per-call
 * deadlines, bounded handler queues (one per lane), an optional gate that may refuse a
 * call before it is queued (and audit it), configurable message sizes, SO_REUSEPORT off.
 *
 * Threads: CQ threads only do I/O and protobuf decoding. Handlers run on handler threads,
 * so a handler may block briefly (LevelDB reads); long or synced work (LevelDB sync writes)
 * should be handed to the application's own threads, which then answer with rpc_reply*()
 * from there. The one exception is a unary method made inline (rpc_server_set_inline):
 * the calls its inline function approves run on the CQ thread that accepted them, which
 * saves the hand-off to a handler thread and back.
 *
 * Lanes: every method belongs to a lane (0 .. RPC_MAX_LANES-1). Each lane has its own
 * bounded queue and its own handler threads, and a call only waits in its own lane's
 * queue. A handler that makes a blocking RPC to a handler of this server or of another
 * one must only call methods of a higher lane than its own: then the inner call never
 * waits behind the outer calls blocking on it, and nesting cannot deadlock (Eddy: public
 * API = 0, internal calls that make further calls = 1, internal leaf calls = 2).
 *
 * Call contract: for every call a handler receives it must eventually call exactly one of
 * rpc_reply() / rpc_reply_error() (unary) or rpc_stream_finish() (streaming), from any
 * thread, exactly once. After that call the rpc_call is gone. A bidirectional stream's
 * handler runs once per request of the call; the contract holds from its first run. */
#ifndef EDDY_RPC_SERVER_H
#define EDDY_RPC_SERVER_H

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/rpc_client.h"
#include "common/metrics.h"
#include "common/tls.h"

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;

/* A unary or streaming handler. 'req' is the decoded request, owned by the call and valid
 * until the reply (do not free it). Runs on a handler thread (or on the CQ thread, for the
 * calls of an inline method, see rpc_server_set_inline). For a bidirectional stream
 * (rpc_server_add_bidi) it runs once per request, in order and never twice at once for
 * one call; 'req' is valid until it returns, and NULL once the client has sent its last
 * request (half-close). */
typedef void rpc_handler_fn(void *ud, rpc_call *call, const ProtobufCMessage *req);

/* Called once on a handler thread when a streaming call's client cancels or disconnects,
 * or the server shuts down, before the stream was finished. The handler must still call
 * rpc_stream_finish() (which is then a no-op on the wire). It never runs concurrently with
 * the handler of the same call (if the call ends while the handler runs, it is called on
 * that thread right after the handler returns), and not at all once the stream was
 * finished. */
typedef void rpc_cancel_fn(void *ud, rpc_call *call);

#define RPC_MAX_LANES 4

/* What the gate sees of a call (all borrowed for the duration of the gate call). */
struct rpc_gate_call {
    const char *method;             /* "/eddy.v1.Eddy/Ingest" */
    const grpc_metadata_array *md;  /* the client's initial metadata */
    grpc_call *call;                /* for its auth context (tls_call_peer_identity) */
    const ProtobufCMessage *req;    /* the decoded request; NULL for a bidirectional stream,
                                       whose gate runs when the call arrives */
};

/* What the gate decides; zero-initialised by the server before the gate runs. */
struct rpc_gate_verdict {
    grpc_status_code code;   /* GRPC_STATUS_OK: the call goes on to its handler */
    char msg[256];           /* the status message when refused */
    int64_t retry_after_ms;  /* > 0 (when refused): sent as trailing metadata
                                "retry-after-ms" for the client to wait before retrying */
    bool audit;              /* call the audit function once the call's outcome is known */
    char who[336];           /* the caller as the audit line names it: tenant/grant */
};

/* Decides whether a call of a registered method may reach its handler: runs once per call,
 * on the CQ thread that accepted it, after the request decoded and before it is queued, so
 * a refused call never takes a place in a lane's queue. Must not block. */
typedef void rpc_gate_fn(void *ud, const struct rpc_gate_call *gc, struct rpc_gate_verdict *v);

/* Called once for a call the gate marked 'audit' (or refused with 'audit' set), when its
 * outcome is known: answered (the answer's code) or closed before an answer (CANCELLED or
 * DEADLINE_EXCEEDED). 'req' is the decoded request; all arguments borrowed for the call.
 * Runs on whichever thread answers or closes the call; must not block. */
typedef void rpc_audit_fn(void *ud, const char *method, const char *who,
                          const ProtobufCMessage *req, grpc_status_code code,
                          int64_t duration_ns);

struct rpc_server_opts {
    const char *listen;          /* "127.0.0.1:7070"; port 0 picks a free port */
    int cq_threads;              /* I/O threads, each with its own CQ (default 1) */
    int handler_threads;         /* lane 0's threads unless lane_threads[0] is set
                                    (default 2) */
    int lane_threads[RPC_MAX_LANES]; /* handler threads of each lane; 0 = handler_threads for
                                        lane 0, 2 for the others. A lane without methods
                                        starts no threads. */
    int max_queued_calls;        /* decoded calls waiting for a handler thread, per lane;
                                    past this a call is answered RESOURCE_EXHAUSTED "server
                                    busy: N calls queued" (default 1024) */
    int lane_max_queued[RPC_MAX_LANES]; /* per-lane override; 0 = max_queued_calls */
    int64_t max_recv_bytes;      /* largest request message (default 4 MiB); larger ones
                                    get RESOURCE_EXHAUSTED from gRPC */
    int64_t max_send_bytes;      /* largest response message (default 16 MiB) */
    int64_t max_connection_age_ms; /* 0 = unlimited; set it so load balancers spread clients */
    metrics *metrics;            /* where the grpc_server_* metrics go (go-grpc-prometheus
                                    names; borrowed: must outlive the server and every call
                                    it accepted); NULL = no metrics */
    metric_counter *busy_rejections; /* counted for each call refused RESOURCE_EXHAUSTED
                                        because its lane's queue is full (all lanes
                                        together); may be NULL */
    const struct tls_config *tls; /* NULL or without a certificate: plaintext. Borrowed until
                                     rpc_server_start returns (the files are re-read when
                                     they change, see tls.h) */
    const char *peer_only_prefix; /* with TLS: methods whose path starts with it ("/eddy.
                                     state.v1.State/") answer UNAUTHENTICATED unless the
                                     caller presented a certificate the CA verified; copied */
    const char *local_only_prefix; /* methods whose path starts with it are not served on the
                                      network (UNIMPLEMENTED there), only to this process
                                      through rpc_server_invoke_local; NULL: none; copied */
    rpc_gate_fn *gate;            /* NULL: every call goes through (no tokens) */
    rpc_audit_fn *audit;          /* may be NULL */
    void *gate_ud;                /* for both; borrowed: must outlive the server and every
                                     call it accepted */
};

/* Create a server (not yet listening). Returns NULL on allocation failure. Caller owns the
 * result; free with rpc_server_free. Calls grpc_init() itself. */
rpc_server *rpc_server_new(const struct rpc_server_opts *opts);

/* Register method 'path' ("/eddy.v1.Eddy/Ingest") whose request type is 'req_desc', on
 * lane 0. A request that does not decode is answered INVALID_ARGUMENT before any handler
 * runs. Only before rpc_server_start. */
eddy_err rpc_server_add_unary(rpc_server *s, const char *path,
                              const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn *fn,
                              void *ud);

/* rpc_server_add_unary on lane 'lane' (see "Lanes" above); EDDY_ERR_INVALID if 'lane' is
 * not in 0 .. RPC_MAX_LANES-1. */
eddy_err rpc_server_add_unary_lane(rpc_server *s, const char *path,
                                   const ProtobufCMessageDescriptor *req_desc,
                                   rpc_handler_fn *fn, void *ud, int lane);

/* Whether the handler of a method can answer 'req' (decoded, borrowed) at once without
 * waiting: no RPC to another process, no condition variable, no lock held for long, no
 * synced write (a LevelDB read of a cold entry is the most it may do). Asked on the CQ
 * thread for each call, after the gate, with the method's 'ud'; must not block. */
typedef bool rpc_inline_fn(void *ud, const ProtobufCMessage *req);

/* Make the registered unary method 'path' inline: a call 'fn' approves runs its handler on
 * the CQ thread that accepted it, right after the gate, instead of waiting in its lane's
 * queue for a handler thread (other calls go there as before). Such a call is never
 * refused "server busy" (it takes no place in the queue: the CQ thread reading no further
 * while it runs is its backpressure), and every call on that CQ waits while it runs, which
 * is why 'fn' must refuse whatever could wait. Deadlines, cancellation and shutdown work
 * as for any call. Only before rpc_server_start; EDDY_ERR_INVALID for an unknown or
 * streaming method. 'fn' NULL: the method is not inline. */
eddy_err rpc_server_set_inline(rpc_server *s, const char *path, rpc_inline_fn *fn);

/* Register a server-streaming method, on lane 0 (its handler and its on_cancel run on lane
 * 0's threads); 'on_cancel' may be NULL. */
eddy_err rpc_server_add_stream(rpc_server *s, const char *path,
                               const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn *fn,
                               rpc_cancel_fn *on_cancel, void *ud);

/* Register a bidirectional streaming method on lane 0: the handler runs for each request
 * the client sends ('req_desc'), then once with NULL when the client half-closes; it
 * answers with rpc_stream_send() and ends the call with rpc_stream_finish() whenever it
 * chooses (after which it is called no more). The next request is read only after the
 * handler returned, so a client that sends faster than the handler answers waits (HTTP/2
 * flow control). A malformed request, or one its lane has no room for, ends the stream
 * INVALID_ARGUMENT or RESOURCE_EXHAUSTED; if the handler already ran for this call it is
 * told through 'on_cancel' (may be NULL) and must still call rpc_stream_finish(). */
eddy_err rpc_server_add_bidi(rpc_server *s, const char *path,
                             const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn *fn,
                             rpc_cancel_fn *on_cancel, void *ud);

/* Bind and start serving. Returns EDDY_ERR_NET if the address cannot be bound (including
 * "already in use": SO_REUSEPORT is off), EDDY_ERR_INVALID or EDDY_ERR_IO if the TLS files
 * are unusable (logged). On success *port is the bound port. */
eddy_err rpc_server_start(rpc_server *s, int *port);

/* Stop accepting calls; wait up to 'grace_ms' for in-flight calls to be answered, then
 * cancel the rest. The handler threads of every lane are joined (calls still queued for
 * them are dropped, pending on_cancel callbacks run first). Calls the application still holds may be
 * answered afterwards: that only frees them. Safe to call more than once; rpc_server_free
 * calls it if needed. */
void rpc_server_shutdown(rpc_server *s, int64_t grace_ms);

/* Shut down if still running and free everything. Accepts NULL. */
void rpc_server_free(rpc_server *s);

/* In-process calls (an rpc_local_fn with the server as 'ud', for rpc_channel_open_local):
 * the unary handler of 'method' runs on the calling thread with a copy of 'req', as it
 * would for a call from the network, and its answer (from any thread) goes to 'done'
 * decoded by 'resp_desc'. 'lent': the handler reads 'req' itself, not a copy, and 'done'
 * runs once the handler has returned as well as answered (the caller may free 'req' in
 * 'done' while the handler, having answered, is still on its way out). No gate, no lane
 * queue and no grpc_server_* metrics: the caller is this process (a handler calling a
 * method of a higher lane, see "Lanes", never waits in a queue either). Unknown methods
 * and streams answer UNIMPLEMENTED, a server shutting down or stopped (not yet freed)
 * UNAVAILABLE. Returns an error only if 'done' will not run. */
eddy_err rpc_server_invoke_local(void *server, const char *method, const ProtobufCMessage *req,
                                 bool lent, const ProtobufCMessageDescriptor *resp_desc,
                                 int64_t timeout_ms, rpc_done_fn *done, void *done_ud);

/* Answer a unary call with 'resp' (borrowed: packed before return) and status OK. If the
 * client is gone (cancel, deadline, shutdown) nothing is sent and the call is just freed;
 * the same holds for rpc_reply_error and rpc_stream_finish. */
void rpc_reply(rpc_call *c, const ProtobufCMessage *resp);

/* Answer a unary call with a non-OK status and a printf-style message. */
void rpc_reply_error(rpc_call *c, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Streaming: queue one message (borrowed: packed before return). Messages are sent in
 * order, one at a time. Returns EDDY_ERR_UNAVAILABLE once the client is gone, or
 * EDDY_ERR_FULL if more than 64 messages are waiting to be sent. */
eddy_err rpc_stream_send(rpc_call *c, const ProtobufCMessage *msg);

/* Streaming: how many of the messages rpc_stream_send queued gRPC has not sent yet (the
 * one in flight included); 0 once the client is gone. A sender that waits for 0 before it
 * finishes knows the client has taken all but its flow-control window. */
int rpc_stream_unsent(rpc_call *c);

/* Streaming: end the stream with 'code' and message (NULL for none) after the queued
 * messages. The call is freed once gRPC is done with it. */
void rpc_stream_finish(rpc_call *c, grpc_status_code code, const char *msg);

/* Milliseconds left before the call's deadline (INT64_MAX when it has none). */
int64_t rpc_call_remaining_ms(const rpc_call *c);

/* The method path of the call, e.g. "/eddy.v1.Eddy/Ingest"; valid until the server is
 * freed. */
const char *rpc_call_method(const rpc_call *c);

/* When the server accepted the call: CLOCK_MONOTONIC in nanoseconds (before decoding and
 * before any wait for a handler thread). */
int64_t rpc_call_arrival_ns(const rpc_call *c);

/* The go-grpc-prometheus name of a status code ("OK", "PermissionDenied", ...), as the
 * grpc_code label of the server's metrics has it; "Unknown" if out of range. */
const char *rpc_status_label(grpc_status_code code);

/* Number of calls accepted but not yet answered (for metrics and draining). */
int64_t rpc_server_inflight(const rpc_server *s);

/* The registered methods, in registration order: their number, and the path of the i-th
 * ("/eddy.v1.Eddy/Ingest"; "" for a method not served on the network (local_only_prefix),
 * NULL past the end). The list is fixed once the server started (read it from any thread
 * then); the strings live as long as the server. */
size_t rpc_server_method_count(const rpc_server *s);
const char *rpc_server_method_path(const rpc_server *s, size_t i);

#endif
