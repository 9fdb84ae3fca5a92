/* The worker thread: its name, kicks that wake it (and are not lost when they come before
 * the wait), deadlines, sleeps that kicks do not shorten, and stopping while it waits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/clock.h"
#include "common/worker.h"

/* What the body saw; the test thread reads it after worker_stop (the join orders it). */
struct probe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int rounds;              /* worker_wait calls that returned true */
    int64_t waited_ms[8];    /* how long each of them took */
    bool waiting;            /* the body is about to wait (set before each wait) */
    bool hold;               /* the body waits for it to clear before worker_wait */
    char name[16];
    int64_t wait_ms;         /* what the body passes to worker_wait */
    bool sleep_first;        /* the body calls worker_sleep(wait_ms) instead */
    bool ended;
};

static void body(struct worker *w, void *ud)
{
    struct probe *p = ud;
    pthread_getname_np(pthread_self(), p->name, sizeof(p->name));
    for (;;) {
        pthread_mutex_lock(&p->mu);
        p->waiting = true;
        pthread_cond_broadcast(&p->cv);
        while (p->hold)
            pthread_cond_wait(&p->cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        int64_t t0 = clock_mono_ms();
        bool go = p->sleep_first ? worker_sleep(w, p->wait_ms) : worker_wait(w, p->wait_ms);
        int64_t took = clock_mono_ms() - t0;
        if (!go)
            break;
        pthread_mutex_lock(&p->mu);
        p->waiting = false;
        if (p->rounds < 8)
            p->waited_ms[p->rounds] = took;
        p->rounds++;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    p->ended = true;
}

static void probe_init(struct probe *p, int64_t wait_ms)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->wait_ms = wait_ms;
}

static void probe_release(struct probe *p)
{
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

/* Block until the body has completed at least 'n' rounds. */
static void await_rounds(struct probe *p, int n)
{
    pthread_mutex_lock(&p->mu);
    while (p->rounds < n)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* Block until the body is (about to be) waiting with 'n' rounds done. */
static void await_waiting(struct probe *p, int n)
{
    pthread_mutex_lock(&p->mu);
    while (p->rounds < n || !p->waiting)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void test_named_and_stopped_while_waiting(void **state)
{
    struct probe p;
    probe_init(&p, 60 * 1000); /* a wait no test run outlasts */
    struct worker w = {0};
    assert_int_equal(worker_start(&w, "test-worker", body, &p), EDDY_OK);
    await_waiting(&p, 0);
    int64_t t0 = clock_mono_ms();
    assert_false(worker_stopping(&w));
    worker_stop(&w); /* the body is in (or entering) its minute-long wait */
    assert_true(clock_mono_ms() - t0 < 30 * 1000);
    assert_true(p.ended);
    assert_int_equal(p.rounds, 0);
    assert_string_equal(p.name, "eddy-test-worke"); /* cut to 15 characters */
    assert_true(worker_stopping(&w));
    worker_stop(&w); /* twice is harmless */
    probe_release(&p);
}

static void test_kick_wakes_and_is_not_lost(void **state)
{
    struct probe p;
    probe_init(&p, 60 * 1000);
    struct worker w = {0};
    assert_int_equal(worker_start(&w, "kick", body, &p), EDDY_OK);
    await_waiting(&p, 0);
    pthread_mutex_lock(&p.mu);
    p.hold = true; /* after this round the body stops short of its next wait */
    pthread_mutex_unlock(&p.mu);
    worker_kick(&w);
    await_waiting(&p, 1);
    /* two kicks while the body is not waiting: not lost, and they make one round */
    worker_kick(&w);
    worker_kick(&w);
    pthread_mutex_lock(&p.mu);
    p.hold = false;
    pthread_cond_broadcast(&p.cv);
    pthread_mutex_unlock(&p.mu);
    await_rounds(&p, 2);
    await_waiting(&p, 2);
    worker_stop(&w);
    assert_int_equal(p.rounds, 2);
    assert_true(p.waited_ms[0] < 30 * 1000);
    assert_true(p.waited_ms[1] < 30 * 1000);
    probe_release(&p);
}

static void test_deadline(void **state)
{
    struct probe p;
    probe_init(&p, 50);
    struct worker w = {0};
    assert_int_equal(worker_start(&w, "deadline", body, &p), EDDY_OK);
    await_rounds(&p, 3); /* nobody kicks: each wait ends at its deadline */
    worker_stop(&w);
    for (int i = 0; i < 3; i++)
        assert_true(p.waited_ms[i] >= 49);
    probe_release(&p);
}

static void test_sleep_ignores_kicks(void **state)
{
    struct probe p;
    probe_init(&p, 200);
    p.sleep_first = true;
    struct worker w = {0};
    assert_int_equal(worker_start(&w, "sleep", body, &p), EDDY_OK);
    await_waiting(&p, 0);
    for (int i = 0; i < 5; i++)
        worker_kick(&w);
    await_rounds(&p, 1);
    worker_stop(&w);
    assert_true(p.waited_ms[0] >= 199);
    probe_release(&p);
}

static void test_stop_during_sleep(void **state)
{
    struct probe p;
    probe_init(&p, 60 * 1000);
    p.sleep_first = true;
    struct worker w = {0};
    assert_int_equal(worker_start(&w, "sleep-stop", body, &p), EDDY_OK);
    await_waiting(&p, 0);
    int64_t t0 = clock_mono_ms();
    worker_stop(&w);
    assert_true(clock_mono_ms() - t0 < 30 * 1000);
    assert_true(p.ended);
    probe_release(&p);
}

static void test_not_started(void **state)
{
    struct worker w = {0};
    assert_false(worker_stopping(&w));
    worker_request_stop(&w);
    assert_true(worker_stopping(&w)); /* a callback polling it sees the stop */
    worker_stop(&w);                  /* nothing to join */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named_and_stopped_while_waiting),
        cmocka_unit_test(test_kick_wakes_and_is_not_lost),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_sleep_ignores_kicks),
        cmocka_unit_test(test_stop_during_sleep),
        cmocka_unit_test(test_not_started),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
