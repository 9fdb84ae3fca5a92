/* ClusterStatus from an etcd snapshot (status_build) and the config record parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "coordinator/leader.h"
#include "coordinator/status.h"

static struct etcd_kv kv(const char *key, const char *value)
{
    struct etcd_kv k = {0};
    k.key = (char *)key;
    k.value = (char *)value;
    k.value_len = strlen(value);
    k.mod_revision = 5;
    return k;
}

static void test_parse_config(void **state)
{
    const char *ok = "{\"partitions\":256}";
    assert_int_equal(leader_parse_config(ok, strlen(ok)), 256);
    const char *bad[] = {"{\"partitions\":0}", "{\"partitions\":65536}", "{\"partitions\":1.5}",
                         "{\"partitions\":\"8\"}", "{}", "[]", "{", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(leader_parse_config(bad[i], strlen(bad[i])), 0);
}

static void test_build(void **state)
{
    struct etcd_kv nodes[] = {
        kv("/eddy/c/nodes/n1", "{\"id\":\"n1\",\"roles\":[\"ingest\",\"state\"],"
                               "\"grpc_addr\":\"h:1\",\"metrics_addr\":\"h:9\",\"started_ms\":42,"
                               "\"zone\":\"z1\"}"),
        kv("/eddy/c/nodes/n2", "{\"id\":\"n2\",\"roles\":[\"state\"],\"grpc_addr\":\"h:2\"}"),
        kv("/eddy/c/nodes/n3", "not json"),                           /* skipped */
        kv("/eddy/c/nodes/x/y", "{\"id\":\"y\",\"grpc_addr\":\"h\"}"), /* not directly under */
        kv("/eddy/c/nodes/n4", "{\"id\":\"n4\",\"roles\":[\"ingest\"],\"grpc_addr\":\"h:4\"}"),
    };
    struct etcd_kv drains[] = {kv("/eddy/c/drain/ghost", ""), kv("/eddy/c/drain/n2", "")};
    struct etcd_kvs nk = {nodes, 5}, dk = {drains, 2};
    struct etcd_kv config =
        kv("/eddy/c/config", "{\"partitions\":4,\"replication_factor\":2,\"min_insync\":2}");
    struct etcd_kv lead = kv("/eddy/c/leader", "coord-a");
    struct etcd_kv assign = kv("/eddy/c/assignment",
                               "{\"partitions\":4,\"version\":7,\"owners\":[\"n1\",\"n1\",\"n2\",\"\"],"
                               "\"epochs\":[1,2,3,0],"
                               "\"replicas\":[[\"n1\",\"n2\"],[\"n1\"],[\"n2\",\"n1\"],[]]}");
    struct etcd_kv ckpts[] = {
        kv("/eddy/c/checkpoints/1",
           "{\"id\":\"p00001-00000000000000000070.ckp\",\"seq\":70,\"bytes\":4096,"
           "\"crc\":3735928559,\"path\":\"/ck/p00001-00000000000000000070.ckp\","
           "\"node\":\"n1\",\"created_ms\":1000}"),
        kv("/eddy/c/checkpoints/2", "not json"),                           /* skipped */
        kv("/eddy/c/checkpoints/9", "{\"id\":\"x\",\"seq\":1,\"node\":\"n1\"}"), /* no such p */
        kv("/eddy/c/checkpoints/x", "{\"id\":\"x\",\"seq\":1,\"node\":\"n1\"}"), /* not a p */
    };
    struct etcd_kvs ck = {ckpts, 4};
    /* key order is textual: moves/10 comes before moves/2; the answer is by partition */
    struct etcd_kv moves[] = {
        kv("/eddy/c/moves/10", "{\"partition\":10,\"from\":\"n1\",\"to\":\"n2\",\"epoch\":4,"
                               "\"phase\":\"copy\",\"started_ms\":3000}"),
        kv("/eddy/c/moves/2", "{\"partition\":2,\"from\":\"n2\",\"to\":\"n1\",\"epoch\":3,"
                              "\"phase\":\"flipped\",\"started_ms\":1500}"),
        kv("/eddy/c/moves/3", "{\"partition\":3,\"phase\":\"bogus\"}"), /* skipped */
    };
    struct etcd_kvs mk = {moves, 3};
    /* n1 owns 0 and 1 (its rate for 2 is stale: n2 owns it now) */
    struct etcd_kv loads[] = {
        kv("/eddy/c/load/n1", "{\"node\":\"n1\",\"rates\":[[0,10.5],[1,4],[2,100]]}"),
        kv("/eddy/c/load/n2", "not json"),
    };
    struct etcd_kvs lk = {loads, 2};
    struct etcd_kv isr[] = {
        kv("/eddy/c/isr/0", "{\"epoch\":1,\"leader\":\"n1\",\"isr\":[\"n1\",\"n2\"]}"),
        kv("/eddy/c/isr/1", "{\"epoch\":2,\"leader\":\"n1\",\"isr\":[\"n1\"],"
                            "\"promoted_from\":[\"n0\",\"n1\"]}"),
        kv("/eddy/c/isr/2", "{\"epoch\":3,\"leader\":\"n2\",\"isr\":[]}"), /* skipped */
    };
    struct etcd_kvs ik = {isr, 3};
    struct status_snapshot snap = {"c", 99, &nk, &dk, &config, &lead, &assign, &ck, &mk, &lk,
                                   &ik, 3500};
    struct status_reply r;
    assert_int_equal(status_build(&snap, "coord-b", &r), EDDY_OK);
    const Eddy__Cluster__V1__ClusterStatusResponse *m = &r.msg;
    assert_string_equal(m->cluster, "c");
    assert_int_equal(m->config_partitions, 4);
    assert_string_equal(m->leader_id, "coord-a");
    assert_string_equal(m->answered_by, "coord-b");
    assert_int_equal(m->assignment_version, 7);
    assert_int_equal(m->revision, 99);
    assert_int_equal(m->n_partitions, 4);
    assert_string_equal(m->partitions[1]->owner, "n1");
    assert_int_equal(m->partitions[1]->epoch, 2);
    assert_int_equal(m->partitions[3]->partition, 3);
    assert_string_equal(m->partitions[3]->owner, "");
    assert_int_equal(m->replication_factor, 2);
    assert_int_equal(m->min_insync, 2);
    /* replicas from the map, in-sync sets from the isr/ records that decode */
    assert_int_equal(m->partitions[0]->n_replicas, 2);
    assert_string_equal(m->partitions[0]->replicas[0], "n1");
    assert_string_equal(m->partitions[0]->replicas[1], "n2");
    assert_int_equal(m->partitions[0]->n_in_sync, 2);
    assert_string_equal(m->partitions[0]->in_sync[1], "n2");
    assert_int_equal(m->partitions[0]->in_sync_epoch, 1);
    assert_int_equal(m->partitions[0]->n_promoted_from, 0);
    /* a promoted leader in sync alone: the set it came from, as its record keeps it */
    assert_int_equal(m->partitions[1]->n_in_sync, 1);
    assert_int_equal(m->partitions[1]->n_promoted_from, 2);
    assert_string_equal(m->partitions[1]->promoted_from[0], "n0");
    assert_string_equal(m->partitions[1]->promoted_from[1], "n1");
    assert_int_equal(m->partitions[2]->n_replicas, 2);
    assert_int_equal(m->partitions[2]->n_in_sync, 0);
    assert_int_equal(m->partitions[2]->n_promoted_from, 0);
    assert_int_equal(m->partitions[3]->n_replicas, 0);
    /* checkpoint records: partition 1 has one, 2.5 s old; the others none */
    assert_int_equal(m->partitions[1]->checkpoint_seq, 70);
    assert_int_equal(m->partitions[1]->checkpoint_bytes, 4096);
    assert_int_equal(m->partitions[1]->checkpoint_age_ms, 2500);
    assert_string_equal(m->partitions[1]->checkpoint_node, "n1");
    for (int p = 0; p < 4; p++) {
        if (p == 1)
            continue;
        assert_int_equal(m->partitions[p]->checkpoint_seq, 0);
        assert_int_equal(m->partitions[p]->checkpoint_age_ms, -1);
        assert_string_equal(m->partitions[p]->checkpoint_node, "");
    }
    assert_int_equal(m->n_draining, 2);
    assert_string_equal(m->draining[0], "ghost");
    assert_string_equal(m->draining[1], "n2");
    assert_int_equal(m->n_nodes, 3);
    assert_string_equal(m->nodes[0]->id, "n1");
    assert_int_equal(m->nodes[0]->n_roles, 2);
    assert_string_equal(m->nodes[0]->roles[0], "ingest");
    assert_string_equal(m->nodes[0]->roles[1], "state");
    assert_string_equal(m->nodes[0]->metrics_addr, "h:9");
    assert_int_equal(m->nodes[0]->started_ms, 42);
    assert_int_equal(m->nodes[0]->partitions_owned, 2);
    assert_int_equal(m->nodes[0]->partitions_followed, 1);
    assert_string_equal(m->nodes[0]->zone, "z1");
    assert_int_equal(m->nodes[1]->partitions_followed, 1);
    assert_string_equal(m->nodes[1]->zone, "");
    assert_false(m->nodes[0]->draining);
    assert_string_equal(m->nodes[1]->id, "n2");
    assert_int_equal(m->nodes[1]->partitions_owned, 1);
    assert_true(m->nodes[1]->draining);
    assert_string_equal(m->nodes[2]->id, "n4");
    assert_int_equal(m->nodes[2]->partitions_owned, 0);
    assert_true(m->nodes[0]->events_per_second == 14.5);
    assert_true(m->nodes[1]->events_per_second == -1); /* its record does not decode */
    assert_true(m->nodes[2]->events_per_second == -1); /* no record */
    assert_int_equal(m->n_moves, 2);
    assert_int_equal(m->moves[0]->partition, 2);
    assert_string_equal(m->moves[0]->from, "n2");
    assert_string_equal(m->moves[0]->to, "n1");
    assert_string_equal(m->moves[0]->phase, "flipped");
    assert_int_equal(m->moves[0]->age_ms, 2000);
    assert_int_equal(m->moves[1]->partition, 10);
    assert_string_equal(m->moves[1]->phase, "copy");
    assert_int_equal(m->moves[1]->epoch, 4);

    /* it packs */
    size_t len = protobuf_c_message_get_packed_size(&m->base);
    assert_true(len > 0);
    status_release(&r);
    assert_null(r.mem);
}

static void test_empty_and_corrupt(void **state)
{
    struct etcd_kv none = {0};
    struct etcd_kvs empty = {NULL, 0};
    struct status_snapshot snap = {"c", 3, &empty, &empty, &none, &none, &none, NULL, NULL, NULL,
                                   NULL, 0};
    struct status_reply r;
    assert_int_equal(status_build(&snap, "me", &r), EDDY_OK);
    assert_int_equal(r.msg.config_partitions, 0);
    assert_string_equal(r.msg.leader_id, "");
    assert_int_equal(r.msg.n_partitions, 0);
    assert_int_equal(r.msg.n_nodes, 0);
    assert_int_equal(r.msg.assignment_version, 0);
    status_release(&r);

    struct etcd_kv bad = kv("/eddy/c/assignment", "{\"partitions\":2,\"owners\":[\"a\"]}");
    snap.assignment = &bad;
    assert_int_equal(status_build(&snap, "me", &r), EDDY_ERR_CORRUPT);
    assert_null(r.mem);
    struct etcd_kv badcfg = kv("/eddy/c/config", "{\"partitions\":-1}");
    snap.assignment = &none;
    snap.config = &badcfg;
    assert_int_equal(status_build(&snap, "me", &r), EDDY_ERR_CORRUPT);
    status_release(&r); /* harmless after a failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_config),
        cmocka_unit_test(test_build),
        cmocka_unit_test(test_empty_and_corrupt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
