/* grpc.health.v1.Health served by health.c over a real rpc_server on 127.0.0.1:0: Check
 * for known and unknown services, Watch seeing the current status and then changes,
 * SERVICE_UNKNOWN, the end of Watch on client cancel and on health_shutdown. */
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

#include "common/health.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "grpc/health/v1/health.pb-c.h"

#define CHECK "/grpc.health.v1.Health/Check"
#define WATCH "/grpc.health.v1.Health/Watch"
#define SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define SERVICE_UNKNOWN GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

struct fixture {
    health *h;
    rpc_server *s;
    rpc_channel *ch;
};

/* A Watch running on a thread of its own; 'seen' is filled by the stream callback. */
struct watch {
    struct fixture *f;
    const char *service;
    int stop_after; /* 0: until the stream ends */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int seen[16];
    int n;
    struct rpc_result res;
    bool ended;
    pthread_t thread;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->h = health_new();
    assert_non_null(f->h);
    health_set(f->h, "", HEALTH_SERVING);
    health_set(f->h, "eddy.v1.Eddy", HEALTH_NOT_SERVING);
    struct rpc_server_opts o = {.listen = "127.0.0.1:0"};
    f->s = rpc_server_new(&o);
    assert_non_null(f->s);
    assert_int_equal(health_register(f->h, f->s), EDDY_OK);
    int port = 0;
    assert_int_equal(rpc_server_start(f->s, &port), EDDY_OK);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    f->ch = rpc_channel_open(target, NULL);
    assert_non_null(f->ch);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rpc_channel_close(f->ch);
    health_shutdown(f->h);
    rpc_server_free(f->s);
    health_free(f->h);
    free(f);
    return 0;
}

/* Check 'service'; returns the status, or -1 with *code set for a non-OK answer. */
static int check(struct fixture *f, const char *service, struct rpc_result *res)
{
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = (char *)service;
    ProtobufCMessage *resp = NULL;
    rpc_invoke(f->ch, CHECK, &rq.base, &grpc__health__v1__health_check_response__descriptor,
               5000, &resp, res);
    if (resp == NULL)
        return -1;
    int st = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
    protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

static int on_status(void *ud, const ProtobufCMessage *msg)
{
    struct watch *w = ud;
    const Grpc__Health__V1__HealthCheckResponse *m =
        (const Grpc__Health__V1__HealthCheckResponse *)msg;
    pthread_mutex_lock(&w->mu);
    if (w->n < 16)
        w->seen[w->n] = m->status;
    w->n++;
    bool stop = w->stop_after && w->n >= w->stop_after;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return stop;
}

static void *watch_main(void *arg)
{
    struct watch *w = arg;
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = (char *)w->service;
    struct rpc_result res;
    rpc_invoke_stream(w->f->ch, WATCH, &rq.base,
                      &grpc__health__v1__health_check_response__descriptor, 10000, on_status,
                      w, &res);
    pthread_mutex_lock(&w->mu);
    w->res = res;
    w->ended = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void watch_start(struct watch *w, struct fixture *f, const char *service, int stop_after)
{
    memset(w, 0, sizeof(*w));
    w->f = f;
    w->service = service;
    w->stop_after = stop_after;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    assert_int_equal(pthread_create(&w->thread, NULL, watch_main, w), 0);
}

/* Wait until the watch saw 'n' messages (or ended, if n < 0); true if it did in 3 s. */
static bool watch_wait(struct watch *w, int n)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 3;
    pthread_mutex_lock(&w->mu);
    while (n >= 0 ? w->n < n : !w->ended)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) != 0)
            break;
    bool ok = n >= 0 ? w->n >= n : w->ended;
    pthread_mutex_unlock(&w->mu);
    return ok;
}

static void watch_join(struct watch *w)
{
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

static bool watchers_reach(health *h, size_t n)
{
    for (int i = 0; i < 300; i++) {
        if (health_watchers(h) == n)
            return true;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

static void test_check(void **state)
{
    struct fixture *f = *state;
    struct rpc_result res;
    assert_int_equal(check(f, "", &res), SERVING);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_int_equal(check(f, "eddy.v1.Eddy", &res), NOT_SERVING);
    assert_int_equal(check(f, "nope", &res), -1);
    assert_int_equal(res.code, GRPC_STATUS_NOT_FOUND);
    assert_string_equal(res.details, "unknown service");

    health_set(f->h, "eddy.v1.Eddy", HEALTH_SERVING);
    assert_int_equal(check(f, "eddy.v1.Eddy", &res), SERVING);
    assert_int_equal(health_get(f->h, "eddy.v1.Eddy"), HEALTH_SERVING);
    assert_int_equal(health_get(f->h, "nope"), HEALTH_UNKNOWN);

    health_set_all(f->h, HEALTH_NOT_SERVING);
    assert_int_equal(check(f, "", &res), NOT_SERVING);
    assert_int_equal(check(f, "eddy.v1.Eddy", &res), NOT_SERVING);
}

static void test_watch_sees_changes_until_shutdown(void **state)
{
    struct fixture *f = *state;
    struct watch w;
    watch_start(&w, f, "eddy.v1.Eddy", 0);
    assert_true(watch_wait(&w, 1)); /* the current status at once */
    assert_int_equal(w.seen[0], NOT_SERVING);
    assert_true(watchers_reach(f->h, 1));

    health_set(f->h, "eddy.v1.Eddy", HEALTH_SERVING);
    assert_true(watch_wait(&w, 2));
    assert_int_equal(w.seen[1], SERVING);
    health_set(f->h, "eddy.v1.Eddy", HEALTH_SERVING); /* no change: nothing sent */
    health_set(f->h, "", HEALTH_NOT_SERVING);          /* another service */
    health_set_all(f->h, HEALTH_NOT_SERVING);
    assert_true(watch_wait(&w, 3));
    assert_int_equal(w.seen[2], NOT_SERVING);

    health_shutdown(f->h);
    assert_true(watch_wait(&w, -1));
    assert_int_equal(w.res.code, GRPC_STATUS_OK);
    assert_int_equal(w.n, 3);
    assert_int_equal(health_watchers(f->h), 0);
    watch_join(&w);
}

static void test_watch_unknown_then_cancel(void **state)
{
    struct fixture *f = *state;
    struct watch w;
    watch_start(&w, f, "ghost", 2);
    assert_true(watch_wait(&w, 1));
    assert_int_equal(w.seen[0], SERVICE_UNKNOWN);
    assert_true(watchers_reach(f->h, 1));
    health_set(f->h, "ghost", HEALTH_SERVING); /* registered later: the watcher learns it */
    assert_true(watch_wait(&w, -1)); /* stop_after 2: the client cancels */
    assert_int_equal(w.n, 2);
    assert_int_equal(w.seen[1], SERVING);
    assert_int_equal(w.res.code, GRPC_STATUS_CANCELLED);
    assert_true(watchers_reach(f->h, 0)); /* the server dropped the watcher */
    watch_join(&w);

    /* later changes still work for others */
    struct rpc_result res;
    health_set(f->h, "ghost", HEALTH_NOT_SERVING);
    assert_int_equal(check(f, "ghost", &res), NOT_SERVING);
}

static void test_watch_ends_with_server_shutdown(void **state)
{
    struct fixture *f = *state;
    struct watch w[3];
    for (int i = 0; i < 3; i++)
        watch_start(&w[i], f, "", 0);
    for (int i = 0; i < 3; i++)
        assert_true(watch_wait(&w[i], 1));
    assert_true(watchers_reach(f->h, 3));
    /* health_shutdown not called first: the server cancels, on_cancel unlinks */
    rpc_server_shutdown(f->s, 50);
    for (int i = 0; i < 3; i++) {
        assert_true(watch_wait(&w[i], -1));
        assert_int_not_equal(w[i].res.code, GRPC_STATUS_OK);
        watch_join(&w[i]);
    }
    assert_int_equal(health_watchers(f->h), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_sees_changes_until_shutdown, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_watch_unknown_then_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_ends_with_server_shutdown, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
