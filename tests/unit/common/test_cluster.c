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
    struct cluster_node n = {"node-1", ROLE_STATE, "127.0.0.1:7001", "127.0.0.1:9001", 1234, ""},
                        back;
    char *j = cluster_node_to_json(&n);
    assert_non_null(j);
    assert_int_equal(cluster_node_from_json(j, strlen(j), &back), EDDY_OK);
    assert_string_equal(back.id, "node-1");
    assert_int_equal(back.roles, ROLE_STATE);
    assert_string_equal(back.grpc_addr, "127.0.0.1:7001");
    assert_string_equal(back.metrics_addr, "127.0.0.1:9001");
    assert_int_equal(back.started_ms, 1234);
    assert_string_equal(back.zone, "");
    assert_null(strstr(j, "zone")); /* optional: absent when empty */
    free(j);
    snprintf(n.zone, sizeof(n.zone), "eu-west-1a");
    j = cluster_node_to_json(&n);
    assert_int_equal(cluster_node_from_json(j, strlen(j), &back), EDDY_OK);
    assert_string_equal(back.zone, "eu-west-1a");
    free(j);
    assert_int_equal(cluster_node_from_json("{\"id\":1}", 8, &back), EDDY_ERR_CORRUPT);
    assert_int_equal(cluster_node_from_json("not json", 8, &back), EDDY_ERR_CORRUPT);
}

static void test_map_round_trip(void **state)
{
    struct cluster_map m, back = {0};
    assert_int_equal(cluster_map_init(&m, 4), EDDY_OK);
    m.version = 9;
    cluster_part_set_single(&m.parts[0], "a");
    m.parts[0].epoch = 3;
    cluster_part_set_single(&m.parts[3], "b");
    m.parts[3].nreplicas = 3;
    snprintf(m.parts[3].replicas[1], CLUSTER_ID_MAX, "c");
    snprintf(m.parts[3].replicas[2], CLUSTER_ID_MAX, "a");
    m.parts[3].epoch = 1;
    char *j = cluster_map_to_json(&m);
    assert_non_null(strstr(j, "\"replicas\":[[\"a\"],[],[],[\"b\",\"c\",\"a\"]]"));
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

/* A map written by a coordinator without replicas reads as replicas = [owner]. */
static void test_map_without_replicas(void **state)
{
    (void)state;
    struct cluster_map m = {0};
    const char *old = "{\"partitions\":3,\"version\":2,\"owners\":[\"a\",\"\",\"b\"],"
                      "\"epochs\":[1,0,4]}";
    assert_int_equal(cluster_map_from_json(old, strlen(old), &m), EDDY_OK);
    assert_int_equal(m.parts[0].nreplicas, 1);
    assert_string_equal(m.parts[0].replicas[0], "a");
    assert_int_equal(m.parts[1].nreplicas, 0);
    assert_int_equal(m.parts[2].nreplicas, 1);
    assert_string_equal(m.parts[2].replicas[0], "b");
    assert_true(cluster_part_has(&m.parts[2], "b"));
    assert_false(cluster_part_has(&m.parts[2], "a"));
    assert_false(cluster_part_has(&m.parts[1], ""));
    cluster_map_release(&m);
}

static void test_map_bad_replicas(void **state)
{
    (void)state;
    struct cluster_map m = {0};
    const char *bad[] = {
        /* the leader is not first */
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1],\"replicas\":[[\"b\",\"a\"]]}",
        /* a repeated id */
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1],\"replicas\":[[\"a\",\"a\"]]}",
        /* replicas of an unassigned partition */
        "{\"partitions\":1,\"owners\":[\"\"],\"epochs\":[1],\"replicas\":[[\"a\"]]}",
        /* one list short */
        "{\"partitions\":2,\"owners\":[\"a\",\"b\"],\"epochs\":[1,1],\"replicas\":[[\"a\"]]}",
        /* more than CLUSTER_REPLICAS_MAX */
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1],"
        "\"replicas\":[[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\"]]}",
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1],\"replicas\":[[\"a\",\"\"]]}",
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1],\"replicas\":[\"a\"]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cluster_map_from_json(bad[i], strlen(bad[i]), &m), EDDY_ERR_CORRUPT);
    cluster_map_release(&m);
    const char *ok = "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1],"
                     "\"replicas\":[[\"a\",\"b\",\"c\",\"d\",\"e\"]]}";
    assert_int_equal(cluster_map_from_json(ok, strlen(ok), &m), EDDY_OK);
    assert_int_equal(m.parts[0].nreplicas, 5);
    assert_int_equal(cluster_part_index(&m.parts[0], "a"), 0);
    assert_int_equal(cluster_part_index(&m.parts[0], "e"), 4);
    assert_int_equal(cluster_part_index(&m.parts[0], "f"), -1);
    cluster_map_release(&m);
}

static void test_config(void **state)
{
    (void)state;
    struct cluster_config c = {.partitions = 64, .replication_factor = 3, .min_insync = 2}, back;
    char *j = cluster_config_to_json(&c);
    assert_non_null(j);
    assert_int_equal(cluster_config_from_json(j, strlen(j), &back), EDDY_OK);
    assert_memory_equal(&c, &back, sizeof(c));
    free(j);
    const char *old = "{\"partitions\":16}"; /* an older cluster: R = 1 */
    assert_int_equal(cluster_config_from_json(old, strlen(old), &back), EDDY_OK);
    assert_int_equal(back.partitions, 16);
    assert_int_equal(back.replication_factor, 1);
    assert_int_equal(back.min_insync, 1);
    const char *bad[] = {"{\"partitions\":16,\"replication_factor\":0}",
                         "{\"partitions\":16,\"replication_factor\":6}",
                         "{\"partitions\":16,\"replication_factor\":2,\"min_insync\":3}",
                         "{\"partitions\":16,\"min_insync\":2}", /* above the default R */
                         "{\"partitions\":16,\"min_insync\":0}",
                         "{\"partitions\":16,\"replication_factor\":\"2\"}",
                         "{\"partitions\":0}", "{\"partitions\":2.5}", "{}", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cluster_config_from_json(bad[i], strlen(bad[i]), &back),
                         EDDY_ERR_CORRUPT);
}

static void test_isr(void **state)
{
    (void)state;
    struct cluster_isr r = {.epoch = 7, .nisr = 2}, back;
    snprintf(r.leader, sizeof(r.leader), "s1");
    snprintf(r.isr[0], CLUSTER_ID_MAX, "s1");
    snprintf(r.isr[1], CLUSTER_ID_MAX, "s3");
    char *j = cluster_isr_to_json(&r);
    assert_non_null(j);
    assert_string_equal(j, "{\"isr\":[\"s1\",\"s3\"],\"epoch\":7,\"leader\":\"s1\"}");
    assert_int_equal(cluster_isr_from_json(j, strlen(j), &back), EDDY_OK);
    assert_memory_equal(&r, &back, sizeof(r));
    assert_true(cluster_isr_has(&back, "s3"));
    assert_false(cluster_isr_has(&back, "s2"));
    assert_false(cluster_isr_has(&back, ""));
    assert_int_equal(back.npromoted, 0);
    assert_int_equal(cluster_isr_nholders(&back), 2);
    free(j);
    /* a promoted leader in sync alone keeps the set it came from */
    struct cluster_isr lone = {.epoch = 8, .nisr = 1, .npromoted = 2};
    snprintf(lone.leader, sizeof(lone.leader), "s3");
    snprintf(lone.isr[0], CLUSTER_ID_MAX, "s3");
    snprintf(lone.promoted_from[0], CLUSTER_ID_MAX, "s1");
    snprintf(lone.promoted_from[1], CLUSTER_ID_MAX, "s3");
    j = cluster_isr_to_json(&lone);
    assert_non_null(j);
    assert_string_equal(
        j, "{\"isr\":[\"s3\"],\"epoch\":8,\"leader\":\"s3\",\"promoted_from\":[\"s1\",\"s3\"]}");
    assert_int_equal(cluster_isr_from_json(j, strlen(j), &back), EDDY_OK);
    assert_memory_equal(&lone, &back, sizeof(lone));
    assert_false(cluster_isr_has(&back, "s1"));
    assert_true(cluster_isr_holds(&back, "s1"));
    assert_true(cluster_isr_holds(&back, "s3"));
    assert_false(cluster_isr_holds(&back, "s2"));
    assert_int_equal(cluster_isr_nholders(&back), 2);
    free(j);
    const char *bad[] = {"{\"epoch\":1,\"leader\":\"a\",\"isr\":[]}",
                         "{\"epoch\":1,\"leader\":\"a\",\"isr\":[\"b\"]}", /* leader not in */
                         "{\"epoch\":1,\"leader\":\"a\",\"isr\":[\"a\",\"a\"]}",
                         "{\"epoch\":1,\"leader\":\"a\",\"isr\":[\"a\",\"\"]}",
                         "{\"epoch\":1,\"leader\":\"a\",\"isr\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\"]}",
                         "{\"leader\":\"a\",\"isr\":[\"a\"]}",
                         "{\"epoch\":-1,\"leader\":\"a\",\"isr\":[\"a\"]}",
                         "{\"epoch\":1,\"leader\":\"\",\"isr\":[\"a\"]}",
                         "{\"epoch\":1,\"leader\":\"a\",\"isr\":[\"a\"],\"promoted_from\":\"b\"}",
                         "{\"epoch\":1,\"leader\":\"a\",\"isr\":[\"a\"],\"promoted_from\":[\"b\",\"b\"]}",
                         "[]", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cluster_isr_from_json(bad[i], strlen(bad[i]), &back), EDDY_ERR_CORRUPT);
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

/* Found by fuzz_etcd_json: a number beyond what the field's integer holds (1.8e79 as a
 * node's started_ms) was converted anyway, which is undefined behaviour; such a record is
 * refused like any other malformed one. */
static void test_numbers_out_of_range(void **state)
{
    static const char *const nodes[] = {
        "{\"id\":\"n-1\",\"grpc_addr\":\"h:1\",\"started_ms\":1.8e79}",
        "{\"id\":\"n-1\",\"grpc_addr\":\"h:1\",\"started_ms\":-1}",
    };
    struct cluster_node n;
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++)
        assert_int_equal(cluster_node_from_json(nodes[i], strlen(nodes[i]), &n), EDDY_ERR_CORRUPT);
    const char *ok = "{\"id\":\"n-1\",\"grpc_addr\":\"h:1\",\"started_ms\":1800000000000}";
    assert_int_equal(cluster_node_from_json(ok, strlen(ok), &n), EDDY_OK);
    assert_true(n.started_ms == 1800000000000LL);

    static const char *const maps[] = {
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1e300]}",
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[-3]}",
        "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[1],\"version\":-1e30}",
    };
    struct cluster_map m = {0};
    for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++)
        assert_int_equal(cluster_map_from_json(maps[i], strlen(maps[i]), &m), EDDY_ERR_CORRUPT);
    const char *good = "{\"partitions\":1,\"owners\":[\"a\"],\"epochs\":[7],\"version\":3}";
    assert_int_equal(cluster_map_from_json(good, strlen(good), &m), EDDY_OK);
    assert_int_equal(m.parts[0].epoch, 7);
    assert_int_equal(m.version, 3);
    cluster_map_release(&m);
}

/* Found by fuzz_etcd_json: cJSON printed an epoch of 4999999999999999 as 5e+15 (15
 * significant digits are "close enough" to it), so a map did not read back as written. */
static void test_large_numbers_round_trip(void **state)
{
    struct cluster_map m = {0}, back = {0};
    assert_int_equal(cluster_map_init(&m, 2), EDDY_OK);
    cluster_part_set_single(&m.parts[0], "n-1");
    m.parts[0].epoch = 4999999999999999ULL;
    m.parts[1].epoch = 9007199254740991ULL; /* 2^53 - 1: the largest exact in a double */
    m.version = 4503599627370497ULL;
    char *j = cluster_map_to_json(&m);
    assert_non_null(j);
    assert_int_equal(cluster_map_from_json(j, strlen(j), &back), EDDY_OK);
    assert_true(back.parts[0].epoch == 4999999999999999ULL);
    assert_true(back.parts[1].epoch == 9007199254740991ULL);
    assert_true(back.version == 4503599627370497ULL);
    free(j);
    cluster_map_release(&m);
    cluster_map_release(&back);

    struct cluster_checkpoint c = {.id = "x", .seq = 4999999999999999ULL, .node = "n-1",
                                   .created_ms = 1800000000000LL},
                              cb;
    j = cluster_checkpoint_to_json(&c);
    assert_non_null(j);
    assert_int_equal(cluster_checkpoint_from_json(j, strlen(j), &cb), EDDY_OK);
    assert_true(cb.seq == 4999999999999999ULL);
    assert_true(cb.created_ms == 1800000000000LL);
    free(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_node_round_trip),
        cmocka_unit_test(test_map_round_trip),
        cmocka_unit_test(test_map_without_replicas),
        cmocka_unit_test(test_map_bad_replicas),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_isr),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_move_round_trip),
        cmocka_unit_test(test_key_partition),
        cmocka_unit_test(test_numbers_out_of_range),
        cmocka_unit_test(test_large_numbers_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
