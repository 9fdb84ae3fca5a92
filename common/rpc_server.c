/* The gRPC server: accepts calls on completion-queue threads, decodes them, and hands them
 * to the handler threads of the method's lane; answers come back from any thread (see
 * rpc_server.h).
 *
 * DESIGN
 * Why handler threads: a CQ thread also polls the sockets of its calls, so any blocking in
 * a handler (a LevelDB read, a lock) would stall every call on that CQ. CQ threads only
 * accept, decode, start batches and free finished calls; handlers run on their own pool
 * behind a bounded queue, so overload becomes RESOURCE_EXHAUSTED instead of latency.
 *
 * Why lanes: handlers may make blocking RPCs to handlers of this or another server (public
 * Recommend -> State/User on the owner -> State/CategoryTop on every node). With one FIFO
 * pool, every handler thread can sit in an outer call while the inner calls it waits for
 * are queued behind it: a deadlock. So each method belongs to a lane, and each lane has
 * its own queue, limit and threads; a job only ever waits in its own lane's queue. As long
 * as a lane's handlers only call methods of higher lanes, the innermost lane always makes
 * progress, and by induction so does every lane. All lanes share the one server mutex
 * (held only to link or unlink a job), each with its own condition variable.
 *
 * Who touches a call: an rpc_call has two owners, the gRPC side (its outstanding batches,
 * completed on the one CQ thread of the CQ that accepted it) and the application (from
 * the handler until rpc_reply/rpc_stream_finish, on any thread). gRPC requires that
 * batches on one call are not started concurrently, so every access to an rpc_call,
 * including each grpc_call_start_batch, happens under the call's own mutex 'mu'. The
 * lock is per call and held only for a few non-blocking gRPC calls, so it never
 * contends between calls.
 *
 * Batches of a call: RECV_CLOSE_ON_SERVER is started as soon as the call is accepted, so
 * that a client cancel, a deadline or server shutdown is noticed even while a handler (or
 * an application thread) still holds the call. The answer is a second batch: SEND_*
 * metadata + message + status for unary calls; for streams one SEND_MESSAGE batch at a
 * time (later ones wait in a per-call queue, at most STREAM_MAX_QUEUED), then the status.
 * Once RECV_CLOSE_ON_SERVER has completed the call is 'closed': nothing more is sent and
 * answering only frees memory.
 *
 * Bidirectional streams (server reflection) add a third kind of batch: RECV_MESSAGE, one
 * at a time. The first starts when the call is accepted; each request read is queued in
 * the lane like a new call (reusing the call's one run_job), and the next read starts only
 * when its handler returned. So there is never more than one job of a call in a queue,
 * the handler of a call never runs concurrently with itself or with on_cancel, and
 * HTTP/2 flow control, not memory, holds back a client that sends faster than we answer.
 *
 * Lifetime: 'batches' counts outstanding batches, 'refs' counts the application (until
 * it answers), a queued or running handler job, and a queued on_cancel job. When the call
 * is closed and has no batch left, the grpc_call is unreferenced and the call detaches from
 * the server ('s' = NULL; the server may be freed from then on). When, in addition, refs is
 * zero the rpc_call is freed. So an application may answer a call after the client went
 * away, or even after rpc_server_shutdown returned: it only frees the call.
 *
 * Shutdown: stop accepting; wait up to the grace period for 'inflight' (accepted, and the
 * status not yet delivered) to reach zero; cancel all calls; wait for 'live' (posted accept
 * slots plus calls still holding a grpc_call) to reach zero while the CQ threads keep
  * completing; then destroy the server, drain and join the CQ threads, and finally let the
 * handler threads of every lane drain their lane's queue (dropping closed calls, running
 * on_cancel) and exit. A lane's queue only receives jobs from CQ threads (new calls, and
 * on_cancel jobs queued when a call closes), which are all gone by then, so it only shrinks.
 *
 * Inline methods: for a short read the hand-off is most of the cost (measured on
 * Recommend in --dev, docs/BENCHMARKS.md): a futex wake of a handler thread, its context
 * switch, and a reply started off the CQ thread, whose write and completion then need the
 * CQ thread woken again. A unary method may be made inline with a per-call predicate: an
 * approved call runs run_call() on the CQ thread itself, right where it would have been
 * queued, holding the same job reference a queued call holds, so every later step
 * (answer, close, free) is the same as for a call run by a handler thread. The predicate
 * is the application's promise that the handler will not wait; a refused call takes the
 * ordinary way, so a read that would wait (a barrier behind, an RPC) still never stalls
 * the CQ, and long handlers (Ingest) never share it.
 *
 * The gate (tokens, roles, quotas: common/auth.c) runs on the CQ thread right after the
 * request decoded, once per call, with the initial metadata moved out of the accept slot
 * for it: a refused call is answered there and never takes a place in a lane's queue, so
 * a flooding client cannot crowd the others out of the handler threads. A call the gate
 * marked for audit keeps the caller's name and is reported once, where its outcome is
 * recorded (below).
 *
 * Metrics (go-grpc-prometheus names): each method resolves its series when the server
 * starts (unknown methods share one set labelled "unknown"), so a call only does relaxed
 * atomic adds. A call's outcome is recorded exactly once ('recorded'), at the first of: its
 * answer (the answer's code) or its close before an answer (DeadlineExceeded if the
 * deadline had passed, else Canceled). A call that detached from the server is always
 * recorded already, so nothing touches the method's metrics after the server is freed. */
#include "common/rpc_server.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <assert.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/pbgrpc.h"
#include "common/pbutil.h"
#include "common/thread.h"

#define ACCEPT_SLOTS 32       /* accept slots per method per CQ */
#define STREAM_MAX_QUEUED 64  /* stream messages waiting behind the one being sent */
#define DETAILS_MAX 1024      /* longest status message */
#define PATH_MAX_LEN 256      /* longest method path quoted in UNIMPLEMENTED */

#define DEFAULT_CQ_THREADS 1
#define DEFAULT_HANDLER_THREADS 2
#define DEFAULT_MAX_QUEUED 1024
#define DEFAULT_MAX_RECV (4 * 1024 * 1024)
#define DEFAULT_MAX_SEND (16 * 1024 * 1024)
#define GRPC_CODES 17 /* OK .. UNAUTHENTICATED */

/* Every tag given to gRPC starts with its kind. */
enum tag_kind { TAG_SLOT, TAG_CLOSE, TAG_SEND, TAG_RECV };
struct tag {
    enum tag_kind kind;
};

/* The series of one method (all NULL without a registry). */
struct method_metrics {
    metric_counter *started, *received, *sent;
    metric_counter *handled[GRPC_CODES];
    metric_histogram *seconds;
};

struct method {
    char *path;
    const ProtobufCMessageDescriptor *req_desc;
    rpc_handler_fn *fn;
    rpc_cancel_fn *on_cancel; /* streams only; may be NULL */
    void *ud;
    bool stream;
    bool bidi;    /* requests are read one at a time (stream is set too) */
    int lane;     /* 0 .. RPC_MAX_LANES-1: whose queue and threads run it */
    bool peer_only; /* TLS on and the path under peer_only_prefix: verified peers only */
    bool local_only; /* under local_only_prefix: not served on the network */
    void *handle; /* from grpc_server_register_method */
    rpc_inline_fn *inline_fn; /* unary: may its handler run on the CQ thread? NULL: never */
    struct method_metrics mm;
};

/* One CQ and the thread that drives it. */
struct worker {
    rpc_server *s;
    grpc_completion_queue *cq;
    pthread_t thread;
    bool started;
};

/* A posted grpc_server_request_*call. Owned by its worker's CQ thread. */
struct slot {
    struct tag tag; /* first: the tag pointer is the slot pointer */
    struct worker *w;
    const struct method *m; /* NULL: the generic slot for unknown methods */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details; /* generic slot only */
};

enum job_kind { JOB_RUN, JOB_CANCEL };
struct job {
    struct job *next;
    enum job_kind kind;
    rpc_call *c;
};

/* A message waiting for the stream's previous SEND_MESSAGE to complete. */
struct out_msg {
    struct out_msg *next;
    grpc_byte_buffer *bb;
};

/* An accepted call. All fields below 'mu' are guarded by it; the ones above are set at
 * accept time and read-only afterwards (see the DESIGN note for lifetime). */
struct rpc_call {
    const struct method *m; /* NULL for an unknown method */
    const struct method_metrics *mm; /* only used until 'recorded' (see DESIGN) */
    int64_t arrival_ns;     /* CLOCK_MONOTONIC */
    gpr_timespec deadline;
    struct tag close_tag, send_tag, recv_tag;
    struct job run_job, cancel_job;

    pthread_mutex_t mu;
    rpc_server *s;       /* NULL once detached */
    grpc_call *call;     /* NULL once released */
    ProtobufCMessage *req; /* bidi: the message being handled (NULL: input ended) */
    grpc_byte_buffer *recv_bb; /* bidi: written by gRPC for RECV_MESSAGE */
    int close_cancelled; /* written by gRPC for RECV_CLOSE_ON_SERVER */
    int batches;         /* outstanding batches */
    int refs;            /* app + handler job + cancel job */
    bool closed;         /* RECV_CLOSE_ON_SERVER completed: nothing more goes out */
    bool answered;       /* the app (or the server for it) answered: no more app ref */
    bool counted_done;   /* already subtracted from s->inflight */
    bool delivered;      /* the handler was called */
    bool in_handler;     /* the handler is running */
    bool cancel_due;     /* closed while in the handler: run on_cancel after it */
    bool sent_md;        /* initial metadata is out (or in flight) */
    bool status_sent;    /* the status batch was started */
    bool broken;         /* a send failed: the stream is dead */
    bool recorded;       /* the outcome is counted in grpc_server_handled_total */
    grpc_byte_buffer *send_bb; /* the message in flight, freed on its completion */
    struct out_msg *q_head, *q_tail;
    int q_len;
    bool finish_pending; /* rpc_stream_finish waits for queued messages */
    grpc_status_code fin_code;
    char *fin_msg;
    char *who;              /* the gate asked for an audit line: the caller (owned) */
    grpc_metadata trailer;  /* retry-after-ms, when 'has_trailer' (slices owned) */
    bool has_trailer;
    struct local_answer *local; /* an in-process call (rpc_server_invoke_local): where the
                                   answer goes; NULL for calls from the network */
};

/* Where the answer of an in-process call goes (owned by the call). A lent request's
 * answer waits here until the call is freed: the handler has returned by then. */
struct local_answer {
    rpc_done_fn *done;
    void *ud;
    const ProtobufCMessageDescriptor *resp_desc;
    bool lent;                 /* c->req is the caller's: not freed, answered at the end */
    bool answered;             /* lent: 'res' and 'resp' wait for call_free */
    struct rpc_result res;
    ProtobufCMessage *resp;
};

/* One lane: a bounded job queue and the handler threads serving only it. The queue fields
 * are guarded by the server's 'mu'; 'threads' and 'started' are touched only by the owner
 * thread (start/shutdown). */
struct lane {
    rpc_server *s;
    int nthreads;           /* opts value or default; threads start only if the lane has
                               methods */
    int max_queued;         /* JOB_RUN entries allowed to wait */
    pthread_cond_t work_cv; /* job queued, or handlers_exit */
    struct job *head, *tail;
    int queued_calls;       /* JOB_RUN entries in the queue */
    pthread_t *threads;
    int started;
};

enum server_state { S_NEW, S_RUNNING, S_STOPPED };

struct rpc_server {
    char *listen;
    const struct tls_config *tls_cfg; /* borrowed until started; NULL = plaintext */
    tls_server *tls;                  /* freed after the grpc_server is destroyed */
    char *peer_only_prefix;
    char *local_only_prefix;
    rpc_gate_fn *gate;              /* NULL = no gate */
    rpc_audit_fn *audit;
    void *gate_ud;
    int cq_threads;
    int64_t max_recv, max_send, max_age_ms;
    metrics *reg;                   /* borrowed; NULL = no metrics */
    metric_counter *busy;           /* handler queue full */
    struct method_metrics unknown_mm; /* calls to unregistered methods */

    struct method *methods;
    size_t nmethods, methods_cap;

    enum server_state state; /* touched only by the owner thread (start/shutdown/free) */
    grpc_server *srv;
    struct worker *workers;
    struct lane lanes[RPC_MAX_LANES];
    atomic_bool stopping;

    _Atomic int64_t inflight; /* accepted, status not yet delivered (closed) */
    _Atomic int64_t live;     /* posted slots + calls holding a grpc_call */

    pthread_mutex_t mu;      /* guards every lane's queue; pairs with the lanes' work_cv
                                and with idle_cv */
    pthread_cond_t idle_cv;  /* inflight or live reached zero */
    bool handlers_exit;      /* every lane's threads exit once their queue is empty */
};

/* ---------------------------------------------------------------- counters, queue */

static void counter_done(rpc_server *s, _Atomic int64_t *counter)
{
    if (atomic_fetch_sub(counter, 1) == 1) {
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->idle_cv);
        pthread_mutex_unlock(&s->mu);
    }
}

/* Append 'j' to the queue of the lane of its call's method. A JOB_RUN is refused (false)
 * when the lane's max_queued calls are already waiting; cancel jobs are bounded by the
 * number of calls and always accepted. */
static bool queue_push(rpc_server *s, struct job *j)
{
    struct lane *l = &s->lanes[j->c->m->lane];
    pthread_mutex_lock(&s->mu);
    if (j->kind == JOB_RUN && l->queued_calls >= l->max_queued) {
        pthread_mutex_unlock(&s->mu);
        return false;
    }
    if (j->kind == JOB_RUN)
        l->queued_calls++;
    j->next = NULL;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    pthread_cond_signal(&l->work_cv);
    pthread_mutex_unlock(&s->mu);
    return true;
}

/* ---------------------------------------------------------------- metrics */

static const char *const grpc_code_names[GRPC_CODES] = {
    "OK",           "Canceled",          "Unknown",           "InvalidArgument",
    "DeadlineExceeded", "NotFound",      "AlreadyExists",     "PermissionDenied",
    "ResourceExhausted", "FailedPrecondition", "Aborted",     "OutOfRange",
    "Unimplemented", "Internal",         "Unavailable",       "DataLoss",
    "Unauthenticated",
};

const char *rpc_status_label(grpc_status_code code)
{
    return (int)code >= 0 && (int)code < GRPC_CODES ? grpc_code_names[code] : "Unknown";
}

/* The grpc_type label of a method. */
static const char *method_type(const struct method *m)
{
    return m->bidi ? "bidi_stream" : m->stream ? "server_stream" : "unary";
}

/* Resolve the series of a method ("/pkg.Service/Method" and its grpc_type; NULL path:
 * unknown methods). */
static void method_metrics_init(metrics *reg, struct method_metrics *mm, const char *path,
                                const char *grpc_type)
{
    static const char *const labels[] = {"grpc_service", "grpc_method", "grpc_type",
                                         "grpc_code"};
    char service[PATH_MAX_LEN] = "unknown", method[PATH_MAX_LEN] = "unknown";
    const char *type = "unknown";
    const char *slash = path ? strrchr(path, '/') : NULL;
    if (path && path[0] == '/' && slash && slash > path + 1 && slash[1]) {
        snprintf(service, sizeof(service), "%.*s", (int)(slash - path - 1), path + 1);
        snprintf(method, sizeof(method), "%s", slash + 1);
        type = grpc_type;
    }
    const char *values[] = {service, method, type, NULL};
    memset(mm, 0, sizeof(*mm));
    if (!reg)
        return;
    mm->started = metric_family_counter(
        metrics_family(reg, METRIC_COUNTER, "grpc_server_started_total",
                       "Total number of RPCs started on the server.", labels, 3, NULL, 0),
        values);
    mm->received = metric_family_counter(
        metrics_family(reg, METRIC_COUNTER, "grpc_server_msg_received_total",
                       "Total number of RPC stream messages received on the server.", labels,
                       3, NULL, 0),
        values);
    mm->sent = metric_family_counter(
        metrics_family(reg, METRIC_COUNTER, "grpc_server_msg_sent_total",
                       "Total number of gRPC stream messages sent by the server.", labels, 3,
                       NULL, 0),
        values);
    mm->seconds = metric_family_histogram(
        metrics_family(reg, METRIC_HISTOGRAM, "grpc_server_handling_seconds",
                       "Histogram of response latency (seconds) of gRPC that had been "
                       "application-level handled by the server.",
                       labels, 3, metrics_default_buckets, metrics_default_nbuckets),
        values);
    metric_family *handled = metrics_family(
        reg, METRIC_COUNTER, "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        labels, 4, NULL, 0);
    for (int i = 0; i < GRPC_CODES; i++) {
        values[3] = grpc_code_names[i];
        mm->handled[i] = metric_family_counter(handled, values);
    }
}

/* Count the call's outcome once (see DESIGN). Under c->mu. */
static void call_record_locked(rpc_call *c, grpc_status_code code)
{
    if (c->recorded)
        return;
    c->recorded = true;
    const struct method_metrics *mm = c->mm;
    int k = (int)code >= 0 && (int)code < GRPC_CODES ? (int)code : GRPC_STATUS_UNKNOWN;
    metric_counter_inc(mm->handled[k]);
    int64_t took_ns = clock_mono_ns() - c->arrival_ns;
    if (mm->seconds)
        metric_histogram_observe(mm->seconds, (double)took_ns / 1e9);
    if (c->who && c->s && c->s->audit)
        c->s->audit(c->s->gate_ud, c->m->path, c->who, c->req, code, took_ns);
}

/* ---------------------------------------------------------------- calls */

static void call_free(rpc_call *c)
{
    struct out_msg *o = c->q_head;
    while (o) {
        struct out_msg *next = o->next;
        grpc_byte_buffer_destroy(o->bb);
        free(o);
        o = next;
    }
    struct local_answer *la = c->local;
    if (c->req && !(la && la->lent))
        protobuf_c_message_free_unpacked(c->req, NULL);
    if (c->recv_bb)
        grpc_byte_buffer_destroy(c->recv_bb);
    free(c->fin_msg);
    free(c->who);
    if (la && la->answered)
        la->done(la->ud, &la->res, la->resp);
    free(la);
    if (c->has_trailer) {
        grpc_slice_unref(c->trailer.key);
        grpc_slice_unref(c->trailer.value);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Release c->mu. If the call is closed and idle, give the grpc_call back and detach from
 * the server; if nobody holds the call any more, free it. 'c' must not be used after. */
static void call_unlock(rpc_call *c)
{
    grpc_call *gc = NULL;
    rpc_server *s = NULL;
    if (c->call && c->closed && c->batches == 0) {
        gc = c->call;
        s = c->s;
        c->call = NULL;
        c->s = NULL;
    }
    bool free_it = c->call == NULL && c->batches == 0 && c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (gc)
        grpc_call_unref(gc);
    if (s)
        counter_done(s, &s->live);
    if (free_it)
        call_free(c);
}

/* The call no longer counts as in flight: its status has gone out and the call closed, or
 * the client went away. Counting until then (not until the application answered) is what
 * lets shutdown's grace period deliver answers that are already on their way. Under c->mu. */
static void call_done_locked(rpc_call *c)
{
    if (!c->counted_done) {
        c->counted_done = true;
        counter_done(c->s, &c->s->inflight);
    }
}

/* Start a batch on the call; 'tag' is close_tag or send_tag. Under c->mu. */
static bool call_batch_locked(rpc_call *c, const grpc_op *ops, size_t n, struct tag *tag)
{
    c->batches++;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e != GRPC_CALL_OK) {
        c->batches--;
        log_error("msg=\"grpc_call_start_batch failed\" err=%d method=%s", (int)e,
                  c->m ? c->m->path : "(unknown)");
        return false;
    }
    return true;
}

/* Start the final batch: initial metadata if not yet sent, 'bb' if not NULL (ownership
 * taken), and the status. Under c->mu, only while the call is open. */
static void call_send_status_locked(rpc_call *c, grpc_status_code code, const char *msg,
                                    grpc_byte_buffer *bb)
{
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->sent_md) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->sent_md = true;
    }
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
        metric_counter_inc(c->mm->sent);
    }
    grpc_slice details = msg ? grpc_slice_from_copied_string(msg) : grpc_empty_slice();
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    if (c->has_trailer) {
        ops[n].data.send_status_from_server.trailing_metadata_count = 1;
        ops[n].data.send_status_from_server.trailing_metadata = &c->trailer;
    }
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = &details; /* copied */
    c->status_sent = true;
    c->send_bb = bb;
    if (!call_batch_locked(c, ops, n, &c->send_tag)) {
        c->send_bb = NULL;
        if (bb)
            grpc_byte_buffer_destroy(bb);
    }
    grpc_slice_unref(details);
}

/* Start sending one stream message (ownership of 'bb' taken). Under c->mu. */
static bool call_send_msg_locked(rpc_call *c, grpc_byte_buffer *bb)
{
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->sent_md) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->sent_md = true;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    c->send_bb = bb;
    metric_counter_inc(c->mm->sent);
    if (!call_batch_locked(c, ops, n, &c->send_tag)) {
        c->send_bb = NULL;
        grpc_byte_buffer_destroy(bb);
        c->broken = true;
        return false;
    }
    return true;
}

/* Answer with an error on the app's behalf (or the app's own rpc_reply_error): drops the
 * app reference. Under c->mu. */
static void call_fail_locked(rpc_call *c, grpc_status_code code, const char *msg)
{
    assert(!c->answered);
    c->answered = true;
    c->refs--;
    call_record_locked(c, code);
    if (!c->closed) {
        if (!c->status_sent && !c->broken)
            call_send_status_locked(c, code, msg, NULL);
        else
            call_done_locked(c); /* nothing more will go out */
    }
}

/* RECV_CLOSE_ON_SERVER completed (or could not be started). Under c->mu. */
static void call_closed_locked(rpc_call *c)
{
    c->closed = true;
    call_done_locked(c);
    if (c->answered)
        return;
    call_record_locked(c, pbgrpc_remaining_ms(c->deadline) <= 0 ? GRPC_STATUS_DEADLINE_EXCEEDED
                                                                : GRPC_STATUS_CANCELLED);
    const struct method *m = c->m;
    if (m && m->stream && m->on_cancel) {
        if (c->in_handler) {
            c->cancel_due = true; /* the handler thread runs it when the handler returns */
        } else if (c->delivered) {
            c->refs++;
            c->cancel_job.kind = JOB_CANCEL;
            c->cancel_job.c = c;
            queue_push(c->s, &c->cancel_job);
        }
        /* not delivered yet: the handler job drops the call without calling the handler */
    }
}

static void on_close(rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    c->batches--;
    call_closed_locked(c);
    call_unlock(c);
}

static void on_send(rpc_call *c, bool ok)
{
    pthread_mutex_lock(&c->mu);
    c->batches--;
    if (c->send_bb) {
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
    }
    if (!ok)
        c->broken = true;
    if (!c->status_sent && !c->closed && !c->broken) {
        if (c->q_head) {
            struct out_msg *o = c->q_head;
            c->q_head = o->next;
            if (c->q_head == NULL)
                c->q_tail = NULL;
            c->q_len--;
            grpc_byte_buffer *bb = o->bb;
            free(o);
            call_send_msg_locked(c, bb);
        } else if (c->finish_pending) {
            c->finish_pending = false;
            call_send_status_locked(c, c->fin_code, c->fin_msg, NULL);
        }
    }
    call_unlock(c);
}

/* Bidi: start reading the next request. Under c->mu, only while the call is open. */
static bool call_recv_locked(rpc_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    return call_batch_locked(c, &op, 1, &c->recv_tag);
}

/* Bidi: end the stream with 'code' because of a request the application never saw (a
 * malformed one, or one its lane had no room for). Before the first delivery the server
 * answers for the application, as for any call; afterwards the application still holds
 * the call, so the status goes out on its own (after the messages already queued), the
 * close that follows runs on_cancel, and the application's rpc_stream_finish then only
 * frees. Under c->mu. */
static void call_abort_locked(rpc_call *c, grpc_status_code code, const char *msg)
{
    if (!c->delivered) {
        call_fail_locked(c, code, msg);
        return;
    }
    call_record_locked(c, code);
    if (c->closed || c->answered || c->status_sent || c->broken || c->finish_pending)
        return;
    if (c->send_bb == NULL) {
        call_send_status_locked(c, code, msg, NULL);
    } else {
        c->finish_pending = true;
        c->fin_code = code;
        c->fin_msg = strdup(msg); /* NULL on OOM: the status has no text */
    }
}

/* Bidi: a RECV_MESSAGE completed on the CQ thread. A request is decoded and queued for a
 * handler, as a new call's is; the end of the client's requests (no message) is queued as
 * a NULL request. The next read starts only once the handler returned (run_call), so the
 * handler of one call never runs twice at once and a client cannot queue more than one
 * request per call. */
static void on_recv(rpc_call *c, bool ok)
{
    char msg[256];
    pthread_mutex_lock(&c->mu);
    c->batches--;
    grpc_byte_buffer *bb = c->recv_bb;
    c->recv_bb = NULL;
    if (!ok || c->closed || c->answered || c->status_sent) /* the close reports the end */
        goto out;
    if (bb) {
        metric_counter_inc(c->mm->received);
        c->req = pbgrpc_unpack(c->m->req_desc, bb);
        if (c->req == NULL) {
            snprintf(msg, sizeof(msg), "malformed %s message", c->m->req_desc->short_name);
            call_abort_locked(c, GRPC_STATUS_INVALID_ARGUMENT, msg);
            goto out;
        }
    }
    c->refs++; /* the handler job's */
    c->run_job.kind = JOB_RUN;
    c->run_job.c = c;
    if (!queue_push(c->s, &c->run_job)) {
        c->refs--;
        metric_counter_inc(c->s->busy);
        snprintf(msg, sizeof(msg), "server busy: %d calls queued",
                 c->s->lanes[c->m->lane].max_queued);
        call_abort_locked(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    }
out:
    if (bb)
        grpc_byte_buffer_destroy(bb);
    call_unlock(c);
}

/* ---------------------------------------------------------------- handler threads */

static void run_call(rpc_call *c)
{
    const struct method *m = c->m;
    pthread_mutex_lock(&c->mu);
    if (c->closed && c->delivered) {
        /* bidi, a later request: the application still holds the call and hears of the
           close through on_cancel */
        c->refs--;
        call_unlock(c);
        return;
    }
    if (c->closed) {
        /* cancelled while queued: the handler never sees it */
        c->answered = true;
        c->refs -= 2; /* the app's and this job's */
        call_unlock(c);
        return;
    }
    if (!c->delivered && pbgrpc_remaining_ms(c->deadline) <= 0) {
        call_fail_locked(c, GRPC_STATUS_DEADLINE_EXCEEDED,
                         "deadline exceeded before a handler was free");
        c->refs--;
        call_unlock(c);
        return;
    }
    c->delivered = true;
    c->in_handler = true;
    ProtobufCMessage *req = c->req;
    pthread_mutex_unlock(&c->mu);

    m->fn(m->ud, c, req);

    pthread_mutex_lock(&c->mu);
    c->in_handler = false;
    bool cancel = c->cancel_due && !c->answered;
    c->cancel_due = false;
    if (cancel) {
        pthread_mutex_unlock(&c->mu);
        m->on_cancel(m->ud, c);
        pthread_mutex_lock(&c->mu);
    }
    if (m->bidi) {
        if (c->req)
            protobuf_c_message_free_unpacked(c->req, NULL);
        c->req = NULL;
        if (req && !c->answered && !c->closed && !c->status_sent && !call_recv_locked(c))
            call_abort_locked(c, GRPC_STATUS_INTERNAL, "cannot read the next request");
    }
    c->refs--;
    call_unlock(c);
}

static void run_cancel(rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    bool go = !c->answered;
    pthread_mutex_unlock(&c->mu);
    if (go)
        c->m->on_cancel(c->m->ud, c);
    pthread_mutex_lock(&c->mu);
    c->refs--;
    call_unlock(c);
}

/* A handler thread of lane 'arg': serves only that lane's queue. */
static void *handler_main(void *arg)
{
    thread_name("handler");
    struct lane *l = arg;
    rpc_server *s = l->s;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (l->head == NULL && !s->handlers_exit)
            pthread_cond_wait(&l->work_cv, &s->mu);
        struct job *j = l->head;
        if (j == NULL) { /* exit only once the queue is drained */
            pthread_mutex_unlock(&s->mu);
            break;
        }
        l->head = j->next;
        if (l->head == NULL)
            l->tail = NULL;
        if (j->kind == JOB_RUN)
            l->queued_calls--;
        pthread_mutex_unlock(&s->mu);
        if (j->kind == JOB_RUN)
            run_call(j->c);
        else
            run_cancel(j->c);
    }
    return NULL;
}

/* ---------------------------------------------------------------- accepting */

static void slot_free(struct slot *sl)
{
    grpc_metadata_array_destroy(&sl->md);
    grpc_call_details_destroy(&sl->details);
    if (sl->payload)
        grpc_byte_buffer_destroy(sl->payload);
    if (sl->call)
        grpc_call_unref(sl->call);
    free(sl);
}

/* Post 'sl' (already counted in s->live); on refusal it is freed and uncounted. */
static void slot_post(struct slot *sl)
{
    rpc_server *s = sl->w->s;
    grpc_completion_queue *cq = sl->w->cq;
    grpc_call_error e = GRPC_CALL_ERROR;
    if (!atomic_load(&s->stopping)) {
        if (sl->m)
            e = grpc_server_request_registered_call(s->srv, sl->m->handle, &sl->call,
                                                    &sl->deadline, &sl->md,
                                                    sl->m->bidi ? NULL : &sl->payload, cq, cq,
                                                    &sl->tag);
        else
            e = grpc_server_request_call(s->srv, &sl->call, &sl->details, &sl->md, cq, cq,
                                         &sl->tag);
    }
    if (e != GRPC_CALL_OK) {
        slot_free(sl);
        counter_done(s, &s->live);
    }
}

static void slot_new(struct worker *w, const struct method *m)
{
    struct slot *sl = calloc(1, sizeof(*sl));
    if (sl == NULL) {
        log_error("msg=\"out of memory for an accept slot\"");
        return;
    }
    sl->tag.kind = TAG_SLOT;
    sl->w = w;
    sl->m = m;
    grpc_metadata_array_init(&sl->md);
    grpc_call_details_init(&sl->details);
    atomic_fetch_add(&w->s->live, 1);
    slot_post(sl);
}

/* Ask the gate about the call; a refused call is answered here (false). Under c->mu. */
static bool gate_passes(rpc_call *c, const grpc_metadata_array *md)
{
    rpc_server *s = c->s;
    struct rpc_gate_verdict v;
    memset(&v, 0, sizeof(v));
    struct rpc_gate_call gc = {c->m->path, md, c->call, c->req};
    s->gate(s->gate_ud, &gc, &v);
    if (v.audit)
        c->who = strdup(v.who); /* NULL on OOM: the audit line is lost, not the call */
    if (v.code == GRPC_STATUS_OK)
        return true;
    if (v.retry_after_ms > 0) {
        char ms[24];
        snprintf(ms, sizeof(ms), "%lld", (long long)v.retry_after_ms);
        c->trailer.key = grpc_slice_from_static_string("retry-after-ms");
        c->trailer.value = grpc_slice_from_copied_string(ms);
        c->has_trailer = true;
    }
    call_fail_locked(c, v.code, v.msg);
    return false;
}

/* Start RECV_CLOSE_ON_SERVER, decode the request and queue the call for a handler (or run
 * the handler here, when the method's inline_fn approves the request), or answer it at
 * once (unknown method, malformed request, queue full). On the CQ thread. */
static void call_begin(rpc_call *c, grpc_byte_buffer *payload, const char *unknown_path,
                       const grpc_metadata_array *md)
{
    rpc_server *s = c->s;
    bool run_here = false;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;

    pthread_mutex_lock(&c->mu);
    if (!call_batch_locked(c, &op, 1, &c->close_tag))
        call_closed_locked(c);
    if (c->m != NULL && c->m->peer_only && !tls_call_peer_verified(c->call)) {
        char msg[PATH_MAX_LEN + 64];
        snprintf(msg, sizeof(msg), "%s answers only cluster members (a client certificate "
                 "signed by the cluster CA)", c->m->path);
        call_fail_locked(c, GRPC_STATUS_UNAUTHENTICATED, msg);
        goto out;
    }
    if (c->m == NULL) {
        char msg[PATH_MAX_LEN + 32];
        snprintf(msg, sizeof(msg), "unknown method %s", unknown_path);
        call_fail_locked(c, GRPC_STATUS_UNIMPLEMENTED, msg);
        goto out;
    }
    if (c->m->bidi) { /* the gate sees no request; the first one is read now */
        if (s->gate && !gate_passes(c, md))
            goto out;
        if (!call_recv_locked(c))
            call_fail_locked(c, GRPC_STATUS_INTERNAL, "cannot read the first request");
        goto out;
    }
    c->req = pbgrpc_unpack(c->m->req_desc, payload);
    if (c->req == NULL) {
        char msg[256];
        snprintf(msg, sizeof(msg), "malformed %s message", c->m->req_desc->short_name);
        call_fail_locked(c, GRPC_STATUS_INVALID_ARGUMENT, msg);
        goto out;
    }
    if (s->gate && !gate_passes(c, md))
        goto out;
    c->refs++; /* the handler job's */
    if (c->m->inline_fn && c->m->inline_fn(c->m->ud, c->req)) {
        run_here = true; /* once c->mu is released: the handler answers under it */
        goto out;
    }
    c->run_job.kind = JOB_RUN;
    c->run_job.c = c;
    if (!queue_push(s, &c->run_job)) {
        char msg[128];
        c->refs--;
        metric_counter_inc(s->busy);
        snprintf(msg, sizeof(msg), "server busy: %d calls queued",
                 s->lanes[c->m->lane].max_queued);
        call_fail_locked(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    }
out:
    call_unlock(c);
    if (run_here)
        run_call(c); /* the job's reference keeps 'c' */
}

/* An accept slot completed: turn it into an rpc_call and re-post the slot. */
static void on_slot(struct slot *sl, bool ok)
{
    rpc_server *s = sl->w->s;
    if (!ok) { /* shutting down */
        slot_free(sl);
        counter_done(s, &s->live);
        return;
    }
    int64_t arrival_ns = clock_mono_ns();
    grpc_call *gc = sl->call;
    grpc_byte_buffer *payload = sl->payload;
    gpr_timespec deadline = sl->m ? sl->deadline : sl->details.deadline;
    char path[PATH_MAX_LEN];
    path[0] = '\0';
    if (sl->m == NULL)
        pbgrpc_slice_str(sl->details.method, path, sizeof(path));
    const struct method *m = sl->m;
    grpc_metadata_array md = sl->md; /* moved out: the gate reads it */

    /* re-arm the slot first, so accepting never stops while we serve */
    sl->call = NULL;
    sl->payload = NULL;
    grpc_metadata_array_init(&sl->md);
    grpc_call_details_destroy(&sl->details);
    grpc_call_details_init(&sl->details);
    slot_post(sl);

    rpc_call *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        log_error("msg=\"out of memory for a call\"");
        grpc_call_cancel_with_status(gc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        grpc_call_unref(gc);
        if (payload)
            grpc_byte_buffer_destroy(payload);
        grpc_metadata_array_destroy(&md);
        return;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->m = m;
    c->mm = m ? &m->mm : &s->unknown_mm;
    c->arrival_ns = arrival_ns;
    c->deadline = deadline;
    c->close_tag.kind = TAG_CLOSE;
    c->send_tag.kind = TAG_SEND;
    c->recv_tag.kind = TAG_RECV;
    c->s = s;
    c->call = gc;
    c->refs = 1; /* the application's, until it answers */
    atomic_fetch_add(&s->live, 1);
    atomic_fetch_add(&s->inflight, 1);
    metric_counter_inc(c->mm->started);
    if (payload)
        metric_counter_inc(c->mm->received);
    call_begin(c, payload, path, &md);
    if (payload)
        grpc_byte_buffer_destroy(payload);
    grpc_metadata_array_destroy(&md);
}

static void *worker_main(void *arg)
{
    thread_name("cq");
    struct worker *w = arg;
    rpc_server *s = w->s;
    for (size_t i = 0; i < s->nmethods; i++)
        for (int k = 0; k < ACCEPT_SLOTS && !s->methods[i].local_only; k++)
            slot_new(w, &s->methods[i]);
    slot_new(w, NULL); /* unknown methods: without it they hang until their deadline */

    for (;;) {
        grpc_event ev = grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        struct tag *t = ev.tag;
        switch (t->kind) {
        case TAG_SLOT:
            on_slot((struct slot *)t, ev.success != 0);
            break;
        case TAG_CLOSE:
            on_close((rpc_call *)((char *)t - offsetof(rpc_call, close_tag)));
            break;
        case TAG_SEND:
            on_send((rpc_call *)((char *)t - offsetof(rpc_call, send_tag)), ev.success != 0);
            break;
        case TAG_RECV:
            on_recv((rpc_call *)((char *)t - offsetof(rpc_call, recv_tag)), ev.success != 0);
            break;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- public API */

static int clamp_int(int64_t v)
{
    return v > INT_MAX ? INT_MAX : (int)v;
}

rpc_server *rpc_server_new(const struct rpc_server_opts *opts)
{
    rpc_server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    if (opts->listen && (s->listen = strdup(opts->listen)) == NULL) {
        free(s);
        return NULL;
    }
    s->cq_threads = opts->cq_threads > 0 ? opts->cq_threads : DEFAULT_CQ_THREADS;
    int max_queued = opts->max_queued_calls > 0 ? opts->max_queued_calls : DEFAULT_MAX_QUEUED;
    for (int i = 0; i < RPC_MAX_LANES; i++) {
        struct lane *l = &s->lanes[i];
        l->s = s;
        if (opts->lane_threads[i] > 0)
            l->nthreads = opts->lane_threads[i];
        else if (i == 0 && opts->handler_threads > 0)
            l->nthreads = opts->handler_threads;
        else
            l->nthreads = DEFAULT_HANDLER_THREADS;
        l->max_queued = opts->lane_max_queued[i] > 0 ? opts->lane_max_queued[i] : max_queued;
    }
    s->max_recv = opts->max_recv_bytes > 0 ? opts->max_recv_bytes : DEFAULT_MAX_RECV;
    s->max_send = opts->max_send_bytes > 0 ? opts->max_send_bytes : DEFAULT_MAX_SEND;
    s->max_age_ms = opts->max_connection_age_ms > 0 ? opts->max_connection_age_ms : 0;
    s->reg = opts->metrics;
    s->busy = opts->busy_rejections;
    s->gate = opts->gate;
    s->audit = opts->audit;
    s->gate_ud = opts->gate_ud;
    s->tls_cfg = tls_server_enabled(opts->tls) ? opts->tls : NULL;
    if ((opts->peer_only_prefix && !(s->peer_only_prefix = strdup(opts->peer_only_prefix))) ||
        (opts->local_only_prefix &&
         !(s->local_only_prefix = strdup(opts->local_only_prefix)))) {
        free(s->peer_only_prefix);
        free(s->listen);
        free(s);
        return NULL;
    }
    s->state = S_NEW;
    atomic_init(&s->stopping, false);
    atomic_init(&s->inflight, 0);
    atomic_init(&s->live, 0);
    pthread_mutex_init(&s->mu, NULL);
    for (int i = 0; i < RPC_MAX_LANES; i++)
        pthread_cond_init(&s->lanes[i].work_cv, NULL);
    clock_cond_init(&s->idle_cv);
    grpc_init();
    return s;
}

static eddy_err add_method(rpc_server *s, const char *path,
                           const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn *fn,
                           rpc_cancel_fn *on_cancel, void *ud, bool stream, bool bidi, int lane)
{
    if (s->state != S_NEW || path == NULL || req_desc == NULL || fn == NULL || lane < 0 ||
        lane >= RPC_MAX_LANES)
        return EDDY_ERR_INVALID;
    for (size_t i = 0; i < s->nmethods; i++)
        if (strcmp(s->methods[i].path, path) == 0)
            return EDDY_ERR_INVALID;
    if (s->nmethods == s->methods_cap) {
        size_t cap = s->methods_cap ? 2 * s->methods_cap : 8;
        struct method *m = realloc(s->methods, cap * sizeof(*m));
        if (m == NULL)
            return EDDY_ERR_NOMEM;
        s->methods = m;
        s->methods_cap = cap;
    }
    struct method *m = &s->methods[s->nmethods];
    memset(m, 0, sizeof(*m));
    if ((m->path = strdup(path)) == NULL)
        return EDDY_ERR_NOMEM;
    m->req_desc = req_desc;
    m->fn = fn;
    m->on_cancel = on_cancel;
    m->ud = ud;
    m->stream = stream || bidi;
    m->bidi = bidi;
    m->lane = lane;
    s->nmethods++;
    return EDDY_OK;
}

eddy_err rpc_server_add_unary(rpc_server *s, const char *path,
                              const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn *fn,
                              void *ud)
{
    return add_method(s, path, req_desc, fn, NULL, ud, false, false, 0);
}

eddy_err rpc_server_add_unary_lane(rpc_server *s, const char *path,
                                   const ProtobufCMessageDescriptor *req_desc,
                                   rpc_handler_fn *fn, void *ud, int lane)
{
    return add_method(s, path, req_desc, fn, NULL, ud, false, false, lane);
}

eddy_err rpc_server_add_stream(rpc_server *s, const char *path,
                               const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn *fn,
                               rpc_cancel_fn *on_cancel, void *ud)
{
    return add_method(s, path, req_desc, fn, on_cancel, ud, true, false, 0);
}

eddy_err rpc_server_add_bidi(rpc_server *s, const char *path,
                             const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn *fn,
                             rpc_cancel_fn *on_cancel, void *ud)
{
    return add_method(s, path, req_desc, fn, on_cancel, ud, true, true, 0);
}

eddy_err rpc_server_set_inline(rpc_server *s, const char *path, rpc_inline_fn *fn)
{
    if (s->state != S_NEW || path == NULL)
        return EDDY_ERR_INVALID;
    for (size_t i = 0; i < s->nmethods; i++) {
        if (strcmp(s->methods[i].path, path) != 0)
            continue;
        if (s->methods[i].stream)
            return EDDY_ERR_INVALID;
        s->methods[i].inline_fn = fn;
        return EDDY_OK;
    }
    return EDDY_ERR_INVALID;
}

/* Shut down and drain CQs whose thread never started, then destroy all CQs. */
static void workers_destroy(rpc_server *s)
{
    for (int i = 0; i < s->cq_threads; i++) {
        struct worker *w = &s->workers[i];
        if (w->cq == NULL)
            continue;
        grpc_completion_queue_shutdown(w->cq);
        if (w->started) {
            pthread_join(w->thread, NULL);
        } else {
            while (grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                       .type != GRPC_QUEUE_SHUTDOWN) {
            }
        }
        grpc_completion_queue_destroy(w->cq);
        w->cq = NULL;
        w->started = false;
    }
    free(s->workers);
    s->workers = NULL;
}

/* Free the lanes' thread arrays; their threads are joined (or never started). */
static void lanes_free(rpc_server *s)
{
    for (int i = 0; i < RPC_MAX_LANES; i++) {
        free(s->lanes[i].threads);
        s->lanes[i].threads = NULL;
        s->lanes[i].started = 0;
    }
}

/* Shut down and destroy a server that never served a call (grpc_server_destroy asserts
 * on a server with ports that was never shut down). */
static void server_stop_unused(grpc_server *srv)
{
    grpc_completion_queue *scq = grpc_completion_queue_create_for_pluck(NULL);
    int tag;
    grpc_server_shutdown_and_notify(srv, scq, &tag);
    grpc_completion_queue_pluck(scq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_server_destroy(srv);
    grpc_completion_queue_shutdown(scq);
    grpc_completion_queue_destroy(scq);
}

eddy_err rpc_server_start(rpc_server *s, int *port)
{
    eddy_err err = EDDY_ERR_INVALID;
    if (s->state != S_NEW || s->listen == NULL)
        return err;

    grpc_arg args[4];
    size_t nargs = 0;
    memset(args, 0, sizeof(args));
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_ALLOW_REUSEPORT; /* a second server must fail to bind */
    args[nargs++].value.integer = 0;
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[nargs++].value.integer = clamp_int(s->max_recv);
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[nargs++].value.integer = clamp_int(s->max_send);
    if (s->max_age_ms > 0) {
        args[nargs].type = GRPC_ARG_INTEGER;
        args[nargs].key = (char *)GRPC_ARG_MAX_CONNECTION_AGE_MS;
        args[nargs++].value.integer = clamp_int(s->max_age_ms);
    }
    grpc_channel_args cargs = {nargs, args};

    err = EDDY_ERR_NOMEM;
    s->srv = grpc_server_create(&cargs, NULL);
    s->workers = calloc((size_t)s->cq_threads, sizeof(*s->workers));
    if (s->workers == NULL)
        goto fail;
    for (size_t i = 0; i < s->nmethods; i++) {
        struct lane *l = &s->lanes[s->methods[i].lane];
        if (l->threads == NULL && (l->threads = calloc((size_t)l->nthreads,
                                                       sizeof(*l->threads))) == NULL)
            goto fail;
    }
    for (size_t i = 0; s->local_only_prefix && i < s->nmethods; i++)
        s->methods[i].local_only = strncmp(s->methods[i].path, s->local_only_prefix,
                                           strlen(s->local_only_prefix)) == 0;
    for (size_t i = 0; i < s->nmethods; i++) {
        if (s->methods[i].local_only)
            continue; /* unknown to the network: the generic slot answers UNIMPLEMENTED */
        s->methods[i].handle = grpc_server_register_method(
            s->srv, s->methods[i].path, NULL,
            s->methods[i].bidi ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
            0);
        if (s->methods[i].handle == NULL) {
            err = EDDY_ERR_INVALID;
            goto fail;
        }
    }
    for (size_t i = 0; i < s->nmethods; i++)
        if (!s->methods[i].local_only) /* never called from the network: no series */
            method_metrics_init(s->reg, &s->methods[i].mm, s->methods[i].path,
                                method_type(&s->methods[i]));
    method_metrics_init(s->reg, &s->unknown_mm, NULL, NULL);
    for (int i = 0; i < s->cq_threads; i++) {
        s->workers[i].s = s;
        s->workers[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(s->srv, s->workers[i].cq, NULL);
    }
    for (size_t i = 0; s->tls_cfg && s->peer_only_prefix && i < s->nmethods; i++)
        s->methods[i].peer_only = strncmp(s->methods[i].path, s->peer_only_prefix,
                                          strlen(s->peer_only_prefix)) == 0;
    grpc_server_credentials *creds = NULL;
    if (s->tls_cfg) {
        char why[512];
        if (!(s->tls = tls_server_new(s->tls_cfg, why, sizeof(why)))) {
            log_error("msg=\"bad TLS configuration\" error=\"%s\"", why);
            err = EDDY_ERR_INVALID;
            goto fail;
        }
        creds = tls_server_credentials(s->tls);
    } else {
        creds = grpc_insecure_server_credentials_create();
    }
    int bound = creds ? grpc_server_add_http2_port(s->srv, s->listen, creds) : 0;
    if (creds)
        grpc_server_credentials_release(creds);
    if (bound == 0) {
        log_error("msg=\"cannot listen\" addr=%s", s->listen);
        err = EDDY_ERR_NET;
        goto fail;
    }
    grpc_server_start(s->srv);
    s->state = S_RUNNING;

    for (int i = 0; i < s->cq_threads; i++) {
        if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0)
            goto fail_running;
        s->workers[i].started = true;
    }
    for (int i = 0; i < RPC_MAX_LANES; i++) {
        struct lane *l = &s->lanes[i];
        for (int k = 0; l->threads && k < l->nthreads; k++) {
            if (pthread_create(&l->threads[k], NULL, handler_main, l) != 0)
                goto fail_running;
            l->started++;
        }
    }
    if (port)
        *port = bound;
    char lanes[16 * RPC_MAX_LANES] = "";
    size_t used = 0;
    for (int i = 0; i < RPC_MAX_LANES; i++)
        used += (size_t)snprintf(lanes + used, sizeof(lanes) - used, "%s%d", i ? "," : "",
                                 s->lanes[i].started);
    log_info("msg=\"rpc server listening\" addr=%s port=%d methods=%zu cq_threads=%d "
             "handler_threads=%s tls=%s",
             s->listen, bound, s->nmethods, s->cq_threads, lanes,
             s->tls_cfg ? tls_client_auth_name(s->tls_cfg->client_auth) : "off");
    s->tls_cfg = NULL; /* borrowed until now */
    return EDDY_OK;

fail_running:
    rpc_server_shutdown(s, 0); /* copes with the threads that did not start */
    return EDDY_ERR_NOMEM;
fail:
    if (s->srv) {
        grpc_server_start(s->srv); /* as in the guide's reuse.c: start, then shut down */
        server_stop_unused(s->srv);
        s->srv = NULL;
    }
    if (s->workers)
        workers_destroy(s);
    lanes_free(s);
    s->state = S_STOPPED;
    return err;
}

/* Wait until '*counter' is zero, at most until 'until' (monotonic) if not NULL. */
static void wait_zero(rpc_server *s, _Atomic int64_t *counter, const struct timespec *until)
{
    pthread_mutex_lock(&s->mu);
    while (atomic_load(counter) > 0) {
        if (until) {
            if (pthread_cond_timedwait(&s->idle_cv, &s->mu, until) != 0 &&
                atomic_load(counter) > 0)
                break; /* timed out */
        } else {
            pthread_cond_wait(&s->idle_cv, &s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

void rpc_server_shutdown(rpc_server *s, int64_t grace_ms)
{
    if (s == NULL || s->state != S_RUNNING)
        return;
    s->state = S_STOPPED;
    atomic_store(&s->stopping, true);

    grpc_completion_queue *scq = grpc_completion_queue_create_for_pluck(NULL);
    int tag;
    grpc_server_shutdown_and_notify(s->srv, scq, &tag); /* pending accepts fail */

    if (grace_ms > 0 && atomic_load(&s->inflight) > 0) {
        struct timespec until = clock_mono_after(grace_ms);
        wait_zero(s, &s->inflight, &until);
    }
    int64_t left = atomic_load(&s->inflight);
    if (left > 0)
        log_warn("msg=\"cancelling calls at shutdown\" inflight=%lld", (long long)left);
    grpc_server_cancel_all_calls(s->srv);
    wait_zero(s, &s->live, NULL); /* the CQ threads complete every slot and call */
    grpc_completion_queue_pluck(scq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_server_destroy(s->srv);
    s->srv = NULL;
    grpc_completion_queue_shutdown(scq);
    grpc_completion_queue_destroy(scq);
    workers_destroy(s);

    pthread_mutex_lock(&s->mu);
    s->handlers_exit = true;
    for (int i = 0; i < RPC_MAX_LANES; i++)
        pthread_cond_broadcast(&s->lanes[i].work_cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < RPC_MAX_LANES; i++)
        for (int k = 0; k < s->lanes[i].started; k++)
            pthread_join(s->lanes[i].threads[k], NULL);
    lanes_free(s);
}

void rpc_server_free(rpc_server *s)
{
    if (s == NULL)
        return;
    rpc_server_shutdown(s, 0);
    for (size_t i = 0; i < s->nmethods; i++)
        free(s->methods[i].path);
    free(s->methods);
    free(s->listen);
    free(s->peer_only_prefix);
    free(s->local_only_prefix);
    tls_server_free(s->tls); /* the grpc_server using its credentials is gone */
    for (int i = 0; i < RPC_MAX_LANES; i++)
        pthread_cond_destroy(&s->lanes[i].work_cv);
    pthread_cond_destroy(&s->idle_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    grpc_shutdown();
}

/* ---------------------------------------------------------------- in-process calls */

static const struct method_metrics no_metrics; /* in-process calls are not counted */

/* Hand the answer of an in-process call to its caller and drop the application's
 * reference (the handler run holds the other until the handler returns). */
static void local_answer(rpc_call *c, grpc_status_code code, const char *msg,
                         const ProtobufCMessage *resp)
{
    struct rpc_result res = {.code = code};
    snprintf(res.details, sizeof(res.details), "%s", msg ? msg : "");
    ProtobufCMessage *copy = NULL;
    if (code == GRPC_STATUS_OK) { /* the caller gets its own copy, as from the network */
        copy = pb_copy(resp, c->local->resp_desc);
        if (!copy) {
            res.code = GRPC_STATUS_INTERNAL;
            snprintf(res.details, sizeof(res.details), "cannot copy the response");
        }
    }
    pthread_mutex_lock(&c->mu);
    assert(!c->answered);
    c->answered = true;
    c->refs--;
    struct local_answer la = *c->local;
    if (la.lent) { /* answered by call_free, once the handler has returned too */
        c->local->answered = true;
        c->local->res = res;
        c->local->resp = copy;
    }
    call_unlock(c);
    if (!la.lent)
        la.done(la.ud, &res, copy);
}

eddy_err rpc_server_invoke_local(void *server, const char *method, const ProtobufCMessage *req,
                                 bool lent, const ProtobufCMessageDescriptor *resp_desc,
                                 int64_t timeout_ms, rpc_done_fn *done, void *done_ud)
{
    rpc_server *s = server;
    const struct method *m = NULL;
    for (size_t i = 0; i < s->nmethods && !m; i++)
        if (strcmp(s->methods[i].path, method) == 0)
            m = &s->methods[i];
    struct rpc_result res = {.code = GRPC_STATUS_OK};
    if (!m || m->stream || m->req_desc != req->descriptor) {
        res.code = GRPC_STATUS_UNIMPLEMENTED;
        snprintf(res.details, sizeof(res.details), "method %.300s is not served in-process",
                 method);
    } else if (atomic_load(&s->stopping)) { /* (its owner may be changing 'state') */
        res.code = GRPC_STATUS_UNAVAILABLE;
        snprintf(res.details, sizeof(res.details), "server shutting down");
    }
    if (res.code != GRPC_STATUS_OK) {
        done(done_ud, &res, NULL);
        return EDDY_OK;
    }
    rpc_call *c = calloc(1, sizeof(*c));
    struct local_answer *la = calloc(1, sizeof(*la));
    ProtobufCMessage *copy = NULL;
    if (c && la)
        copy = lent ? (ProtobufCMessage *)req : pb_copy(req, m->req_desc);
    if (!copy) {
        free(c);
        free(la);
        return EDDY_ERR_NOMEM;
    }
    *la = (struct local_answer){.done = done, .ud = done_ud, .resp_desc = resp_desc,
                                .lent = lent};
    c->m = m;
    c->mm = &no_metrics;
    c->arrival_ns = clock_mono_ns();
    c->deadline = pbgrpc_deadline(timeout_ms);
    pthread_mutex_init(&c->mu, NULL);
    c->req = copy;
    c->local = la;
    c->refs = 2; /* the application until it answers, and this handler run */
    c->delivered = true;
    m->fn(m->ud, c, copy);
    pthread_mutex_lock(&c->mu);
    c->refs--;
    call_unlock(c); /* frees the call once it was answered too */
    return EDDY_OK;
}

/* ---------------------------------------------------------------- answers */

void rpc_reply(rpc_call *c, const ProtobufCMessage *resp)
{
    if (c->local) {
        local_answer(c, GRPC_STATUS_OK, NULL, resp);
        return;
    }
    pthread_mutex_lock(&c->mu);
    assert(!c->answered);
    c->answered = true;
    c->refs--;
    call_record_locked(c, GRPC_STATUS_OK);
    if (!c->closed)
        call_send_status_locked(c, GRPC_STATUS_OK, NULL, pbgrpc_pack(resp));
    call_unlock(c);
}

void rpc_reply_error(rpc_call *c, grpc_status_code code, const char *fmt, ...)
{
    char msg[DETAILS_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->local) {
        local_answer(c, code, msg, NULL);
        return;
    }
    pthread_mutex_lock(&c->mu);
    call_fail_locked(c, code, msg);
    call_unlock(c);
}

eddy_err rpc_stream_send(rpc_call *c, const ProtobufCMessage *msg)
{
    eddy_err err = EDDY_OK;
    pthread_mutex_lock(&c->mu);
    if (c->closed || c->broken || c->answered || c->status_sent || c->finish_pending) {
        err = EDDY_ERR_UNAVAILABLE;
        goto out;
    }
    if (c->send_bb == NULL) {
        if (!call_send_msg_locked(c, pbgrpc_pack(msg)))
            err = EDDY_ERR_UNAVAILABLE;
        goto out;
    }
    if (c->q_len >= STREAM_MAX_QUEUED) {
        err = EDDY_ERR_FULL;
        goto out;
    }
    struct out_msg *o = malloc(sizeof(*o));
    if (o == NULL) {
        err = EDDY_ERR_NOMEM;
        goto out;
    }
    o->next = NULL;
    o->bb = pbgrpc_pack(msg);
    if (c->q_tail)
        c->q_tail->next = o;
    else
        c->q_head = o;
    c->q_tail = o;
    c->q_len++;
out:
    call_unlock(c);
    return err;
}

int rpc_stream_unsent(rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    int n = c->closed || c->broken ? 0 : c->q_len + (c->send_bb != NULL);
    call_unlock(c);
    return n;
}

void rpc_stream_finish(rpc_call *c, grpc_status_code code, const char *msg)
{
    pthread_mutex_lock(&c->mu);
    assert(!c->answered);
    c->answered = true;
    c->refs--;
    call_record_locked(c, code);
    if (!c->closed) {
        call_done_locked(c);
        if (c->status_sent || c->broken || c->finish_pending) {
            /* nothing more can go out (or the server already ended a bidi stream, see
               call_abort_locked); RECV_CLOSE_ON_SERVER will complete */
        } else if (c->send_bb == NULL) {
            call_send_status_locked(c, code, msg, NULL);
        } else {
            c->finish_pending = true;
            c->fin_code = code;
            free(c->fin_msg);
            c->fin_msg = msg ? strdup(msg) : NULL; /* NULL on OOM: the status has no text */
        }
    }
    call_unlock(c);
}

int64_t rpc_call_remaining_ms(const rpc_call *c)
{
    return pbgrpc_remaining_ms(c->deadline);
}

const char *rpc_call_method(const rpc_call *c)
{
    return c->m ? c->m->path : "";
}

int64_t rpc_call_arrival_ns(const rpc_call *c)
{
    return c->arrival_ns;
}

int64_t rpc_server_inflight(const rpc_server *s)
{
    return atomic_load(&s->inflight);
}

size_t rpc_server_method_count(const rpc_server *s)
{
    return s->nmethods;
}

const char *rpc_server_method_path(const rpc_server *s, size_t i)
{
    if (i >= s->nmethods)
        return NULL;
    return s->methods[i].local_only ? "" : s->methods[i].path;
}
