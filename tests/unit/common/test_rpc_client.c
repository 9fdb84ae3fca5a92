/* rpc_client against a real in-process rpc_server on 127.0.0.1:0: async calls in flight
 * at once, close with pending calls, server streams (in order, large, with an error
 * status, stopped by the client), fail-fast vs wait-for-ready, undecodable responses. */
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

#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "eddy/v1/eddy.pb-c.h"

#define SLEEP "/test.T/Sleep"     /* sleeps user_id ms, then echoes */
#define PARK "/test.T/Park"       /* keeps the call unanswered */
#define COUNT "/test.T/Count"     /* streams strtol(user_id) messages, then OK */
#define FAILING "/test.T/Failing" /* streams 2 messages, then NOT_FOUND */
#define FOREVER "/test.T/Forever" /* streams 1 message and never finishes */
#define WRONG "/test.T/Wrong"     /* answers bytes that are not a GetUserProfileResponse */
#define NCALLS 20

struct fixture {
    rpc_server *s;
    rpc_channel *ch;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int parked;
    rpc_call *park[8];
    int cancels;
    eddy_err send_after_cancel;
    int full_seen;
};

/* Per-call state of an async call. */
struct pending {
    struct fixture *f;
    char user[32];
    struct rpc_result res;
    char got[64];
};

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

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

static void reply_echo(rpc_call *call, const char *user)
{
    char id[128];
    snprintf(id, sizeof(id), "echo:%s", user);
    Eddy__V1__UserProfile p = EDDY__V1__USER_PROFILE__INIT;
    p.user_id = id;
    Eddy__V1__GetUserProfileResponse resp = EDDY__V1__GET_USER_PROFILE_RESPONSE__INIT;
    resp.profile = &p;
    rpc_reply(call, &resp.base);
}

static void on_sleep(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    const Eddy__V1__GetUserProfileRequest *rq = (const Eddy__V1__GetUserProfileRequest *)req;
    sleep_ms(strtol(rq->user_id, NULL, 10));
    reply_echo(call, rq->user_id);
}

static void on_park(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    pthread_mutex_lock(&f->mu);
    f->park[f->parked++] = call;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Send stream message number 'i'; retries while the send queue is full. */
static eddy_err send_tick(struct fixture *f, rpc_call *call, uint64_t i)
{
    Eddy__V1__UserProfile p = EDDY__V1__USER_PROFILE__INIT;
    p.user_id = "tick";
    p.event_count = i;
    Eddy__V1__GetUserProfileResponse m = EDDY__V1__GET_USER_PROFILE_RESPONSE__INIT;
    m.profile = &p;
    eddy_err err;
    while ((err = rpc_stream_send(call, &m.base)) == EDDY_ERR_FULL) {
        pthread_mutex_lock(&f->mu);
        f->full_seen++;
        pthread_mutex_unlock(&f->mu);
        sleep_ms(1);
    }
    return err;
}

static void on_count(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    const Eddy__V1__GetUserProfileRequest *rq = (const Eddy__V1__GetUserProfileRequest *)req;
    long n = strtol(rq->user_id, NULL, 10);
    for (long i = 0; i < n; i++)
        if (send_tick(f, call, (uint64_t)i) != EDDY_OK)
            break;
    rpc_stream_finish(call, GRPC_STATUS_OK, NULL);
}

static void on_failing(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    struct fixture *f = ud;
    send_tick(f, call, 0);
    send_tick(f, call, 1);
    rpc_stream_finish(call, GRPC_STATUS_NOT_FOUND, "gone");
}

static void on_forever(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    send_tick(ud, call, 0);
}

static void on_forever_cancel(void *ud, rpc_call *call)
{
    struct fixture *f = ud;
    eddy_err err = send_tick(f, call, 1);
    rpc_stream_finish(call, GRPC_STATUS_CANCELLED, NULL);
    pthread_mutex_lock(&f->mu);
    f->send_after_cancel = err;
    f->cancels++;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void on_wrong(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    /* field 1 of GetUserProfileResponse is a message; these bytes do not parse as one */
    Eddy__V1__GetUserProfileRequest bad = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    bad.user_id = "\xff\xff\xff";
    rpc_reply(call, &bad.base);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    struct rpc_server_opts o = {.listen = "127.0.0.1:0", .handler_threads = 4};
    f->s = rpc_server_new(&o);
    assert_non_null(f->s);
    const ProtobufCMessageDescriptor *d = &eddy__v1__get_user_profile_request__descriptor;
    assert_int_equal(rpc_server_add_unary(f->s, SLEEP, d, on_sleep, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(f->s, PARK, d, on_park, f), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(f->s, WRONG, d, on_wrong, f), EDDY_OK);
    assert_int_equal(rpc_server_add_stream(f->s, COUNT, d, on_count, NULL, f), EDDY_OK);
    assert_int_equal(rpc_server_add_stream(f->s, FAILING, d, on_failing, NULL, f), EDDY_OK);
    assert_int_equal(rpc_server_add_stream(f->s, FOREVER, d, on_forever, on_forever_cancel, f),
                     EDDY_OK);
    assert_int_equal(rpc_server_start(f->s, &f->port), EDDY_OK);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", f->port);
    f->ch = rpc_channel_open(target, NULL);
    assert_non_null(f->ch);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rpc_channel_close(f->ch);
    rpc_server_free(f->s);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

static void on_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct pending *p = ud;
    Eddy__V1__GetUserProfileResponse *r = (Eddy__V1__GetUserProfileResponse *)resp;
    p->res = *res;
    if (r && r->profile)
        snprintf(p->got, sizeof(p->got), "%s", r->profile->user_id);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    pthread_mutex_lock(&p->f->mu);
    p->f->done++;
    pthread_cond_broadcast(&p->f->cv);
    pthread_mutex_unlock(&p->f->mu);
}

static eddy_err start(struct fixture *f, struct pending *p, const char *method, int64_t tmo)
{
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = p->user;
    p->f = f;
    return rpc_invoke_async(f->ch, method, &rq.base,
                            &eddy__v1__get_user_profile_response__descriptor, tmo, on_done, p);
}

static void test_async_many_in_flight(void **state)
{
    struct fixture *f = *state;
    struct pending p[NCALLS];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < NCALLS; i++) {
        /* later calls sleep less, so answers come back out of order */
        snprintf(p[i].user, sizeof(p[i].user), "%d", (NCALLS - i) * 5);
        assert_int_equal(start(f, &p[i], SLEEP, 5000), EDDY_OK);
    }
    assert_true(wait_count(f, &f->done, NCALLS, 5000));
    for (int i = 0; i < NCALLS; i++) {
        char want[64];
        snprintf(want, sizeof(want), "echo:%s", p[i].user);
        assert_int_equal(p[i].res.code, GRPC_STATUS_OK);
        assert_string_equal(p[i].got, want);
    }
}

static void test_async_deadline(void **state)
{
    struct fixture *f = *state;
    struct pending p;
    memset(&p, 0, sizeof(p));
    snprintf(p.user, sizeof(p.user), "x");
    assert_int_equal(start(f, &p, PARK, 100), EDDY_OK);
    assert_true(wait_count(f, &f->done, 1, 3000));
    assert_int_equal(p.res.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_string_equal(p.got, "");
    assert_true(wait_count(f, &f->parked, 1, 3000));
    reply_echo(f->park[0], "late"); /* the client is gone: only frees the call */
}

static void test_close_cancels_pending(void **state)
{
    struct fixture *f = *state;
    struct pending p[3];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < 3; i++) {
        snprintf(p[i].user, sizeof(p[i].user), "held%d", i);
        assert_int_equal(start(f, &p[i], PARK, 30000), EDDY_OK);
    }
    assert_true(wait_count(f, &f->parked, 3, 3000));
    rpc_channel_close(f->ch); /* returns after every callback ran */
    f->ch = NULL;
    assert_int_equal(f->done, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(p[i].res.code, GRPC_STATUS_CANCELLED);
    for (int i = 0; i < 3; i++)
        reply_echo(f->park[i], "after-close");
}

struct collect {
    uint64_t seen[300];
    int n;
    int stop_after; /* 0: never */
    struct fixture *notify; /* if set, each message bumps notify->done */
};

static int on_msg(void *ud, const ProtobufCMessage *msg)
{
    struct collect *c = ud;
    const Eddy__V1__GetUserProfileResponse *m = (const Eddy__V1__GetUserProfileResponse *)msg;
    if (c->n < 300)
        c->seen[c->n] = m->profile ? m->profile->event_count : UINT64_MAX;
    c->n++;
    if (c->notify) {
        pthread_mutex_lock(&c->notify->mu);
        c->notify->done++;
        pthread_cond_broadcast(&c->notify->cv);
        pthread_mutex_unlock(&c->notify->mu);
    }
    return c->stop_after && c->n >= c->stop_after;
}

static void run_stream(struct fixture *f, const char *method, const char *user,
                       struct collect *c, struct rpc_result *res)
{
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = (char *)user;
    rpc_invoke_stream(f->ch, method, &rq.base, &eddy__v1__get_user_profile_response__descriptor,
                      5000, on_msg, c, res);
}

static void test_stream_round_trip(void **state)
{
    struct fixture *f = *state;
    struct collect c = {.n = 0};
    struct rpc_result res;
    run_stream(f, COUNT, "5", &c, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_int_equal(c.n, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(c.seen[i], i);

    struct collect empty = {.n = 0};
    run_stream(f, COUNT, "0", &empty, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_int_equal(empty.n, 0);
}

static void test_stream_many_in_order(void **state)
{
    struct fixture *f = *state;
    struct collect c = {.n = 0};
    struct rpc_result res;
    run_stream(f, COUNT, "300", &c, &res); /* more than the 64-message send queue */
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_int_equal(c.n, 300);
    for (int i = 0; i < 300; i++)
        assert_int_equal(c.seen[i], i);
}

static void test_stream_error_status(void **state)
{
    struct fixture *f = *state;
    struct collect c = {.n = 0};
    struct rpc_result res;
    run_stream(f, FAILING, "x", &c, &res);
    assert_int_equal(c.n, 2);
    assert_int_equal(res.code, GRPC_STATUS_NOT_FOUND);
    assert_string_equal(res.details, "gone");
}

static void test_stream_stopped_by_client(void **state)
{
    struct fixture *f = *state;
    struct collect c = {.n = 0, .stop_after = 1};
    struct rpc_result res;
    run_stream(f, FOREVER, "x", &c, &res);
    assert_int_equal(c.n, 1);
    assert_int_equal(res.code, GRPC_STATUS_CANCELLED);
    /* the server learns it: on_cancel runs, and sending no longer works */
    assert_true(wait_count(f, &f->cancels, 1, 3000));
    assert_int_equal(f->send_after_cancel, EDDY_ERR_UNAVAILABLE);
    assert_int_equal(rpc_server_inflight(f->s), 0);
}

struct stream_thread {
    struct fixture *f;
    struct collect c;
    struct rpc_result res;
};

static void *stream_main(void *arg)
{
    struct stream_thread *t = arg;
    run_stream(t->f, FOREVER, "x", &t->c, &t->res);
    return NULL;
}

static void test_stream_cancelled_by_shutdown(void **state)
{
    struct fixture *f = *state;
    struct stream_thread t = {.f = f, .c = {.notify = f}};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, stream_main, &t), 0);
    assert_true(wait_count(f, &f->done, 1, 3000)); /* the first message arrived */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rpc_server_shutdown(f->s, 100); /* the stream never finishes by itself */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(th, NULL);
    assert_true(t1.tv_sec - t0.tv_sec < 3);
    assert_int_equal(f->cancels, 1); /* on_cancel ran before shutdown returned */
    assert_int_equal(t.c.n, 1);
    assert_true(t.res.code == GRPC_STATUS_UNAVAILABLE || t.res.code == GRPC_STATUS_CANCELLED);
}

static void test_fail_fast_and_wait_for_ready(void **state)
{
    struct fixture *f = *state;
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", f->port);
    rpc_server_shutdown(f->s, 0); /* nothing listens on the port any more */

    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = "x";
    struct rpc_result res;
    ProtobufCMessage *resp = NULL;
    rpc_channel *fast = rpc_channel_open(target, NULL);
    rpc_invoke(fast, SLEEP, &rq.base, &eddy__v1__get_user_profile_response__descriptor, 2000,
               &resp, &res);
    assert_int_equal(res.code, GRPC_STATUS_UNAVAILABLE);
    assert_null(resp);
    rpc_channel_close(fast);

    struct rpc_channel_opts o = {.wait_for_ready = true};
    rpc_channel *patient = rpc_channel_open(target, &o);
    rpc_invoke(patient, SLEEP, &rq.base, &eddy__v1__get_user_profile_response__descriptor, 300,
               &resp, &res);
    assert_int_equal(res.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_null(resp);
    rpc_channel_close(patient);
}

static void test_malformed_response(void **state)
{
    struct fixture *f = *state;
    Eddy__V1__GetUserProfileRequest rq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    rq.user_id = "x";
    struct rpc_result res;
    ProtobufCMessage *resp = NULL;
    rpc_invoke(f->ch, WRONG, &rq.base, &eddy__v1__get_user_profile_response__descriptor, 5000,
               &resp, &res);
    assert_int_equal(res.code, GRPC_STATUS_INTERNAL);
    assert_string_equal(res.details, "malformed GetUserProfileResponse response");
    assert_null(resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_async_many_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_cancels_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_many_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_error_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_stopped_by_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_cancelled_by_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fail_fast_and_wait_for_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_response, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
