/* Partition hashing: stable across versions, uniform, and in range. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "common/partition.h"

static void test_stable_values(void **state)
{
    /* Pinned: changing the hash would move every key to another partition. */
    assert_int_equal(partition_hash("u:", "alice", 5), partition_hash("u:", "alice", 5));
    assert_int_not_equal(partition_hash("u:", "alice", 5), partition_hash("i:", "alice", 5));
    uint32_t a = partition_of_user("alice", 256), b = partition_of_user("bob", 256);
    assert_int_equal(a, partition_of_hash(partition_hash("u:", "alice", 5), 256));
    assert_int_equal(partition_of_user("alice", 256), a);
    assert_int_equal(partition_of_user("bob", 256), b);
    /* the values of the first versions (XXH64's streaming state), short keys, the longest
     * that partition_hash copies to hash in one call (254 after "i:") and longer ones */
    char big[301];
    for (int i = 0; i < 300; i++)
        big[i] = (char)('a' + i % 26);
    big[300] = '\0';
    assert_int_equal(partition_hash("u:", "alice", 5), UINT64_C(0x2043a178e576174f));
    assert_int_equal(partition_hash("i:", "p-123", 5), UINT64_C(0x3d63d25fb1b888ca));
    assert_int_equal(partition_hash("i:", "", 0), UINT64_C(0xf605b2b6277917e4));
    assert_int_equal(partition_hash("i:", big, 254), UINT64_C(0x64dc8a1a665b8457));
    assert_int_equal(partition_hash("i:", big, 255), UINT64_C(0x4a45f8dd69fdf3f4));
    assert_int_equal(partition_hash("i:", big, 300), UINT64_C(0x6e2c708a8ecee109));
}

static void test_range_bounds(void **state)
{
    assert_int_equal(partition_of_hash(0, 256), 0);
    assert_int_equal(partition_of_hash(UINT64_MAX, 256), 255);
    assert_int_equal(partition_of_hash(UINT64_C(1) << 63, 256), 128);
    assert_int_equal(partition_of_hash((UINT64_C(1) << 56) - 1, 256), 0);
    assert_int_equal(partition_of_hash(UINT64_C(1) << 56, 256), 1);
    assert_int_equal(partition_of_hash(UINT64_MAX, 1), 0);
}

static void test_uniform(void **state)
{
    enum { P = 64, N = 64000 };
    int count[P] = {0};
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "user-%d", i);
        uint32_t p = partition_of_user(key, P);
        assert_true(p < P);
        count[p]++;
    }
    /* chi-square with 63 degrees of freedom: 99.9th percentile is about 103 */
    double expect = (double)N / P, chi = 0;
    for (int p = 0; p < P; p++)
        chi += (count[p] - expect) * (count[p] - expect) / expect;
    assert_true(chi < 103.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stable_values),
        cmocka_unit_test(test_range_bounds),
        cmocka_unit_test(test_uniform),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
