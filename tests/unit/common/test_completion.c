/* One-shot completions: the waiter gets what the other thread signalled; work that was
 * never started returns its error at once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/completion.h"

static void *later(void *arg)
{
    usleep(20000); /* the waiter is (most likely) already waiting */
    completion_signal(arg, EDDY_ERR_CONFLICT, 42);
    return NULL;
}

static void test_signal_from_another_thread(void **state)
{
    (void)state;
    struct completion c;
    completion_init(&c);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, later, &c), 0);
    assert_int_equal(completion_wait(&c, EDDY_OK), EDDY_ERR_CONFLICT);
    assert_int_equal(c.value, 42);
    pthread_join(t, NULL);
}

static void test_signal_before_wait(void **state)
{
    (void)state;
    struct completion c;
    completion_init(&c);
    completion_signal(&c, EDDY_OK, 7);
    assert_int_equal(completion_wait(&c, EDDY_OK), EDDY_OK);
    assert_int_equal(c.value, 7);
}

static void test_not_started(void **state)
{
    (void)state;
    struct completion c;
    completion_init(&c);
    assert_int_equal(completion_wait(&c, EDDY_ERR_FULL), EDDY_ERR_FULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signal_from_another_thread),
        cmocka_unit_test(test_signal_before_wait),
        cmocka_unit_test(test_not_started),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
