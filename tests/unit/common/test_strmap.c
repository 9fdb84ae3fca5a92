/* The string map against a plain array of every key put (the reference), through growth,
 * deletes that shift colliding entries back, keys with NULs, and its maximum. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/strmap.h"

#define N 5000

static void test_put_get_grow(void **state)
{
    struct strmap m = STRMAP_INIT(N);
    static int vals[N];
    char key[32];
    for (int i = 0; i < N; i++) {
        int len = snprintf(key, sizeof(key), "product-%d", i);
        assert_int_equal(strmap_put(&m, key, (size_t)len, &vals[i]), EDDY_OK);
    }
    assert_int_equal(m.n, N);
    assert_true(m.cap >= 2 * N); /* at most half full */
    for (int i = 0; i < N; i++) {
        int len = snprintf(key, sizeof(key), "product-%d", i);
        assert_ptr_equal(strmap_get(&m, key, (size_t)len), &vals[i]);
    }
    assert_null(strmap_get(&m, "product-", 8));
    assert_null(strmap_get(&m, "product-1x", 10));
    /* a prefix of a key is another key */
    assert_ptr_equal(strmap_get(&m, "product-12", 10), &vals[12]);
    assert_ptr_equal(strmap_get(&m, "product-123", 10), &vals[12]);
    /* put again replaces, without adding */
    assert_int_equal(strmap_put(&m, "product-7", 9, &vals[8]), EDDY_OK);
    assert_ptr_equal(strmap_get(&m, "product-7", 9), &vals[8]);
    assert_int_equal(m.n, N);
    strmap_release(&m, NULL);
    assert_int_equal(m.n, 0);
    assert_null(strmap_get(&m, "product-7", 9));
}

static void test_slot_and_bytes(void **state)
{
    struct strmap m = STRMAP_INIT(10);
    bool added;
    eddy_err err;
    const char k1[] = {'a', '\0', 'b'}, k2[] = {'a', '\0', 'c'};
    void **s = strmap_slot(&m, k1, 3, &added, &err);
    assert_non_null(s);
    assert_true(added);
    assert_null(*s);
    *s = (void *)k1;
    s = strmap_slot(&m, k1, 3, &added, &err);
    assert_false(added);
    assert_ptr_equal(*s, k1);
    assert_null(strmap_get(&m, k2, 3));
    assert_null(strmap_get(&m, "a", 1));
    assert_int_equal(strmap_put(&m, "", 0, (void *)k2), EDDY_OK); /* the empty key */
    assert_ptr_equal(strmap_get(&m, "", 0), k2);
    size_t pos = 0, len, seen = 0;
    const char *key;
    void *v;
    while (strmap_next(&m, &pos, &key, &len, &v)) {
        seen++;
        assert_true(len == 3 ? memcmp(key, k1, 3) == 0 && v == k1 : len == 0 && v == k2);
        assert_int_equal(key[len], '\0');
    }
    assert_int_equal(seen, 2);
    strmap_release(&m, NULL);
}

static void test_limit(void **state)
{
    struct strmap m = STRMAP_INIT(3);
    int v = 0;
    assert_int_equal(strmap_put(&m, "a", 1, &v), EDDY_OK);
    assert_int_equal(strmap_put(&m, "b", 1, &v), EDDY_OK);
    assert_int_equal(strmap_put(&m, "c", 1, &v), EDDY_OK);
    assert_int_equal(strmap_put(&m, "d", 1, &v), EDDY_ERR_FULL);
    assert_null(strmap_get(&m, "d", 1));
    assert_int_equal(strmap_put(&m, "a", 1, NULL), EDDY_OK); /* replacing is not adding */
    assert_ptr_equal(strmap_del(&m, "b", 1), &v);
    assert_int_equal(strmap_put(&m, "d", 1, &v), EDDY_OK);
    assert_int_equal(m.n, 3);
    struct strmap none = STRMAP_INIT(0);
    assert_int_equal(strmap_put(&none, "a", 1, &v), EDDY_ERR_FULL);
    strmap_release(&none, NULL);
    strmap_release(&m, NULL);
}

/* Deletes keep every other key findable: random puts and deletes against a reference
 * array, on a table kept small so probe runs are long and wrap around its end. */
static void test_delete_against_reference(void **state)
{
    enum { K = 40 };
    struct strmap m = STRMAP_INIT(K);
    int ref[K]; /* 1: present with value &ref[i] */
    memset(ref, 0, sizeof(ref));
    char key[16];
    srand(7);
    for (int round = 0; round < 20000; round++) {
        int i = rand() % K;
        int len = snprintf(key, sizeof(key), "k%d", i);
        if (rand() % 3) {
            assert_int_equal(strmap_put(&m, key, (size_t)len, &ref[i]), EDDY_OK);
            ref[i] = 1;
        } else {
            void *v = strmap_del(&m, key, (size_t)len);
            assert_ptr_equal(v, ref[i] ? &ref[i] : NULL);
            ref[i] = 0;
        }
        size_t n = 0;
        for (int j = 0; j < K; j++) {
            len = snprintf(key, sizeof(key), "k%d", j);
            assert_ptr_equal(strmap_get(&m, key, (size_t)len), ref[j] ? &ref[j] : NULL);
            n += (size_t)ref[j];
        }
        assert_int_equal(m.n, n);
    }
    strmap_release(&m, NULL);
}

static int freed;
static void count_free(void *p)
{
    freed++;
    free(p);
}

static void test_release_frees_values(void **state)
{
    struct strmap m = STRMAP_INIT(100);
    for (int i = 0; i < 50; i++) {
        char key[8];
        int len = snprintf(key, sizeof(key), "%d", i);
        assert_int_equal(strmap_put(&m, key, (size_t)len, malloc(4)), EDDY_OK);
    }
    freed = 0;
    strmap_release(&m, count_free);
    assert_int_equal(freed, 50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_grow),
        cmocka_unit_test(test_slot_and_bytes),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_delete_against_reference),
        cmocka_unit_test(test_release_frees_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
