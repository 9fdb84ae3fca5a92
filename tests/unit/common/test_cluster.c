/* Cluster records: JSON round trips and rejection of malformed records. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/cluster.h"

static void test_roles(void **state)
{
    assert_int_equal(cluster_parse_roles("ingest"), ROLE_INGEST);
    assert_int_equal(cluster_parse_roles("state"), ROLE_STATE);
    assert_int_equal(cluster_parse_roles("ingest,state"), ROLE_INGEST | ROLE_STATE);
    assert_int_equal(cluster_parse_roles("state,ingest"), ROLE_INGEST | ROLE_STATE);
    assert_int_equal(cluster_parse_roles("coordinator"), -1);
    assert_int_equal(cluster_parse_roles(""), -1);
}

static void test_node_round_trip(void **state)
{
    struct cluster_node n = {"node-1", ROLE_STATE, "127.0.0.1:7001", "127.0.0.1:9001", 1234},
                        back;
    char *j = cluster_node_to_json(&n);
    assert_non_null(j);
    assert_int_equal(cluster_node_from_json(j, strlen(j), &back), EDDY_OK);
    assert_string_equal(back.id, "node-1");
    assert_int_equal(back.roles, ROLE_STATE);
    assert_string_equal(back.grpc_addr, "127.0.0.1:7001");
    assert_string_equal(back.metrics_addr, "127.0.0.1:9001");
    assert_int_equal(back.started_ms, 1234);
    free(j);
    assert_int_equal(cluster_node_from_json("{\"id\":1}", 8, &back), EDDY_ERR_CORRUPT);
    assert_int_equal(cluster_node_from_json("not json", 8, &back), EDDY_ERR_CORRUPT);
}

static void test_map_round_trip(void **state)
{
    struct cluster_map m, back = {0};
    assert_int_equal(cluster_map_init(&m, 4), EDDY_OK);
    m.version = 9;
    snprintf(m.parts[0].owner, CLUSTER_ID_MAX, "a");
    m.parts[0].epoch = 3;
    snprintf(m.parts[3].owner, CLUSTER_ID_MAX, "b");
    m.parts[3].epoch = 1;
    char *j = cluster_map_to_json(&m);
    assert_int_equal(cluster_map_from_json(j, strlen(j), &back), EDDY_OK);
    assert_int_equal(back.nparts, 4);
    assert_int_equal(back.version, 9);
    assert_memory_equal(back.parts, m.parts, 4 * sizeof(*m.parts));
    free(j);
    const char *bad = "{\"partitions\":3,\"owners\":[\"a\"],\"epochs\":[1]}";
    assert_int_equal(cluster_map_from_json(bad, strlen(bad), &back), EDDY_ERR_CORRUPT);
    assert_int_equal(back.nparts, 4); /* unchanged on error */
    cluster_map_release(&m);
    cluster_map_release(&back);
}

static void test_checkpoint_round_trip(void **state)
{
    struct cluster_checkpoint c = {.seq = 123456789012ULL, .bytes = 4096, .crc = 0xdeadbeef,
                                   .created_ms = 1767225600123LL};
    snprintf(c.id, sizeof(c.id), "p00003-00000000123456789012.ckp");
    snprintf(c.path, sizeof(c.path), "/ckp/%s", c.id);
    snprintf(c.node, sizeof(c.node), "state-1");
    char *json = cluster_checkpoint_to_json(&c);
    assert_non_null(json);
    struct cluster_checkpoint d;
    assert_int_equal(cluster_checkpoint_from_json(json, strlen(json), &d), EDDY_OK);
    assert_memory_equal(&c, &d, sizeof(c));
    free(json);
    const char *bad[] = {"", "[]", "{\"id\":\"x\",\"node\":\"n\"}",          /* no seq */
                         "{\"id\":\"x\",\"seq\":1}",                             /* no node */
                         "{\"id\":\"x\",\"node\":\"n\",\"seq\":-1}",
                         "{\"id\":\"x\",\"node\":\"n\",\"seq\":1,\"crc\":4294967296}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cluster_checkpoint_from_json(bad[i], strlen(bad[i]), &d),
                         EDDY_ERR_CORRUPT);
}

static void test_move_round_trip(void **state)
{
    (void)state;
    struct cluster_move m = {.partition = 17, .epoch = 4, .phase = MOVE_FLIPPED,
                             .started_ms = 1795626608468};
    snprintf(m.from, sizeof(m.from), "s1");
    snprintf(m.to, sizeof(m.to), "s2");
    char *json = cluster_move_to_json(&m);
    assert_non_null(json);
    struct cluster_move back;
    assert_int_equal(cluster_move_from_json(json, strlen(json), &back), EDDY_OK);
    assert_int_equal(back.partition, 17);
    assert_int_equal(back.epoch, 4);
    assert_int_equal(back.phase, MOVE_FLIPPED);
    assert_int_equal(back.started_ms, 1795626608468);
    assert_string_equal(back.from, "s1");
    assert_string_equal(back.to, "s2");
    free(json);
    const char *bad[] = {"{\"partition\":1,\"from\":\"a\",\"to\":\"b\",\"epoch\":1,\"phase\":\"x\"}",
                         "{\"partition\":1,\"from\":\"\",\"to\":\"b\",\"epoch\":1,\"phase\":\"copy\"}",
                         "{\"partition\":70000,\"from\":\"a\",\"to\":\"b\",\"epoch\":1,"
                         "\"phase\":\"copy\"}",
                         "not json"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cluster_move_from_json(bad[i], strlen(bad[i]), &back), EDDY_ERR_CORRUPT);
    assert_string_equal(cluster_move_phase_name(MOVE_COPY), "copy");
    assert_string_equal(cluster_move_phase_name(MOVE_DONE), "done");
}

static void test_key_partition(void **state)
{
    (void)state;
    uint32_t p = 99;
    assert_true(cluster_key_partition("/eddy/c/moves/0", "/eddy/c/moves/", 16, &p));
    assert_int_equal(p, 0);
    assert_true(cluster_key_partition("/eddy/c/moves/15", "/eddy/c/moves/", 16, &p));
    assert_int_equal(p, 15);
    const char *bad[] = {"/eddy/c/moves/16", "/eddy/c/moves/", "/eddy/c/moves/+1",
                         "/eddy/c/moves/ 1", "/eddy/c/moves/-1", "/eddy/c/moves/1x",
                         "/eddy/c/moves/000001", "/eddy/c/nodes/1", "/eddy/c/moves/1/2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(cluster_key_partition(bad[i], "/eddy/c/moves/", 16, &p));
    assert_false(cluster_key_partition(NULL, "/eddy/c/moves/", 16, &p));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_node_round_trip),
        cmocka_unit_test(test_map_round_trip),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_move_round_trip),
        cmocka_unit_test(test_key_partition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
