/* The gRPC client: one grpc_channel per target; synchronous calls wait on a pluck CQ of
 * their own, asynchronous calls complete on the channel's NEXT CQ and its thread.
 *
 * DESIGN
 * A synchronous call creates a small pluck CQ for itself, so any number of threads can
 * block in rpc_invoke on one channel without sharing a queue. Asynchronous calls share
 * the channel's CQ, drained by one thread per channel that runs the callbacks; the
 * channel keeps the list of those calls so that rpc_channel_close can cancel them and
 * wait for their callbacks before it destroys anything.
 *
 * A local channel (rpc_channel_open_local) has no grpc_channel: its calls go to the
 * process's own server, which runs the handler on the calling thread and answers from
 * whichever thread the handler answers on. It counts its async calls like a network
 * channel, so rpc_channel_close still waits for every callback. */
#include "common/rpc_client.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/pbgrpc.h"
#include "common/thread.h"

#define DEFAULT_MAX_MSG (64 * 1024 * 1024)

/* One unary call's buffers, sync or async. Touched by one thread at a time: the caller
 * until the batch is started, then whoever receives its tag. */
struct unary {
    grpc_call *call;
    grpc_byte_buffer *req, *resp;
    grpc_metadata_array imd, tmd;
    grpc_status_code status;
    grpc_slice details;
};

/* An asynchronous call, in the channel's pending list until its callback has run. */
struct async_call {
    struct async_call *prev, *next; /* guarded by ch->mu; unlinked once completed */
    struct unary u;
    const ProtobufCMessageDescriptor *resp_desc;
    rpc_done_fn *done;
    void *ud;
};

struct rpc_channel {
    rpc_local_fn *local;   /* non-NULL: a local channel (no grpc_channel, no CQ thread) */
    void *local_ud;
    grpc_channel *ch;
    uint32_t md_flags; /* flags of SEND_INITIAL_METADATA (wait for ready) */
    grpc_metadata auth_md; /* "authorization: Bearer ..." when n_md is 1 (slices owned) */
    size_t n_md;
    grpc_completion_queue *cq; /* async calls; drained by 'thread' */
    pthread_t thread;

    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t idle_cv; /* npending reached zero */
    struct async_call *pending;
    int npending;
    bool closing;
};

static void result_set(struct rpc_result *res, grpc_status_code code, const char *msg)
{
    res->code = code;
    res->retry_after_ms = 0;
    snprintf(res->details, sizeof(res->details), "%s", msg);
}

/* The "retry-after-ms" value of trailing metadata 'md' (0 when absent or malformed). */
static int64_t retry_after_ms(const grpc_metadata_array *md)
{
    for (size_t i = 0; i < md->count; i++) {
        if (grpc_slice_str_cmp(md->metadata[i].key, "retry-after-ms") != 0)
            continue;
        const char *v = (const char *)GRPC_SLICE_START_PTR(md->metadata[i].value);
        size_t n = GRPC_SLICE_LENGTH(md->metadata[i].value);
        int64_t ms = 0;
        for (size_t k = 0; k < n && k < 10; k++) {
            if (v[k] < '0' || v[k] > '9')
                return 0;
            ms = ms * 10 + (v[k] - '0');
        }
        return ms;
    }
    return 0;
}

/* Create the call and start the one batch of a unary call; 'req' ownership is taken. */
static bool unary_start(struct unary *u, rpc_channel *ch, grpc_completion_queue *cq,
                        const char *method, grpc_byte_buffer *req, int64_t timeout_ms,
                        void *tag)
{
    memset(u, 0, sizeof(*u));
    u->req = req;
    u->details = grpc_empty_slice();
    grpc_metadata_array_init(&u->imd);
    grpc_metadata_array_init(&u->tmd);
    grpc_slice path = grpc_slice_from_copied_string(method);
    u->call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path, NULL,
                                       pbgrpc_deadline(timeout_ms), NULL);
    grpc_slice_unref(path);
    if (u->call == NULL)
        return false;

    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = ch->md_flags;
    ops[0].data.send_initial_metadata.count = ch->n_md;
    ops[0].data.send_initial_metadata.metadata = ch->n_md ? &ch->auth_md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = u->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->imd;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &u->resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &u->tmd;
    ops[5].data.recv_status_on_client.status = &u->status;
    ops[5].data.recv_status_on_client.status_details = &u->details;
    grpc_call_error e = grpc_call_start_batch(u->call, ops, 6, tag, NULL);
    if (e != GRPC_CALL_OK) {
        log_error("msg=\"grpc_call_start_batch failed\" err=%d method=%s", (int)e, method);
        return false;
    }
    return true;
}

/* Free everything of 'u' (after its batch completed, or after unary_start failed). */
static void unary_release(struct unary *u)
{
    grpc_slice_unref(u->details);
    grpc_metadata_array_destroy(&u->imd);
    grpc_metadata_array_destroy(&u->tmd);
    if (u->req)
        grpc_byte_buffer_destroy(u->req);
    if (u->resp)
        grpc_byte_buffer_destroy(u->resp);
    if (u->call)
        grpc_call_unref(u->call);
    memset(u, 0, sizeof(*u));
}

/* Fill 'res' and, if 'd' is not NULL and the status is OK, decode *resp; then release. */
static void unary_finish(struct unary *u, const ProtobufCMessageDescriptor *d,
                         ProtobufCMessage **resp, struct rpc_result *res)
{
    res->code = u->status;
    res->retry_after_ms = retry_after_ms(&u->tmd);
    pbgrpc_slice_str(u->details, res->details, sizeof(res->details));
    if (resp)
        *resp = NULL;
    if (u->status == GRPC_STATUS_OK && d) {
        ProtobufCMessage *m = pbgrpc_unpack(d, u->resp);
        if (m == NULL) {
            res->code = GRPC_STATUS_INTERNAL;
            snprintf(res->details, sizeof(res->details), "%s %s response",
                     u->resp ? "malformed" : "missing", d->short_name);
        } else if (resp) {
            *resp = m;
        } else {
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    unary_release(u);
}

/* A synchronous unary call with 'req' (ownership taken). */
static void invoke_sync(rpc_channel *ch, const char *method, grpc_byte_buffer *req,
                        const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                        ProtobufCMessage **resp, struct rpc_result *res)
{
    struct unary u;
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    if (resp)
        *resp = NULL;
    if (!unary_start(&u, ch, cq, method, req, timeout_ms, &u)) {
        unary_release(&u);
        result_set(res, GRPC_STATUS_INTERNAL, "cannot start the call");
        goto out;
    }
    grpc_completion_queue_pluck(cq, &u, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    unary_finish(&u, resp_desc, resp, res);
out:
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
}

static void local_invoke_sync(rpc_channel *ch, const char *method,
                              const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                              ProtobufCMessage **resp, struct rpc_result *res);

void rpc_invoke(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                ProtobufCMessage **resp, struct rpc_result *res)
{
    if (ch->local) {
        local_invoke_sync(ch, method, req, resp_desc, timeout_ms, resp, res);
        return;
    }
    invoke_sync(ch, method, pbgrpc_pack(req), resp_desc, timeout_ms, resp, res);
}

void rpc_invoke_raw(rpc_channel *ch, const char *method, const void *bytes, size_t len,
                    int64_t timeout_ms, struct rpc_result *res)
{
    if (ch->local) {
        result_set(res, GRPC_STATUS_UNIMPLEMENTED, "raw calls are not served in-process");
        return;
    }
    invoke_sync(ch, method, pbgrpc_raw(bytes, len), NULL, timeout_ms, NULL, res);
}

static void *channel_main(void *arg)
{
    thread_name("channel");
    rpc_channel *ch = arg;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(ch->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        struct async_call *a = ev.tag;
        /* unlink first: rpc_channel_close cancels the calls of the list */
        pthread_mutex_lock(&ch->mu);
        if (a->prev)
            a->prev->next = a->next;
        else
            ch->pending = a->next;
        if (a->next)
            a->next->prev = a->prev;
        pthread_mutex_unlock(&ch->mu);

        struct rpc_result res;
        ProtobufCMessage *resp = NULL;
        unary_finish(&a->u, a->resp_desc, &resp, &res);
        a->done(a->ud, &res, resp); /* resp now belongs to the callback */
        free(a);

        pthread_mutex_lock(&ch->mu);
        if (--ch->npending == 0) /* counted until the callback returned */
            pthread_cond_broadcast(&ch->idle_cv);
        pthread_mutex_unlock(&ch->mu);
    }
    return NULL;
}

static eddy_err local_invoke_async(rpc_channel *ch, const char *method,
                                   const ProtobufCMessage *req, bool lent,
                                   const ProtobufCMessageDescriptor *resp_desc,
                                   int64_t timeout_ms, rpc_done_fn *done, void *ud);

static eddy_err invoke_async(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                             bool lent, const ProtobufCMessageDescriptor *resp_desc,
                             int64_t timeout_ms, rpc_done_fn *done, void *ud);

eddy_err rpc_invoke_async(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                          rpc_done_fn *done, void *ud)
{
    return invoke_async(ch, method, req, false, resp_desc, timeout_ms, done, ud);
}

eddy_err rpc_invoke_async_lent(rpc_channel *ch, const char *method,
                               const ProtobufCMessage *req,
                               const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                               rpc_done_fn *done, void *ud)
{
    return invoke_async(ch, method, req, true, resp_desc, timeout_ms, done, ud);
}

static eddy_err invoke_async(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                             bool lent, const ProtobufCMessageDescriptor *resp_desc,
                             int64_t timeout_ms, rpc_done_fn *done, void *ud)
{
    if (ch->local)
        return local_invoke_async(ch, method, req, lent, resp_desc, timeout_ms, done, ud);
    eddy_err err = EDDY_ERR_NOMEM;
    struct async_call *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return err;
    a->resp_desc = resp_desc;
    a->done = done;
    a->ud = ud;

    /* Held across the start so rpc_channel_close either refuses us or sees the call. */
    pthread_mutex_lock(&ch->mu);
    if (ch->closing) {
        err = EDDY_ERR_UNAVAILABLE;
        goto fail;
    }
    if (!unary_start(&a->u, ch, ch->cq, method, pbgrpc_pack(req), timeout_ms, a)) {
        unary_release(&a->u);
        err = EDDY_ERR_UNAVAILABLE;
        goto fail;
    }
    a->next = ch->pending;
    if (ch->pending)
        ch->pending->prev = a;
    ch->pending = a;
    ch->npending++;
    pthread_mutex_unlock(&ch->mu);
    return EDDY_OK;

fail:
    pthread_mutex_unlock(&ch->mu);
    free(a);
    return err;
}

/* Start 'n' ops and wait for them on the pluck CQ; returns the event's success. */
static bool stream_batch(grpc_call *call, grpc_completion_queue *cq, const grpc_op *ops,
                         size_t n, void *tag)
{
    if (grpc_call_start_batch(call, ops, n, tag, NULL) != GRPC_CALL_OK)
        return false;
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                NULL);
    return ev.success != 0;
}

void rpc_invoke_stream(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                       rpc_stream_fn *on_msg, void *ud, struct rpc_result *res)
{
    if (ch->local) {
        result_set(res, GRPC_STATUS_UNIMPLEMENTED, "streaming calls are not served in-process");
        return;
    }
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_byte_buffer *reqbb = pbgrpc_pack(req);
    grpc_metadata_array imd, tmd;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    char local_err[128] = "";
    int tag_start, tag_msg, tag_status; /* distinct addresses as pluck tags */
    grpc_op ops[4];

    grpc_metadata_array_init(&imd);
    grpc_metadata_array_init(&tmd);
    grpc_slice path = grpc_slice_from_copied_string(method);
    grpc_call *call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path,
                                               NULL, pbgrpc_deadline(timeout_ms), NULL);
    grpc_slice_unref(path);
    if (call == NULL) {
        result_set(res, GRPC_STATUS_INTERNAL, "cannot create the call");
        goto out;
    }

    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = ch->md_flags;
    ops[0].data.send_initial_metadata.count = ch->n_md;
    ops[0].data.send_initial_metadata.metadata = ch->n_md ? &ch->auth_md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = reqbb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &imd;
    stream_batch(call, cq, ops, 4, &tag_start); /* on failure the reads below end at once */

    for (;;) { /* one RECV_MESSAGE at a time, until the end of the stream */
        grpc_byte_buffer *bb = NULL;
        memset(ops, 0, sizeof(ops));
        ops[0].op = GRPC_OP_RECV_MESSAGE;
        ops[0].data.recv_message.recv_message = &bb;
        if (!stream_batch(call, cq, ops, 1, &tag_msg) || bb == NULL) {
            if (bb)
                grpc_byte_buffer_destroy(bb);
            break;
        }
        ProtobufCMessage *m = pbgrpc_unpack(resp_desc, bb);
        grpc_byte_buffer_destroy(bb);
        if (m == NULL) {
            snprintf(local_err, sizeof(local_err), "malformed %s message in stream",
                     resp_desc->short_name);
            grpc_call_cancel(call, NULL);
            break;
        }
        int stop = on_msg(ud, m);
        protobuf_c_message_free_unpacked(m, NULL);
        if (stop) {
            grpc_call_cancel(call, NULL); /* the status below is then CANCELLED */
            break;
        }
    }

    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &tmd;
    ops[0].data.recv_status_on_client.status = &status;
    ops[0].data.recv_status_on_client.status_details = &details;
    if (!stream_batch(call, cq, ops, 1, &tag_status)) {
        result_set(res, GRPC_STATUS_INTERNAL, "cannot receive the status");
    } else if (local_err[0]) {
        result_set(res, GRPC_STATUS_INTERNAL, local_err);
    } else {
        res->code = status;
        res->retry_after_ms = retry_after_ms(&tmd);
        pbgrpc_slice_str(details, res->details, sizeof(res->details));
    }

out:
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&imd);
    grpc_metadata_array_destroy(&tmd); /* its elements belong to the call: before unref */
    if (call)
        grpc_call_unref(call);
    grpc_byte_buffer_destroy(reqbb);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
}

static void channel_md_release(rpc_channel *ch)
{
    if (ch->n_md) {
        grpc_slice_unref(ch->auth_md.key);
        grpc_slice_unref(ch->auth_md.value);
        ch->n_md = 0;
    }
}

rpc_channel *rpc_channel_open(const char *target, const struct rpc_channel_opts *opts)
{
    rpc_channel *ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
        return NULL;
    int64_t max_recv = opts && opts->max_recv_bytes > 0 ? opts->max_recv_bytes
                                                        : DEFAULT_MAX_MSG;
    int64_t max_send = opts && opts->max_send_bytes > 0 ? opts->max_send_bytes
                                                        : DEFAULT_MAX_MSG;
    ch->md_flags = opts && opts->wait_for_ready ? GRPC_INITIAL_METADATA_WAIT_FOR_READY : 0;
    grpc_init();
    if (opts && opts->token && *opts->token) {
        size_t n = strlen(opts->token);
        char *v = malloc(n + 8);
        if (v == NULL) {
            free(ch);
            grpc_shutdown();
            return NULL;
        }
        memcpy(v, "Bearer ", 7);
        memcpy(v + 7, opts->token, n + 1);
        ch->auth_md.key = grpc_slice_from_static_string("authorization");
        ch->auth_md.value = grpc_slice_from_copied_buffer(v, n + 7);
        ch->n_md = 1;
        free(v);
    }

    grpc_arg args[3];
    size_t nargs = 2;
    memset(args, 0, sizeof(args));
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = max_recv > INT_MAX ? INT_MAX : (int)max_recv;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = max_send > INT_MAX ? INT_MAX : (int)max_send;
    grpc_channel_credentials *creds = NULL;
    if (opts && tls_channel_enabled(opts->tls)) {
        char why[512];
        if (!(creds = tls_channel_credentials(opts->tls, why, sizeof(why)))) {
            log_error("msg=\"bad TLS configuration\" target=%s error=\"%s\"", target, why);
            channel_md_release(ch);
            free(ch);
            grpc_shutdown();
            return NULL;
        }
        if (opts->tls->server_name && *opts->tls->server_name) {
            args[nargs].type = GRPC_ARG_STRING;
            args[nargs].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
            args[nargs++].value.string = (char *)opts->tls->server_name;
        }
    } else {
        creds = grpc_insecure_credentials_create();
    }
    grpc_channel_args cargs = {nargs, args};
    ch->ch = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    ch->cq = grpc_completion_queue_create_for_next(NULL);
    pthread_mutex_init(&ch->mu, NULL);
    pthread_cond_init(&ch->idle_cv, NULL);
    if (pthread_create(&ch->thread, NULL, channel_main, ch) != 0) {
        grpc_channel_destroy(ch->ch);
        grpc_completion_queue_shutdown(ch->cq);
        grpc_completion_queue_destroy(ch->cq);
        pthread_cond_destroy(&ch->idle_cv);
        pthread_mutex_destroy(&ch->mu);
        channel_md_release(ch);
        free(ch);
        grpc_shutdown();
        return NULL;
    }
    return ch;
}

/* ---- local channels ------------------------------------------------------------------ */

rpc_channel *rpc_channel_open_local(rpc_local_fn *fn, void *ud)
{
    rpc_channel *ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
        return NULL;
    ch->local = fn;
    ch->local_ud = ud;
    pthread_mutex_init(&ch->mu, NULL);
    pthread_cond_init(&ch->idle_cv, NULL);
    return ch;
}

/* An async call of a local channel, counted in ch->npending until its callback returned. */
struct local_async {
    rpc_channel *ch;
    rpc_done_fn *done;
    void *ud;
};

static void local_uncount(rpc_channel *ch)
{
    pthread_mutex_lock(&ch->mu);
    if (--ch->npending == 0)
        pthread_cond_broadcast(&ch->idle_cv);
    pthread_mutex_unlock(&ch->mu);
}

static void local_async_done(void *arg, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct local_async *la = arg;
    rpc_channel *ch = la->ch;
    la->done(la->ud, res, resp);
    free(la);
    local_uncount(ch);
}

static eddy_err local_invoke_async(rpc_channel *ch, const char *method,
                                   const ProtobufCMessage *req, bool lent,
                                   const ProtobufCMessageDescriptor *resp_desc,
                                   int64_t timeout_ms, rpc_done_fn *done, void *ud)
{
    struct local_async *la = malloc(sizeof(*la));
    if (la == NULL)
        return EDDY_ERR_NOMEM;
    *la = (struct local_async){ch, done, ud};
    pthread_mutex_lock(&ch->mu);
    if (ch->closing) {
        pthread_mutex_unlock(&ch->mu);
        free(la);
        return EDDY_ERR_UNAVAILABLE;
    }
    ch->npending++;
    pthread_mutex_unlock(&ch->mu);
    eddy_err err = ch->local(ch->local_ud, method, req, lent, resp_desc, timeout_ms,
                             local_async_done, la);
    if (err != EDDY_OK) { /* 'done' will not run */
        free(la);
        local_uncount(ch);
    }
    return err;
}

/* A synchronous local call waits for its answer until the deadline, as a network call
 * would; an answer that comes later is dropped by whichever side lets go last. */
struct local_sync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs; /* the waiter and the call */
    bool answered;
    struct rpc_result res;
    ProtobufCMessage *resp;
};

static void local_sync_unref(struct local_sync *ls)
{
    pthread_mutex_lock(&ls->mu);
    bool last = --ls->refs == 0;
    pthread_mutex_unlock(&ls->mu);
    if (!last)
        return;
    if (ls->resp)
        protobuf_c_message_free_unpacked(ls->resp, NULL);
    pthread_cond_destroy(&ls->cv);
    pthread_mutex_destroy(&ls->mu);
    free(ls);
}

static void local_sync_done(void *arg, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct local_sync *ls = arg;
    pthread_mutex_lock(&ls->mu);
    ls->answered = true;
    ls->res = *res;
    ls->resp = resp;
    pthread_cond_signal(&ls->cv);
    pthread_mutex_unlock(&ls->mu);
    local_sync_unref(ls);
}

static void local_invoke_sync(rpc_channel *ch, const char *method,
                              const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
                              ProtobufCMessage **resp, struct rpc_result *res)
{
    if (resp)
        *resp = NULL;
    struct local_sync *ls = calloc(1, sizeof(*ls));
    if (ls == NULL) {
        result_set(res, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    pthread_mutex_init(&ls->mu, NULL);
    clock_cond_init(&ls->cv);
    ls->refs = 2;
    if (local_invoke_async(ch, method, req, false, resp_desc, timeout_ms, local_sync_done, ls) !=
        EDDY_OK) {
        ls->refs = 1;
        local_sync_unref(ls);
        result_set(res, GRPC_STATUS_UNAVAILABLE, "cannot start the call");
        return;
    }
    struct timespec until = clock_mono_after(timeout_ms);
    pthread_mutex_lock(&ls->mu);
    while (!ls->answered) {
        if (timeout_ms <= 0)
            pthread_cond_wait(&ls->cv, &ls->mu);
        else if (pthread_cond_timedwait(&ls->cv, &ls->mu, &until) != 0)
            break;
    }
    if (ls->answered) {
        *res = ls->res;
        if (resp) {
            *resp = ls->resp;
            ls->resp = NULL;
        }
    } else {
        result_set(res, GRPC_STATUS_DEADLINE_EXCEEDED, "Deadline Exceeded");
    }
    pthread_mutex_unlock(&ls->mu);
    local_sync_unref(ls);
}

void rpc_channel_close(rpc_channel *ch)
{
    if (ch == NULL)
        return;
    pthread_mutex_lock(&ch->mu);
    ch->closing = true;
    for (struct async_call *a = ch->pending; a; a = a->next)
        grpc_call_cancel(a->u.call, NULL); /* completes with CANCELLED on the CQ thread */
    while (ch->npending > 0)
        pthread_cond_wait(&ch->idle_cv, &ch->mu);
    pthread_mutex_unlock(&ch->mu);
    if (ch->local) { /* no gRPC objects; its calls answered (a late sync answer included) */
        pthread_cond_destroy(&ch->idle_cv);
        pthread_mutex_destroy(&ch->mu);
        free(ch);
        return;
    }

    grpc_channel_destroy(ch->ch);
    grpc_completion_queue_shutdown(ch->cq);
    pthread_join(ch->thread, NULL);
    grpc_completion_queue_destroy(ch->cq);
    pthread_cond_destroy(&ch->idle_cv);
    pthread_mutex_destroy(&ch->mu);
    channel_md_release(ch);
    free(ch);
    grpc_shutdown();
}
