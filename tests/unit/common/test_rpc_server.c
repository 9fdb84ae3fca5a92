/* rpc_server against a real in-process client on 127.0.0.1:0: unary answers, the errors
 * the server produces itself (unknown method, malformed, oversized, busy, deadline), replies
 * from other threads and after the client left, SO_REUSEPORT off, shutdown with calls
 * in flight, handler lanes (nested calls, per-lane limits, shutdown across lanes), and
 * bidirectional streams (one handler run per request, half-close, a malformed later
 * request, a client that goes away) driven by a core-API client of the test's own, and
 * in-process calls through a local channel (answers, deadlines, close, local-only methods),
 * and inline methods (approved calls on the CQ thread, not held up by busy handlers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "common/clock.h"
#include "common/pbgrpc.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "eddy/v1/eddy.pb-c.h"

#define ECHO "/test.T/Echo"
#define PARK "/test.T/Park"
#define BLOCK "/test.T/Block"
#define LATER "/test.T/Later"
#define NEST "/test.T/Nest"       /* lane 0: calls the method named by user_id */
#define ECHO1 "/test.T/Echo1"     /* lane 1 */
#define BLOCK1 "/test.T/Block1"   /* lane 1 */
#define BLOCK2 "/test.T/Block2"   /* lane 2 */
#define BIDI "/test.T/Chat"       /* bidirectional: echoes each request */
#define QUICK "/test.T/Quick"     /* inline for user ids starting "now" (read_now) */
#define NEST_INNER_MS 1000        /* deadline of the nested call */
#define MAX_PARKED 16

/* State shared by the test thread and the server's handler threads. */
struct fixture {
    rpc_server *s;
    rpc_channel *ch;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int handled;               /* handler invocations */
    rpc_call *parked[MAX_PARKED]; /* calls a handler kept without answering */
    int nparked;
    bool release;              /* BLOCK handlers may return */
    int async_done;
    struct rpc_result async_res[16];
    char last_method[64];
    int64_t last_remaining;
    int bidi_ends;             /* bidi handler runs with no request (client half-closed) */
    int bidi_cancels;          /* bidi on_cancel runs */
    int bidi_running;          /* bidi handlers running now (never above 1 per call) */
    int bidi_overlaps;         /* times a bidi handler started while one was running */
    char quick_thread[16];     /* the name of the thread the last QUICK handler ran on */
    const ProtobufCMessage *last_req; /* the request the last ECHO handler read */
    int done_at_return;        /* async_done as the last ECHO handler returned */
    int inline_asked;          /* read_now calls */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until *counter >= n (under f->mu), at most timeout_ms; true if reached. */
static bool wait_count(struct fixture *f, const int *counter, int n, int64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&f->mu);
    while (*counter < n)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &until) != 0)
            break;
    bool ok = *counter >= n;
    pthread_mutex_unlock(&f->mu);
    return ok;
}

/* *counter read under f->mu (handler threads write it). */
static int locked_int(struct fixture *f, const int *counter)
{
    pthread_mutex_lock(&f->mu);
    int v = *counter;
    pthread_mutex_unlock(&f->mu);
    return v;
}

static void bump(struct fixture *f, int *counter)
{
    pthread_mutex_lock(&f->mu);
    (*counter)++;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* The answer to GetUserProfileRequest{user_id}: profile.user_id = "echo:" + user_id,
 * profile.event_count = strlen(user_id). */
static void reply_echo(rpc_call *call, const Eddy__V1__GetUserProfileRequest *rq)
{
    char id[256];
    snprintf(id, sizeof(id), "echo:%s", rq->user_id);
    Eddy__V1__UserProfile p = EDDY__V1__USER_PROFILE__INIT;
    p.user_id = id;
    p.event_count = strlen(rq->user_id);
    Eddy__V1__GetUserProfileResponse resp = EDDY__V1__GET_USER_PROFILE_RESPONSE__INIT;
    resp.profile = &p;
    rpc_reply(call, &resp.base);
}

static void on_echo(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    const Eddy__V1__GetUserProfileRequest *rq = (const Eddy__V1__GetUserProfileRequest *)req;
    pthread_mutex_lock(&f->mu);
    snprintf(f->last_method, sizeof(f->last_method), "%s", rpc_call_method(call));
    f->last_remaining = rpc_call_remaining_ms(call);
    pthread_mutex_unlock(&f->mu);
    bump(f, &f->handled); /* before the reply, so the client sees it counted */
    if (strcmp(rq->user_id, "fail") == 0)
        rpc_reply_error(call, GRPC_STATUS_FAILED_PRECONDITION, "asked to fail: %d", 42);
    else
        reply_echo(call, rq);
    pthread_mutex_lock(&f->mu);
    f->last_req = req;
    f->done_at_return = f->async_done;
    pthread_mutex_unlock(&f->mu);
}

/* Keeps the call; the test answers it later. */
static void on_park(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    pthread_mutex_lock(&f->mu);
    assert_true(f->nparked < MAX_PARKED);
    f->parked[f->nparked++] = call;
    f->handled++;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Blocks its handler thread until f->release, then answers. */
static void on_block(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    pthread_mutex_lock(&f->mu);
    f->handled++;
    pthread_cond_broadcast(&f->cv);
    while (!f->release)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    reply_echo(call, (const Eddy__V1__GetUserProfileRequest *)req);
}

struct later {
    rpc_call *call;
    Eddy__V1__GetUserProfileRequest *rq;
};

static void *later_main(void *arg)
{
    struct later *l = arg;
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
    reply_echo(l->call, l->rq);
    protobuf_c_message_free_unpacked(&l->rq->base, NULL);
    free(l);
    return NULL;
}

/* Answers from a thread of its own (an application thread, not a handler thread). The
 * request is only valid until the reply, so the thread gets its own copy. */
static void on_later(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    const Eddy__V1__GetUserProfileRequest *rq = (const Eddy__V1__GetUserProfileRequest *)req;
    struct later *l = calloc(1, sizeof(*l));
    assert_non_null(l);
    uint8_t buf[512];
    size_t n = protobuf_c_message_pack(req, buf);
    l->call = call;
    l->rq = eddy__v1__get_user_profile_request__unpack(NULL, n, buf);
    assert_non_null(l->rq);
    assert_string_equal(l->rq->user_id, rq->user_id);
    bump(f, &f->handled);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, later_main, l), 0);
    pthread_detach(t);
}

/* Lane 0 handler making a blocking call to this same server, method req->user_id, through
 * the real client, and answering with the echo of the inner answer's user_id (or the
 * inner error). Only returns once the inner call was handled (or timed out). */
static void on_nest(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    const Eddy__V1__GetUserProfileRequest *rq = (const Eddy__V1__GetUserProfileRequest *)req;
    bump(f, &f->handled);
    Eddy__V1__GetUserProfileRequest inner = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    inner.user_id = "inner";
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_invoke(f->ch, rq->user_id, &inner.base, &eddy__v1__get_user_profile_response__descriptor,
               NEST_INNER_MS, &resp, &res);
    if (res.code != GRPC_STATUS_OK) {
        rpc_reply_error(call, res.code, "inner: %s", res.details);
        return;
    }
    Eddy__V1__GetUserProfileResponse *r = (Eddy__V1__GetUserProfileResponse *)resp;
    Eddy__V1__GetUserProfileRequest outer = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    outer.user_id = r->profile ? r->profile->user_id : "";
    reply_echo(call, &outer);
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* Bidi: answers each request with its echo; "finish" ends the stream from the handler;
 * the end of the requests ends it OK. */
static void on_bidi(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    pthread_mutex_lock(&f->mu);
    if (f->bidi_running++)
        f->bidi_overlaps++;
    pthread_mutex_unlock(&f->mu);
    const Eddy__V1__GetUserProfileRequest *rq = (const Eddy__V1__GetUserProfileRequest *)req;
    if (rq == NULL) {
        bump(f, &f->bidi_ends);
        rpc_stream_finish(call, GRPC_STATUS_OK, NULL);
    } else if (strcmp(rq->user_id, "finish") == 0) {
        rpc_stream_finish(call, GRPC_STATUS_FAILED_PRECONDITION, "asked to finish");
    } else {
        char id[256];
        snprintf(id, sizeof(id), "echo:%s", rq->user_id);
        Eddy__V1__UserProfile p = EDDY__V1__USER_PROFILE__INIT;
        p.user_id = id;
        Eddy__V1__GetUserProfileResponse resp = EDDY__V1__GET_USER_PROFILE_RESPONSE__INIT;
        resp.profile = &p;
        assert_int_equal(rpc_stream_send(call, &resp.base), EDDY_OK);
    }
    pthread_mutex_lock(&f->mu);
    f->bidi_running--;
    pthread_mutex_unlock(&f->mu);
    bump(f, &f->handled);
}

/* QUICK's rpc_inline_fn: the user ids that start with "now" may run on the CQ thread. */
static bool read_now(void *ud, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    bump(f, &f->inline_asked);
    return strncmp(((const Eddy__V1__GetUserProfileRequest *)req)->user_id, "now", 3) == 0;
}

/* QUICK: notes the thread it runs on, then echoes. */
static void on_quick(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    char name[16] = "";
    pthread_getname_np(pthread_self(), name, sizeof(name));
    pthread_mutex_lock(&f->mu);
    snprintf(f->quick_thread, sizeof(f->quick_thread), "%s", name);
    pthread_mutex_unlock(&f->mu);
    on_echo(ud, call, req);
}

static void on_bidi_cancel(void *ud, rpc_call *call)
{
    struct fixture *f = ud;
    rpc_stream_finish(call, GRPC_STATUS_CANCELLED, NULL); /* a no-op on the wire */
    bump(f, &f->bidi_cancels);
}

static struct fixture *fixture_new(const struct rpc_server_opts *o)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    struct rpc_server_opts opts = {.listen = "127.0.0.1:0"};
    if (o)
        opts = *o;
    f->s = rpc_server_new(&opts);
    assert_non_null(f->s);
    const ProtobufCMessageDescriptor *d = &eddy__v1__get_user_profile_request__descriptor;
    assert_int_equal(rpc_server_add_unary(f->s, ECHO, d, on_echo, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(f->s, PARK, d, on_park, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(f->s, BLOCK, d, on_block, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(f->s, LATER, d, on_later, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(f->s, NEST, d, on_nest, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary_lane(f->s, ECHO1, d, on_echo, f, 1), EDDY_OK);
    assert_int_equal(rpc_server_add_unary_lane(f->s, BLOCK1, d, on_block, f, 1), EDDY_OK);
    assert_int_equal(rpc_server_add_unary_lane(f->s, BLOCK2, d, on_block, f, 2), EDDY_OK);
    assert_int_equal(rpc_server_add_bidi(f->s, BIDI, d, on_bidi, on_bidi_cancel, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(f->s, QUICK, d, on_quick, f), EDDY_OK);
    assert_int_equal(rpc_server_set_inline(f->s, QUICK, read_now), EDDY_OK);
    assert_int_equal(rpc_server_set_inline(f->s, BIDI, read_now), EDDY_ERR_INVALID);
    assert_int_equal(rpc_server_set_inline(f->s, "/test.T/None", read_now), EDDY_ERR_INVALID);
    assert_int_equal(rpc_server_add_unary(f->s, ECHO, d, on_echo, f), EDDY_ERR_INVALID);
    assert_int_equal(rpc_server_add_unary_lane(f->s, "/test.T/Bad", d, on_echo, f, -1),
                     EDDY_ERR_INVALID);
    assert_int_equal(
        rpc_server_add_unary_lane(f->s, "/test.T/Bad", d, on_echo, f, RPC_MAX_LANES),
        EDDY_ERR_INVALID);
    assert_int_equal(rpc_server_start(f->s, &f->port), EDDY_OK);
    assert_true(f->port > 0);
    assert_int_equal(rpc_server_add_unary(f->s, "/test.T/Late", d, on_echo, f),
                     EDDY_ERR_INVALID);
    assert_int_equal(rpc_server_set_inline(f->s, ECHO, read_now), EDDY_ERR_INVALID);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", f->port);
    f->ch = rpc_channel_open(target, NULL);
    assert_non_null(f->ch);
    return f;
}

static void fixture_free(struct fixture *f)
{
    rpc_channel_close(f->ch);
    rpc_server_free(f->s);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static int setup(void **state)
{
    *state = fixture_new(NULL);
    return 0;
}

static int teardown(void **state)
{
    fixture_free(*state);
    return 0;
}

/* A synchronous echo call; returns the decoded response (or NULL) and fills res. */
static Eddy__V1__GetUserProfileResponse *call_echo(struct fixture *f, const char *method,
                                                   const char *user, int64_t timeout_ms,
                                                   struct rpc_result *res)
{
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = (char *)user;
    ProtobufCMessage *resp = (ProtobufCMessage *)0x1; /* must be overwritten */
    rpc_invoke(f->ch, method, &rq.base, &eddy__v1__get_user_profile_response__descriptor,
               timeout_ms, &resp, res);
    return (Eddy__V1__GetUserProfileResponse *)resp;
}

static void assert_echo(Eddy__V1__GetUserProfileResponse *resp, const char *user)
{
    char want[256];
    snprintf(want, sizeof(want), "echo:%s", user);
    assert_non_null(resp);
    assert_non_null(resp->profile);
    assert_string_equal(resp->profile->user_id, want);
    assert_int_equal(resp->profile->event_count, strlen(user));
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* A call stops counting as in flight when its status has been delivered, which happens
 * just after the client has its answer: wait for it, with a deadline. */
static bool inflight_drains(rpc_server *s)
{
    for (int i = 0; i < 200 && rpc_server_inflight(s) != 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return rpc_server_inflight(s) == 0;
}

static void test_unary_round_trip(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO, "alice", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_string_equal(res.details, "");
    assert_echo(resp, "alice");
    resp = call_echo(f, ECHO, "bob-the-second", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "bob-the-second");
    assert_int_equal(f->handled, 2);
    assert_string_equal(f->last_method, ECHO);
    /* the grpc-timeout header is rounded up, so allow a little over the client's 5 s */
    assert_true(f->last_remaining > 4000 && f->last_remaining <= 5100);
    assert_true(inflight_drains(f->s));
}

static void test_reply_error(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO, "fail", 5000, &res);
    assert_null(resp);
    assert_int_equal(res.code, GRPC_STATUS_FAILED_PRECONDITION);
    assert_string_equal(res.details, "asked to fail: 42");
}

static void test_unknown_method(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    int64_t t0 = now_ms();
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, "/test.T/Nope", "x", 5000, &res);
    assert_null(resp);
    assert_int_equal(res.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_string_equal(res.details, "unknown method /test.T/Nope");
    assert_true(now_ms() - t0 < 2000); /* answered, not left to the deadline */
    assert_int_equal(f->handled, 0);
}

static void test_malformed_request(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    rpc_invoke_raw(f->ch, ECHO, "\xff\xff\xff", 3, 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_INVALID_ARGUMENT);
    assert_string_equal(res.details, "malformed GetUserProfileRequest message");
    assert_int_equal(f->handled, 0);
    /* the server is still fine */
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO, "after", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "after");
}

static void test_oversized_request(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .max_recv_bytes = 64};
    struct fixture *f = fixture_new(&o);
    char big[1000];
    memset(big, 'u', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO, big, 5000, &res);
    assert_null(resp);
    assert_int_equal(res.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    resp = call_echo(f, ECHO, "small", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "small");
    assert_int_equal(f->handled, 1);
    fixture_free(f);
}

static void test_deadline_then_late_reply(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    int64_t t0 = now_ms();
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, PARK, "slow", 200, &res);
    int64_t took = now_ms() - t0;
    assert_null(resp);
    assert_int_equal(res.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_true(took >= 150 && took < 3000);
    assert_true(wait_count(f, &f->nparked, 1, 2000));
    /* the server notices the deadline too: the call no longer counts as in flight */
    assert_true(inflight_drains(f->s));
    /* the client's cancel may reach the server a little before the server's own deadline
     * (grpc-timeout is rounded up), so only check that the deadline is (nearly) over */
    assert_true(rpc_call_remaining_ms(f->parked[0]) < 100);
    /* answering now only frees the call */
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = "slow";
    reply_echo(f->parked[0], &rq);
    resp = call_echo(f, ECHO, "next", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "next");
}

static void test_reply_after_client_cancel(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    /* the client gives up (its deadline), then the app answers with an error */
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, PARK, "gone", 100, &res);
    assert_null(resp);
    assert_int_equal(res.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_true(wait_count(f, &f->nparked, 1, 2000));
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
    rpc_reply_error(f->parked[0], GRPC_STATUS_INTERNAL, "too late %s", "anyway");
    resp = call_echo(f, ECHO, "still-up", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "still-up");
}

static void test_reply_from_other_thread(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    for (int i = 0; i < 5; i++) {
        char user[32];
        snprintf(user, sizeof(user), "thread-%d", i);
        Eddy__V1__GetUserProfileResponse *resp = call_echo(f, LATER, user, 5000, &res);
        assert_int_equal(res.code, GRPC_STATUS_OK);
        assert_echo(resp, user);
    }
    assert_int_equal(f->handled, 5);
}

static void test_second_server_same_port(void **state)
{
    struct fixture *f = *state;
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", f->port);
    struct rpc_server_opts o = {.listen = addr};
    rpc_server *s2 = rpc_server_new(&o);
    assert_non_null(s2);
    assert_int_equal(rpc_server_add_unary(s2, ECHO,
                                          &eddy__v1__get_user_profile_request__descriptor,
                                          on_echo, f),
                     EDDY_OK);
    int port = -1;
    assert_int_equal(rpc_server_start(s2, &port), EDDY_ERR_NET);
    assert_int_equal(port, -1);
    rpc_server_free(s2);
    /* every call still reaches the first server */
    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO, "first", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "first");
}

static void on_async(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct fixture *f = ud;
    pthread_mutex_lock(&f->mu);
    f->async_res[f->async_done++] = *res;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
}

static eddy_err start_async(struct fixture *f, const char *method, const char *user,
                            int64_t timeout_ms)
{
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = (char *)user;
    return rpc_invoke_async(f->ch, method, &rq.base,
                            &eddy__v1__get_user_profile_response__descriptor, timeout_ms,
                            on_async, f);
}

static void release_blocked(struct fixture *f)
{
    pthread_mutex_lock(&f->mu);
    f->release = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void test_server_busy(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .handler_threads = 1,
                                .max_queued_calls = 1};
    struct fixture *f = fixture_new(&o);
    assert_int_equal(start_async(f, BLOCK, "one", 5000), EDDY_OK);
    assert_true(wait_count(f, &f->handled, 1, 3000)); /* the only handler thread is busy */
    assert_int_equal(start_async(f, BLOCK, "two", 5000), EDDY_OK);   /* queued */
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
    assert_int_equal(start_async(f, BLOCK, "three", 5000), EDDY_OK); /* no room */
    assert_true(wait_count(f, &f->async_done, 1, 3000));
    assert_int_equal(f->async_res[0].code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(f->async_res[0].details, "server busy: 1 calls queued");
    release_blocked(f);
    assert_true(wait_count(f, &f->async_done, 3, 3000));
    assert_int_equal(f->async_res[1].code, GRPC_STATUS_OK);
    assert_int_equal(f->async_res[2].code, GRPC_STATUS_OK);
    assert_int_equal(f->handled, 2);
    fixture_free(f);
}

static void test_deadline_passed_in_queue(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .handler_threads = 1};
    struct fixture *f = fixture_new(&o);
    assert_int_equal(start_async(f, BLOCK, "first", 5000), EDDY_OK);
    assert_true(wait_count(f, &f->handled, 1, 3000));
    assert_int_equal(start_async(f, BLOCK, "short", 100), EDDY_OK); /* waits in the queue */
    assert_true(wait_count(f, &f->async_done, 1, 3000));
    assert_int_equal(f->async_res[0].code, GRPC_STATUS_DEADLINE_EXCEEDED);
    /* the server, too, has seen it end (its own deadline runs from when the call reached
     * it, a little after the client's; on a loaded machine the handler could otherwise be
     * free before): only "first" is in flight */
    int64_t until = clock_mono_ms() + 3000;
    while (rpc_server_inflight(f->s) > 1 && clock_mono_ms() < until) {
        struct timespec ms = {0, 1000000L};
        nanosleep(&ms, NULL);
    }
    assert_int_equal(rpc_server_inflight(f->s), 1);
    release_blocked(f);
    assert_true(wait_count(f, &f->async_done, 2, 3000));
    assert_int_equal(f->async_res[1].code, GRPC_STATUS_OK);
    /* the expired call never reached the handler */
    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO, "z", 5000, &res);
    assert_echo(resp, "z");
    assert_int_equal(f->handled, 2); /* "first" and "z" */
    fixture_free(f);
}

static void test_shutdown_with_call_in_flight(void **state)
{
    struct fixture *f = fixture_new(NULL);
    assert_int_equal(start_async(f, PARK, "held", 30000), EDDY_OK);
    assert_int_equal(start_async(f, PARK, "held2", 30000), EDDY_OK);
    assert_true(wait_count(f, &f->nparked, 2, 3000));
    assert_int_equal(rpc_server_inflight(f->s), 2);
    /* one is answered during the grace period, the other never */
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = "held";
    reply_echo(f->parked[0], &rq);
    int64_t t0 = now_ms();
    rpc_server_shutdown(f->s, 200);
    int64_t took = now_ms() - t0;
    assert_true(took >= 150 && took < 3000);
    assert_int_equal(rpc_server_inflight(f->s), 0);
    assert_true(wait_count(f, &f->async_done, 2, 3000));
    int ok = 0, failed = 0;
    for (int i = 0; i < 2; i++) {
        if (f->async_res[i].code == GRPC_STATUS_OK)
            ok++;
        else if (f->async_res[i].code == GRPC_STATUS_UNAVAILABLE ||
                 f->async_res[i].code == GRPC_STATUS_CANCELLED)
            failed++;
    }
    assert_int_equal(ok, 1);
    assert_int_equal(failed, 1);
    /* the application answers after shutdown: only memory is freed */
    rq.user_id = "held2";
    reply_echo(f->parked[1], &rq);
    rpc_server_shutdown(f->s, 0); /* a second call does nothing */
    fixture_free(f);
}

static void test_shutdown_idle_is_fast(void **state)
{
    struct fixture *f = fixture_new(NULL);
    int64_t t0 = now_ms();
    rpc_server_shutdown(f->s, 5000); /* nothing in flight: no waiting for the grace */
    assert_true(now_ms() - t0 < 1000);
    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO, "x", 1000, &res);
    assert_null(resp);
    assert_int_equal(res.code, GRPC_STATUS_UNAVAILABLE);
    fixture_free(f);
}

/* One handler thread per lane: a lane 0 handler blocks on a call to a lane 1 method of the
 * same server, which its own lane's thread serves. */
static void test_nested_call_other_lane(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .lane_threads = {1, 1, 1}};
    struct fixture *f = fixture_new(&o);
    struct rpc_result res;
    int64_t t0 = now_ms();
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, NEST, ECHO1, 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_true(now_ms() - t0 < NEST_INNER_MS); /* the inner call did not wait it out */
    assert_echo(resp, "echo:inner");
    assert_int_equal(locked_int(f, &f->handled), 2); /* NEST and ECHO1 */
    pthread_mutex_lock(&f->mu);
    assert_string_equal(f->last_method, ECHO1);
    pthread_mutex_unlock(&f->mu);
    fixture_free(f);
}

/* The control: the same nesting inside one lane with one thread deadlocks until the inner
 * deadline (what lanes prevent). */
static void test_nested_call_same_lane_waits(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .lane_threads = {1, 1, 1}};
    struct fixture *f = fixture_new(&o);
    struct rpc_result res;
    int64_t t0 = now_ms();
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, NEST, ECHO, 5000, &res);
    int64_t took = now_ms() - t0;
    assert_null(resp);
    assert_int_equal(res.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_true(took >= NEST_INNER_MS - 100 && took < 4000);
    /* (the expired inner ECHO may still reach the handler once the thread is free, if the
     * client's cancel has not arrived yet: only lane 0 being usable again is checked) */
    /* lane 0 is free again */
    resp = call_echo(f, ECHO, "after", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "after");
    fixture_free(f);
}

/* Each lane has its own queue limit: a full lane 0 refuses calls while lane 1 still serves,
 * and lane 1 refuses at its own limit. */
static void test_server_busy_per_lane(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .lane_threads = {1, 1, 1},
                                .max_queued_calls = 1, .lane_max_queued = {0, 2}};
    struct fixture *f = fixture_new(&o);
    assert_int_equal(start_async(f, BLOCK, "l0-run", 5000), EDDY_OK);
    assert_true(wait_count(f, &f->handled, 1, 3000)); /* lane 0's only thread is busy */
    assert_int_equal(start_async(f, BLOCK, "l0-queued", 5000), EDDY_OK);
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
    assert_int_equal(start_async(f, BLOCK, "l0-refused", 5000), EDDY_OK);
    assert_true(wait_count(f, &f->async_done, 1, 3000));
    assert_int_equal(f->async_res[0].code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(f->async_res[0].details, "server busy: 1 calls queued");

    /* lane 1 is untouched by lane 0's backlog */
    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, ECHO1, "lane1", 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_echo(resp, "lane1");
    assert_int_equal(locked_int(f, &f->handled), 2);

    assert_int_equal(start_async(f, BLOCK1, "l1-run", 5000), EDDY_OK);
    assert_true(wait_count(f, &f->handled, 3, 3000)); /* lane 1's only thread is busy */
    assert_int_equal(start_async(f, BLOCK1, "l1-queued-a", 5000), EDDY_OK);
    assert_int_equal(start_async(f, BLOCK1, "l1-queued-b", 5000), EDDY_OK);
    nanosleep(&ts, NULL);
    assert_int_equal(locked_int(f, &f->async_done), 1); /* two fit in lane 1's queue */
    assert_int_equal(start_async(f, BLOCK1, "l1-refused", 5000), EDDY_OK);
    assert_true(wait_count(f, &f->async_done, 2, 3000));
    assert_int_equal(f->async_res[1].code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(f->async_res[1].details, "server busy: 2 calls queued");

    release_blocked(f);
    assert_true(wait_count(f, &f->async_done, 7, 3000));
    for (int i = 2; i < 7; i++)
        assert_int_equal(f->async_res[i].code, GRPC_STATUS_OK);
    assert_int_equal(locked_int(f, &f->handled), 6); /* ECHO1 + 2 BLOCK + 3 BLOCK1 */
    fixture_free(f);
}

/* Releases the blocked handlers once every call has closed (so queued calls are dropped,
 * not run): shutdown joins the handler threads, which needs them to return. */
static void *release_when_closed(void *arg)
{
    struct fixture *f = arg;
    for (int i = 0; i < 1000 && rpc_server_inflight(f->s) != 0; i++) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    release_blocked(f);
    return NULL;
}

static void test_shutdown_with_queued_lanes(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .lane_threads = {1, 1, 1}};
    struct fixture *f = fixture_new(&o);
    const char *methods[] = {BLOCK, BLOCK1, BLOCK2};
    for (int i = 0; i < 3; i++)
        assert_int_equal(start_async(f, methods[i], "run", 30000), EDDY_OK);
    assert_true(wait_count(f, &f->handled, 3, 3000)); /* every lane's thread is busy */
    for (int i = 0; i < 3; i++)
        assert_int_equal(start_async(f, methods[i], "queued", 30000), EDDY_OK);
    for (int i = 0; i < 300 && rpc_server_inflight(f->s) != 6; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(rpc_server_inflight(f->s), 6);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_when_closed, f), 0);
    int64_t t0 = now_ms();
    rpc_server_shutdown(f->s, 100);
    assert_true(now_ms() - t0 < 5000);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(rpc_server_inflight(f->s), 0);
    assert_true(wait_count(f, &f->async_done, 6, 3000));
    for (int i = 0; i < 6; i++)
        assert_true(f->async_res[i].code == GRPC_STATUS_UNAVAILABLE ||
                    f->async_res[i].code == GRPC_STATUS_CANCELLED);
    /* the queued calls were dropped, never handled */
    assert_int_equal(locked_int(f, &f->handled), 3);
    fixture_free(f);
}

/* ---- in-process calls (rpc_channel_open_local + rpc_server_invoke_local) -------------- */

static Eddy__V1__GetUserProfileResponse *call_local(rpc_channel *ch, const char *method,
                                                    const char *user, int64_t timeout_ms,
                                                    struct rpc_result *res)
{
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = (char *)user;
    ProtobufCMessage *resp = (ProtobufCMessage *)0x1; /* must be overwritten */
    rpc_invoke(ch, method, &rq.base, &eddy__v1__get_user_profile_response__descriptor,
               timeout_ms, &resp, res);
    return (Eddy__V1__GetUserProfileResponse *)resp;
}

static void test_local_calls_answer_as_over_the_network(void **state)
{
    struct fixture *f = *state;
    rpc_channel *lc = rpc_channel_open_local(rpc_server_invoke_local, f->s);
    assert_non_null(lc);
    struct rpc_result res;
    assert_echo(call_local(lc, ECHO, "alice", 5000, &res), "alice");
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_string_equal(f->last_method, ECHO);
    assert_true(f->last_remaining > 4000 && f->last_remaining <= 5000);
    assert_null(call_local(lc, ECHO, "fail", 5000, &res));
    assert_int_equal(res.code, GRPC_STATUS_FAILED_PRECONDITION);
    assert_string_equal(res.details, "asked to fail: 42");
    /* answered later from another thread */
    assert_echo(call_local(lc, LATER, "later", 5000, &res), "later");
    assert_int_equal(res.code, GRPC_STATUS_OK);
    /* the same handler on a higher lane: no queue, no thread of that lane */
    assert_echo(call_local(lc, ECHO1, "lane1", 5000, &res), "lane1");
    /* a request larger than pb_copy's stack buffer, copied through the heap: whole */
    static char big[6000];
    memset(big, 'b', sizeof(big) - 1);
    assert_echo(call_local(lc, ECHO, big, 5000, &res), big);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_int_equal(f->handled, 5);
    /* not a network call: nothing in flight, nothing in the server's own counts */
    assert_int_equal(rpc_server_inflight(f->s), 0);
    /* what is not served in-process */
    assert_null(call_local(lc, "/test.T/Nope", "x", 5000, &res));
    assert_int_equal(res.code, GRPC_STATUS_UNIMPLEMENTED);
    rpc_invoke_raw(lc, ECHO, "\x0a\x01x", 3, 5000, &res);
    assert_int_equal(res.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_int_equal(f->handled, 5);
    rpc_channel_close(lc);
}

static void test_local_deadline_then_late_reply(void **state)
{
    struct fixture *f = *state;
    rpc_channel *lc = rpc_channel_open_local(rpc_server_invoke_local, f->s);
    struct rpc_result res;
    int64_t t0 = now_ms();
    assert_null(call_local(lc, PARK, "slow", 150, &res));
    assert_int_equal(res.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_true(now_ms() - t0 >= 140);
    assert_int_equal(locked_int(f, &f->nparked), 1);
    assert_true(rpc_call_remaining_ms(f->parked[0]) <= 10);
    /* the late answer is dropped (and freed: LeakSanitizer in CI); the channel is fine */
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = "slow";
    reply_echo(f->parked[0], &rq);
    assert_echo(call_local(lc, ECHO, "next", 5000, &res), "next");
    rpc_channel_close(lc);
}

static void test_local_close_waits_for_async_calls(void **state)
{
    struct fixture *f = *state;
    rpc_channel *lc = rpc_channel_open_local(rpc_server_invoke_local, f->s);
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = "async";
    for (int i = 0; i < 3; i++)
        assert_int_equal(rpc_invoke_async(lc, LATER, &rq.base,
                                          &eddy__v1__get_user_profile_response__descriptor,
                                          5000, on_async, f),
                         EDDY_OK);
    rpc_channel_close(lc); /* the answers come 20 ms later, from other threads */
    assert_int_equal(locked_int(f, &f->async_done), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(f->async_res[i].code, GRPC_STATUS_OK);
}

/* A lent request: the handler reads the caller's own message, and the caller's 'done' runs
 * once the handler has returned, even when it answered first (the caller frees the request
 * in 'done', the handler may still read it until it returns). A copied one's 'done' runs
 * at the answer. */
static void test_local_lent_request(void **state)
{
    struct fixture *f = *state;
    rpc_channel *lc = rpc_channel_open_local(rpc_server_invoke_local, f->s);
    const ProtobufCMessageDescriptor *d = &eddy__v1__get_user_profile_response__descriptor;
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = "lent";
    assert_int_equal(rpc_invoke_async(lc, ECHO, &rq.base, d, 5000, on_async, f), EDDY_OK);
    assert_ptr_not_equal(f->last_req, &rq.base); /* a copy */
    assert_int_equal(f->done_at_return, 1);      /* answered inside rpc_reply */
    assert_int_equal(rpc_invoke_async_lent(lc, ECHO, &rq.base, d, 5000, on_async, f), EDDY_OK);
    assert_ptr_equal(f->last_req, &rq.base);     /* read in place */
    assert_int_equal(f->done_at_return, 1);      /* not yet as the handler returned... */
    assert_int_equal(locked_int(f, &f->async_done), 2); /* ...then at once */
    /* answered after the handler returned, from another thread */
    rq.user_id = "later";
    assert_int_equal(rpc_invoke_async_lent(lc, LATER, &rq.base, d, 5000, on_async, f),
                     EDDY_OK);
    assert_true(wait_count(f, &f->async_done, 3, 5000));
    for (int i = 0; i < 3; i++)
        assert_int_equal(f->async_res[i].code, GRPC_STATUS_OK);
    /* over the network the same call is packed before return, as rpc_invoke_async */
    rq.user_id = "net";
    assert_int_equal(rpc_invoke_async_lent(f->ch, ECHO, &rq.base, d, 5000, on_async, f),
                     EDDY_OK);
    assert_true(wait_count(f, &f->async_done, 4, 5000));
    assert_int_equal(f->async_res[3].code, GRPC_STATUS_OK);
    rpc_channel_close(lc);
}

static void test_local_only_methods_are_not_on_the_network(void **state)
{
    (void)state;
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .local_only_prefix = "/test.T/Echo"};
    struct fixture *f = fixture_new(&o);
    struct rpc_result res;
    assert_null(call_echo(f, ECHO, "remote", 5000, &res));
    assert_int_equal(res.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_null(call_echo(f, ECHO1, "remote", 5000, &res));
    assert_int_equal(res.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_echo(call_echo(f, LATER, "other", 5000, &res), "other"); /* not under the prefix */
    rpc_channel *lc = rpc_channel_open_local(rpc_server_invoke_local, f->s);
    assert_echo(call_local(lc, ECHO, "here", 5000, &res), "here");
    assert_int_equal(res.code, GRPC_STATUS_OK);
    rpc_channel_close(lc);
    fixture_free(f);
}

/* ---------------------------------------------------------------- bidi streams */

/* A bidi call on a core-API client: each step is one batch, waited for. */
struct chat {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata_array md, trailers;
    grpc_status_code code;
    grpc_slice details;
    bool asked_md; /* RECV_INITIAL_METADATA went with the first read */
};

static bool chat_batch(struct chat *c, const grpc_op *ops, size_t n)
{
    static int tag;
    assert_int_equal(grpc_call_start_batch(c->call, ops, n, &tag, NULL), GRPC_CALL_OK);
    grpc_event ev = grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    assert_int_equal(ev.type, GRPC_OP_COMPLETE);
    return ev.success != 0;
}

static void chat_open(struct chat *c, int port)
{
    memset(c, 0, sizeof(*c));
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    grpc_channel_credentials *cc = grpc_insecure_credentials_create();
    c->ch = grpc_channel_create(target, cc, NULL);
    grpc_channel_credentials_release(cc);
    c->cq = grpc_completion_queue_create_for_next(NULL);
    gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                   gpr_time_from_millis(10000, GPR_TIMESPAN));
    c->call = grpc_channel_create_call(c->ch, NULL, 0, c->cq,
                                       grpc_slice_from_static_string(BIDI), NULL, dl, NULL);
    grpc_metadata_array_init(&c->md);
    grpc_metadata_array_init(&c->trailers);
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    assert_true(chat_batch(c, &op, 1));
}

/* Send raw bytes as one request. */
static void chat_send_raw(struct chat *c, const void *data, size_t len)
{
    grpc_slice sl = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = bb;
    chat_batch(c, &op, 1);
    grpc_byte_buffer_destroy(bb);
}

static void chat_send(struct chat *c, const char *user)
{
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = (char *)user;
    uint8_t buf[256];
    size_t n = protobuf_c_message_pack(&rq.base, buf);
    chat_send_raw(c, buf, n);
}

/* The next answer's profile.user_id into 'out' ("" at the end of the stream). */
static void chat_recv(struct chat *c, char *out, size_t outlen)
{
    grpc_byte_buffer *bb = NULL;
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->asked_md) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &c->md;
        c->asked_md = true;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &bb;
    chat_batch(c, ops, n);
    out[0] = '\0';
    if (bb == NULL)
        return;
    Eddy__V1__GetUserProfileResponse *r = (Eddy__V1__GetUserProfileResponse *)pbgrpc_unpack(
        &eddy__v1__get_user_profile_response__descriptor, bb);
    grpc_byte_buffer_destroy(bb);
    assert_non_null(r);
    assert_non_null(r->profile);
    snprintf(out, outlen, "%s", r->profile->user_id);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* Half-close if 'half_close', and read the status. */
static grpc_status_code chat_close(struct chat *c, bool half_close, char *details,
                                   size_t dlen)
{
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (half_close)
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    if (!c->asked_md) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &c->md;
        c->asked_md = true;
    }
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.trailing_metadata = &c->trailers;
    ops[n].data.recv_status_on_client.status = &c->code;
    ops[n++].data.recv_status_on_client.status_details = &c->details;
    chat_batch(c, ops, n);
    pbgrpc_slice_str(c->details, details, dlen);
    return c->code;
}

static void chat_free(struct chat *c)
{
    grpc_slice_unref(c->details);
    grpc_metadata_array_destroy(&c->md);
    grpc_metadata_array_destroy(&c->trailers);
    grpc_call_unref(c->call);
    grpc_channel_destroy(c->ch);
    grpc_completion_queue_shutdown(c->cq);
    while (grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(c->cq);
}

static void test_bidi_round_trips(void **state)
{
    struct fixture *f = *state;
    struct chat c;
    char got[128], details[128];
    chat_open(&c, f->port);
    const char *users[] = {"a", "bb", "ccc", "dddd", "e"};
    for (size_t i = 0; i < 5; i++) {
        chat_send(&c, users[i]);
        chat_recv(&c, got, sizeof(got));
        char want[64];
        snprintf(want, sizeof(want), "echo:%s", users[i]);
        assert_string_equal(got, want);
    }
    /* several requests before reading: answered in order, one handler at a time */
    for (int i = 0; i < 20; i++) {
        char u[16];
        snprintf(u, sizeof(u), "burst-%d", i);
        chat_send(&c, u);
    }
    for (int i = 0; i < 20; i++) {
        char want[32];
        snprintf(want, sizeof(want), "echo:burst-%d", i);
        chat_recv(&c, got, sizeof(got));
        assert_string_equal(got, want);
    }
    assert_int_equal(chat_close(&c, true, details, sizeof(details)), GRPC_STATUS_OK);
    chat_free(&c);
    assert_true(wait_count(f, &f->handled, 26, 2000)); /* 25 requests + the end */
    assert_int_equal(locked_int(f, &f->bidi_ends), 1);
    assert_int_equal(locked_int(f, &f->bidi_overlaps), 0);
    assert_int_equal(locked_int(f, &f->bidi_cancels), 0);
    assert_true(inflight_drains(f->s));
}

static void test_bidi_handler_finishes(void **state)
{
    struct fixture *f = *state;
    struct chat c;
    char got[128], details[128];
    chat_open(&c, f->port);
    chat_send(&c, "x");
    chat_recv(&c, got, sizeof(got));
    assert_string_equal(got, "echo:x");
    chat_send(&c, "finish");
    chat_recv(&c, got, sizeof(got));
    assert_string_equal(got, ""); /* the stream ended */
    assert_int_equal(chat_close(&c, false, details, sizeof(details)),
                     GRPC_STATUS_FAILED_PRECONDITION);
    assert_string_equal(details, "asked to finish");
    chat_free(&c);
    assert_true(inflight_drains(f->s));
    assert_int_equal(locked_int(f, &f->bidi_ends), 0);   /* never called again */
    assert_int_equal(locked_int(f, &f->bidi_cancels), 0);
}

static void test_bidi_malformed_requests(void **state)
{
    struct fixture *f = *state;
    struct chat c;
    char got[128], details[128];
    /* the first request malformed: answered by the server, no handler ever runs */
    chat_open(&c, f->port);
    chat_send_raw(&c, "\xff\xff\xff", 3);
    assert_int_equal(chat_close(&c, false, details, sizeof(details)),
                     GRPC_STATUS_INVALID_ARGUMENT);
    assert_string_equal(details, "malformed GetUserProfileRequest message");
    chat_free(&c);
    assert_int_equal(locked_int(f, &f->handled), 0);
    /* a later one: the stream ends INVALID_ARGUMENT and the handler hears of it through
       on_cancel (it still holds the call) */
    chat_open(&c, f->port);
    chat_send(&c, "ok");
    chat_recv(&c, got, sizeof(got));
    assert_string_equal(got, "echo:ok");
    chat_send_raw(&c, "\xff\xff\xff", 3);
    assert_int_equal(chat_close(&c, false, details, sizeof(details)),
                     GRPC_STATUS_INVALID_ARGUMENT);
    assert_string_equal(details, "malformed GetUserProfileRequest message");
    chat_free(&c);
    assert_true(wait_count(f, &f->bidi_cancels, 1, 2000));
    assert_true(inflight_drains(f->s));
    assert_int_equal(locked_int(f, &f->handled), 1);
}

static void test_bidi_client_cancels(void **state)
{
    struct fixture *f = *state;
    struct chat c;
    char got[128], details[128];
    chat_open(&c, f->port);
    chat_send(&c, "hi");
    chat_recv(&c, got, sizeof(got));
    assert_string_equal(got, "echo:hi");
    grpc_call_cancel(c.call, NULL);
    assert_int_equal(chat_close(&c, false, details, sizeof(details)), GRPC_STATUS_CANCELLED);
    chat_free(&c);
    /* The application hears of it once: through on_cancel, or, when the server's pending
     * read of the next request completed first with no message (gRPC core may report the
     * cancelled client's stream as ended before the close), as the end of the requests,
     * which it answers (the answer only frees: the client is gone). */
    int64_t until = now_ms() + 2000;
    while (locked_int(f, &f->bidi_cancels) + locked_int(f, &f->bidi_ends) == 0 &&
           now_ms() < until)
        wait_count(f, &f->bidi_cancels, 1, 20);
    assert_int_equal(locked_int(f, &f->bidi_cancels) + locked_int(f, &f->bidi_ends), 1);
    assert_true(inflight_drains(f->s));
}

/* The server lists what it registered, in order (reflection's list_services). */
/* The last QUICK handler's thread name. */
static void quick_thread(struct fixture *f, char *out, size_t len)
{
    pthread_mutex_lock(&f->mu);
    snprintf(out, len, "%s", f->quick_thread);
    pthread_mutex_unlock(&f->mu);
}

/* An inline method's approved calls run on the CQ thread, the others on a handler thread;
 * the predicate is asked once per call. */
static void test_inline_runs_approved_calls_on_the_cq_thread(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    char name[16];
    assert_echo(call_echo(f, QUICK, "now-1", 5000, &res), "now-1");
    quick_thread(f, name, sizeof(name));
    assert_string_equal(name, "eddy-cq");
    assert_echo(call_echo(f, QUICK, "later-1", 5000, &res), "later-1");
    quick_thread(f, name, sizeof(name));
    assert_string_equal(name, "eddy-handler");
    assert_echo(call_echo(f, QUICK, "now-2", 5000, &res), "now-2");
    quick_thread(f, name, sizeof(name));
    assert_string_equal(name, "eddy-cq");
    assert_int_equal(locked_int(f, &f->inline_asked), 3);
    assert_int_equal(locked_int(f, &f->handled), 3);
    assert_true(inflight_drains(f->s));
}

/* A slow handler holding the only handler thread, and the lane's queue full behind it, do
 * not delay an inline call (a short read beside a long Ingest); a call the predicate
 * refuses waits in the queue like any other. */
static void test_inline_not_delayed_by_busy_handlers(void **state)
{
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .handler_threads = 1,
                                .max_queued_calls = 1};
    struct fixture *f = fixture_new(&o);
    assert_int_equal(start_async(f, BLOCK, "one", 10000), EDDY_OK);
    assert_true(wait_count(f, &f->handled, 1, 3000)); /* the only handler thread is busy */
    assert_int_equal(start_async(f, BLOCK, "two", 10000), EDDY_OK); /* fills the queue */
    struct rpc_result res;
    int64_t t0 = now_ms();
    assert_echo(call_echo(f, QUICK, "now", 5000, &res), "now");
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_true(now_ms() - t0 < 2000);
    char name[16];
    quick_thread(f, name, sizeof(name));
    assert_string_equal(name, "eddy-cq");
    Eddy__V1__GetUserProfileResponse *resp = call_echo(f, QUICK, "later", 5000, &res);
    assert_null(resp); /* refused inline: no room in the queue */
    assert_int_equal(res.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_int_equal(locked_int(f, &f->async_done), 0); /* the BLOCK calls still wait */
    release_blocked(f);
    assert_true(wait_count(f, &f->async_done, 2, 5000));
    assert_int_equal(f->async_res[0].code, GRPC_STATUS_OK);
    assert_int_equal(f->async_res[1].code, GRPC_STATUS_OK);
    fixture_free(f);
}

static void test_method_list(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(rpc_server_method_count(f->s), 10);
    assert_string_equal(rpc_server_method_path(f->s, 0), ECHO);
    assert_string_equal(rpc_server_method_path(f->s, 8), BIDI);
    assert_string_equal(rpc_server_method_path(f->s, 9), QUICK);
    assert_null(rpc_server_method_path(f->s, 10));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unary_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_request, setup, teardown),
        cmocka_unit_test(test_oversized_request),
        cmocka_unit_test_setup_teardown(test_deadline_then_late_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_after_client_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_from_other_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_server_same_port, setup, teardown),
        cmocka_unit_test(test_server_busy),
        cmocka_unit_test(test_deadline_passed_in_queue),
        cmocka_unit_test(test_shutdown_with_call_in_flight),
        cmocka_unit_test(test_shutdown_idle_is_fast),
        cmocka_unit_test(test_nested_call_other_lane),
        cmocka_unit_test(test_nested_call_same_lane_waits),
        cmocka_unit_test(test_server_busy_per_lane),
        cmocka_unit_test(test_shutdown_with_queued_lanes),
        cmocka_unit_test_setup_teardown(test_local_calls_answer_as_over_the_network, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_local_deadline_then_late_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_close_waits_for_async_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_lent_request, setup, teardown),
        cmocka_unit_test(test_local_only_methods_are_not_on_the_network),
        cmocka_unit_test_setup_teardown(test_bidi_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bidi_handler_finishes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bidi_malformed_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bidi_client_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inline_runs_approved_calls_on_the_cq_thread,
                                        setup, teardown),
        cmocka_unit_test(test_inline_not_delayed_by_busy_handlers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
