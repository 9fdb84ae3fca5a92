/* The node registry: records in, assigner input out; the generation moves only when the
 * assigner's input changes; bad records are ignored; waits wake on change and on wake. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "coordinator/registry.h"

static eddy_err put(registry *r, const char *id, const char *roles, const char *addr)
{
    char json[512];
    int n = snprintf(json, sizeof(json),
                     "{\"id\":\"%s\",\"roles\":[%s],\"grpc_addr\":\"%s\",\"metrics_addr\":\"\","
                     "\"started_ms\":1}",
                     id, roles, addr);
    return registry_node_put(r, id, json, (size_t)n);
}

/* A state node's zone is part of the assigner's input. */
static void test_zone(void **state)
{
    (void)state;
    registry *r = registry_new();
    const char *z1 = "{\"id\":\"s\",\"roles\":[\"state\"],\"grpc_addr\":\"h:1\",\"zone\":\"z1\"}";
    const char *z2 = "{\"id\":\"s\",\"roles\":[\"state\"],\"grpc_addr\":\"h:2\",\"zone\":\"z2\"}";
    assert_int_equal(registry_node_put(r, "s", z1, strlen(z1)), EDDY_OK);
    uint64_t g1 = registry_generation(r);
    assert_int_equal(registry_node_put(r, "s", z1, strlen(z1)), EDDY_OK);
    assert_int_equal(registry_generation(r), g1);
    assert_int_equal(registry_node_put(r, "s", z2, strlen(z2)), EDDY_OK);
    assert_true(registry_generation(r) > g1);
    struct assign_node *nodes = NULL;
    size_t n = 0;
    assert_int_equal(registry_snapshot(r, &nodes, &n, NULL), EDDY_OK);
    assert_int_equal(n, 1);
    assert_string_equal(nodes[0].zone, "z2");
    free(nodes);
    registry_free(r);
}

static void test_nodes_and_generation(void **state)
{
    registry *r = registry_new();
    assert_non_null(r);
    uint64_t g0 = registry_generation(r);
    assert_int_equal(put(r, "b", "\"state\"", "h:1"), EDDY_OK);
    uint64_t g1 = registry_generation(r);
    assert_true(g1 > g0);
    /* an ingest-only node does not change the assigner's input */
    assert_int_equal(put(r, "i", "\"ingest\"", "h:2"), EDDY_OK);
    assert_int_equal(registry_generation(r), g1);
    /* a re-registration with a new address does not either */
    assert_int_equal(put(r, "b", "\"state\"", "h:9"), EDDY_OK);
    assert_int_equal(registry_generation(r), g1);
    /* gaining the state role does */
    assert_int_equal(put(r, "i", "\"ingest\",\"state\"", "h:2"), EDDY_OK);
    uint64_t g2 = registry_generation(r);
    assert_true(g2 > g1);
    assert_int_equal(put(r, "a", "\"state\"", "h:3"), EDDY_OK);
    assert_int_equal(registry_node_count(r), 3);
    assert_int_equal(registry_state_count(r), 3);

    struct assign_node *nodes = NULL;
    size_t n = 0;
    uint64_t g = 0;
    assert_int_equal(registry_snapshot(r, &nodes, &n, &g), EDDY_OK);
    assert_int_equal(n, 3);
    assert_int_equal(g, registry_generation(r));
    assert_string_equal(nodes[0].id, "a"); /* id order */
    assert_string_equal(nodes[1].id, "b");
    assert_string_equal(nodes[2].id, "i");
    for (size_t i = 0; i < n; i++) {
        assert_true(nodes[i].state);
        assert_false(nodes[i].draining);
    }
    free(nodes);

    uint64_t g3 = registry_generation(r);
    registry_node_delete(r, "b");
    assert_true(registry_generation(r) > g3);
    uint64_t g4 = registry_generation(r);
    registry_node_delete(r, "nobody");
    assert_int_equal(registry_generation(r), g4);
    assert_int_equal(registry_node_count(r), 2);

    registry_clear_nodes(r);
    assert_int_equal(registry_node_count(r), 0);
    assert_true(registry_generation(r) > g4);
    assert_int_equal(registry_snapshot(r, &nodes, &n, NULL), EDDY_OK);
    assert_int_equal(n, 0);
    free(nodes);
    registry_free(r);
}

static void test_drains(void **state)
{
    registry *r = registry_new();
    assert_int_equal(put(r, "a", "\"state\"", "h:1"), EDDY_OK);
    assert_int_equal(put(r, "b", "\"state\"", "h:2"), EDDY_OK);
    uint64_t g = registry_generation(r);
    /* a drain of an unknown node is kept, but changes nothing yet */
    assert_int_equal(registry_drain_put(r, "later"), EDDY_OK);
    assert_int_equal(registry_generation(r), g);
    assert_int_equal(registry_drain_put(r, "a"), EDDY_OK);
    assert_true(registry_generation(r) > g);
    g = registry_generation(r);
    assert_int_equal(registry_drain_put(r, "a"), EDDY_OK); /* again: no change */
    assert_int_equal(registry_generation(r), g);
    assert_int_equal(registry_drain_count(r), 2);

    /* the node registering after its drain key is draining at once */
    assert_int_equal(put(r, "later", "\"state\"", "h:3"), EDDY_OK);
    struct assign_node *nodes = NULL;
    size_t n = 0;
    assert_int_equal(registry_snapshot(r, &nodes, &n, NULL), EDDY_OK);
    assert_int_equal(n, 3);
    assert_true(nodes[0].draining);  /* a */
    assert_false(nodes[1].draining); /* b */
    assert_true(nodes[2].draining);  /* later */
    free(nodes);

    g = registry_generation(r);
    registry_drain_delete(r, "a");
    assert_true(registry_generation(r) > g);
    assert_int_equal(registry_snapshot(r, &nodes, &n, NULL), EDDY_OK);
    assert_false(nodes[0].draining);
    free(nodes);
    registry_clear_drains(r);
    assert_int_equal(registry_drain_count(r), 0);
    assert_int_equal(registry_drain_put(r, ""), EDDY_ERR_INVALID);
    registry_free(r);
}

static void test_bad_records(void **state)
{
    registry *r = registry_new();
    assert_int_equal(put(r, "a", "\"state\"", "h:1"), EDDY_OK);
    uint64_t g = registry_generation(r);
    /* the record's id must be the key's */
    assert_int_equal(put(r, "a-other", "\"state\"", "h:1") == EDDY_OK, 1);
    const char *wrong = "{\"id\":\"x\",\"roles\":[\"state\"],\"grpc_addr\":\"h:1\"}";
    assert_int_equal(registry_node_put(r, "y", wrong, strlen(wrong)), EDDY_ERR_CORRUPT);
    assert_int_equal(registry_node_count(r), 2);
    g = registry_generation(r);
    /* a known node whose record turns bad is forgotten */
    assert_int_equal(registry_node_put(r, "a", "{nope", 5), EDDY_ERR_CORRUPT);
    assert_int_equal(registry_node_count(r), 1);
    assert_true(registry_generation(r) > g);
    /* no grpc_addr: not a node record */
    const char *noaddr = "{\"id\":\"z\",\"roles\":[\"state\"]}";
    assert_int_equal(registry_node_put(r, "z", noaddr, strlen(noaddr)), EDDY_ERR_CORRUPT);
    assert_int_equal(registry_node_put(r, "", noaddr, strlen(noaddr)), EDDY_ERR_INVALID);
    assert_int_equal(registry_node_count(r), 1);
    registry_free(r);
}

static void test_wait(void **state)
{
    registry *r = registry_new();
    uint64_t g = registry_generation(r);
    /* nothing happens: returns after the timeout with the same generation */
    assert_int_equal(registry_wait(r, g, 20), g);
    /* a change that happened before the wait returns at once */
    assert_int_equal(put(r, "a", "\"state\"", "h:1"), EDDY_OK);
    assert_true(registry_wait(r, g, 10000) > g);
    registry_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zone),
        cmocka_unit_test(test_nodes_and_generation),
        cmocka_unit_test(test_drains),
        cmocka_unit_test(test_bad_records),
        cmocka_unit_test(test_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
