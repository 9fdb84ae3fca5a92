/* The assigner: balance, minimal movement, determinism, epochs, draining, no nodes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "coordinator/assigner.h"

#define P 256

static struct cluster_map empty_map(void)
{
    struct cluster_map a = {P, 0, calloc(P, sizeof(struct cluster_part))};
    return a;
}

static struct assign_node node(const char *id)
{
    struct assign_node n = {{0}, true, false};
    snprintf(n.id, sizeof(n.id), "%s", id);
    return n;
}

static void assert_balanced(const struct cluster_map *a, const struct assign_node *nodes,
                            size_t n)
{
    size_t eligible = 0, total = 0;
    for (size_t i = 0; i < n; i++)
        eligible += nodes[i].state && !nodes[i].draining;
    for (size_t i = 0; i < n; i++) {
        size_t c = assigner_count(a, nodes[i].id);
        if (!nodes[i].state || nodes[i].draining) {
            assert_int_equal(c, 0);
            continue;
        }
        assert_true(c == P / eligible || c == P / eligible + 1);
        total += c;
    }
    assert_int_equal(total, P);
}

static void test_initial_and_balanced(void **state)
{
    struct assign_node nodes[] = {node("b"), node("a"), node("c")};
    struct cluster_map cur = empty_map(), next = empty_map();
    size_t moved = assigner_compute(nodes, 3, &cur, &next);
    assert_int_equal(moved, P);
    assert_balanced(&next, nodes, 3);
    for (uint32_t p = 0; p < P; p++)
        assert_int_equal(next.parts[p].epoch, 1);
    free(cur.parts);
    free(next.parts);
}

static void test_stable_and_deterministic(void **state)
{
    struct assign_node n1[] = {node("a"), node("b"), node("c")};
    struct assign_node n2[] = {node("c"), node("a"), node("b")};
    struct cluster_map cur = empty_map(), x = empty_map(), y = empty_map(), z = empty_map();
    assigner_compute(n1, 3, &cur, &x);
    assigner_compute(n2, 3, &cur, &y);
    assert_memory_equal(x.parts, y.parts, P * sizeof(struct cluster_part));
    /* recomputing on a balanced map moves nothing */
    assert_int_equal(assigner_compute(n1, 3, &x, &z), 0);
    assert_memory_equal(x.parts, z.parts, P * sizeof(struct cluster_part));
    free(cur.parts);
    free(x.parts);
    free(y.parts);
    free(z.parts);
}

static void test_scale_out_minimal(void **state)
{
    struct assign_node three[] = {node("a"), node("b"), node("c")};
    struct assign_node four[] = {node("a"), node("b"), node("c"), node("d")};
    struct cluster_map cur = empty_map(), a = empty_map(), b = empty_map();
    assigner_compute(three, 3, &cur, &a);
    size_t moved = assigner_compute(four, 4, &a, &b);
    assert_int_equal(moved, P / 4); /* only the new node's share moves */
    assert_balanced(&b, four, 4);
    for (uint32_t p = 0; p < P; p++) {
        if (strcmp(a.parts[p].owner, b.parts[p].owner) != 0) {
            assert_string_equal(b.parts[p].owner, "d"); /* moves go only to the new node */
            assert_int_equal(b.parts[p].epoch, a.parts[p].epoch + 1);
        } else {
            assert_int_equal(b.parts[p].epoch, a.parts[p].epoch);
        }
    }
    free(cur.parts);
    free(a.parts);
    free(b.parts);
}

static void test_node_lost_and_drain(void **state)
{
    struct assign_node three[] = {node("a"), node("b"), node("c")};
    struct assign_node two[] = {node("a"), node("c")};
    struct cluster_map cur = empty_map(), a = empty_map(), b = empty_map(), c = empty_map();
    assigner_compute(three, 3, &cur, &a);
    size_t owned_b = assigner_count(&a, "b");
    assert_int_equal(assigner_compute(two, 2, &a, &b), owned_b); /* only b's partitions move */
    assert_balanced(&b, two, 2);
    /* draining: c gives everything away, while still alive */
    struct assign_node drain[] = {node("a"), node("c")};
    drain[1].draining = true;
    size_t owned_c = assigner_count(&b, "c");
    assert_int_equal(assigner_compute(drain, 2, &b, &c), owned_c);
    assert_int_equal(assigner_count(&c, "c"), 0);
    assert_int_equal(assigner_count(&c, "a"), P);
    free(cur.parts);
    free(a.parts);
    free(b.parts);
    free(c.parts);
}

static void test_no_eligible_nodes(void **state)
{
    struct assign_node ingest_only[] = {node("i1")};
    ingest_only[0].state = false;
    struct cluster_map cur = empty_map(), next = empty_map();
    snprintf(cur.parts[5].owner, CLUSTER_ID_MAX, "gone");
    cur.parts[5].epoch = 7;
    assert_int_equal(assigner_compute(ingest_only, 1, &cur, &next), 0);
    assert_string_equal(next.parts[5].owner, "gone");
    assert_int_equal(next.parts[5].epoch, 7);
    assert_int_equal(assigner_compute(NULL, 0, &cur, &next), 0);
    free(cur.parts);
    free(next.parts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initial_and_balanced),
        cmocka_unit_test(test_stable_and_deterministic),
        cmocka_unit_test(test_scale_out_minimal),
        cmocka_unit_test(test_node_lost_and_drain),
        cmocka_unit_test(test_no_eligible_nodes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
