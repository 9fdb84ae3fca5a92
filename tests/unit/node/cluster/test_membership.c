/* node/cluster/membership.c against a real etcd: joining waits for the cluster config,
 * registration on the session's lease, the partition map and node set followed through
 * watches (owners, addresses, epochs, change callbacks), leaving revokes the registration,
 * and the session rule: without etcd the node stops being alive, and registers again once
 * etcd is back; and the static membership of a --dev node. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/etcd.h"
#include "common/log.h"
#include "node/cluster/membership.h"
#include "tests/support/etcd_proc.h"

#define P 8

struct seen {
    _Atomic int changes;
    _Atomic int alive;   /* last on_alive value: 1, 0; -1 before any */
};

static void on_change(void *ud, membership *m)
{
    struct seen *s = ud;
    atomic_fetch_add(&s->changes, 1);
}

static void on_alive(void *ud, bool alive)
{
    struct seen *s = ud;
    atomic_store(&s->alive, alive ? 1 : 0);
}

/* Wait (10 s at most) until on_alive last reported 'want'. */
static bool alive_reported(struct seen *s, int want)
{
    int64_t deadline = now_ms() + 10000;
    while (atomic_load(&s->alive) != want && now_ms() < deadline)
        sleep_ms(10);
    return atomic_load(&s->alive) == want;
}

static membership *join(struct etcd_proc *ep, const char *id, const char *addr, struct seen *s,
                        int64_t wait_ms, eddy_err *err)
{
    struct membership_opts mo = {ep->url, "m", id, ROLE_STATE, addr, "", "rack-a", 2, 1000,
                                 on_alive, s, on_change, s, NULL};
    membership *m = NULL;
    char why[256];
    *err = membership_start(&mo, wait_ms, &m, why, sizeof(why));
    return m;
}

/* Write the map: partition p owned by owners[p % n] at epoch 'epoch'. */
static void put_map(etcd_client *ec, const char *const *owners, size_t n, uint64_t version,
                    uint64_t epoch)
{
    struct cluster_map m;
    assert_int_equal(cluster_map_init(&m, P), EDDY_OK);
    m.version = version;
    for (uint32_t p = 0; p < P; p++) {
        snprintf(m.parts[p].owner, sizeof(m.parts[p].owner), "%s", owners[p % n]);
        m.parts[p].epoch = epoch;
    }
    char *json = cluster_map_to_json(&m);
    assert_int_equal(etcd_put(ec, "/eddy/m/assignment", json, strlen(json), 0, NULL), EDDY_OK);
    free(json);
    cluster_map_release(&m);
}

static bool wait_for(membership *m, bool (*cond)(membership *m, void *ud), void *ud)
{
    int64_t deadline = now_ms() + 10000;
    while (!cond(m, ud)) {
        if (now_ms() > deadline)
            return false;
        membership_wait_change(m, membership_version(m), 100);
    }
    return true;
}

static bool owner_known(membership *m, void *ud)
{
    char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
    uint64_t epoch;
    return membership_owner(m, *(uint32_t *)ud, owner, &epoch, addr);
}

static bool owns_none(membership *m, void *ud)
{
    return membership_owned_count(m) == 0;
}

static bool owns_all(membership *m, void *ud)
{
    return membership_owned_count(m) == P;
}

static bool one_state_node(membership *m, void *ud)
{
    struct cluster_node nodes[4];
    return membership_state_nodes(m, nodes, 4) == 1;
}

static void test_membership_follows_the_cluster(void **state)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct etcd_proc *ep = etcd_proc_new();
    assert_non_null(ep);
    etcd_client *ec = etcd_client_new(ep->url, 2000);
    assert_non_null(ec);
    struct seen s1 = {0, -1}, s2 = {0, -1};
    eddy_err err;

    /* no cluster config yet: joining gives up after its wait */
    assert_null(join(ep, "n1", "127.0.0.1:1001", &s1, 300, &err));
    assert_int_equal(err, EDDY_ERR_TIMEOUT);

    const char *cfg = "{\"partitions\":8}";
    assert_int_equal(etcd_put(ec, "/eddy/m/config", cfg, strlen(cfg), 0, NULL), EDDY_OK);
    const char *both[] = {"n1", "n2"};
    put_map(ec, both, 2, 1, 3);
    membership *m1 = join(ep, "n1", "127.0.0.1:1001", &s1, 5000, &err);
    assert_int_equal(err, EDDY_OK);
    assert_non_null(m1);
    assert_int_equal(membership_partitions(m1), P);
    assert_string_equal(membership_self(m1), "n1");
    assert_true(membership_alive(m1));
    assert_true(alive_reported(&s1, 1)); /* readiness follows: reported by the session's thread */

    /* registered on the session's lease, with the address others dial */
    struct etcd_kv kv;
    bool found = false;
    assert_int_equal(etcd_get(ec, "/eddy/m/nodes/n1", &kv, &found), EDDY_OK);
    assert_true(found);
    assert_non_null(strstr(kv.value, "127.0.0.1:1001"));
    struct cluster_node rec;
    assert_int_equal(cluster_node_from_json(kv.value, kv.value_len, &rec), EDDY_OK);
    assert_string_equal(rec.zone, "rack-a"); /* --zone, for the assigner's zone spread */
    assert_int_equal(kv.lease, membership_lease(m1));
    etcd_kv_release(&kv);

    uint64_t epoch = 0;
    assert_true(membership_owns(m1, 0, &epoch));
    assert_int_equal(epoch, 3);
    assert_false(membership_owns(m1, 1, &epoch));
    assert_int_equal(membership_owned_count(m1), P / 2);
    /* n2 is named by the map but not registered: no address to route to yet */
    char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
    assert_false(membership_owner(m1, 1, owner, &epoch, addr));

    membership *m2 = join(ep, "n2", "127.0.0.1:1002", &s2, 5000, &err);
    assert_non_null(m2);
    uint32_t p1 = 1;
    assert_true(wait_for(m1, owner_known, &p1));
    assert_true(membership_owner(m1, 1, owner, &epoch, addr));
    assert_string_equal(owner, "n2");
    assert_string_equal(addr, "127.0.0.1:1002");
    assert_true(membership_addr(m1, "n2", addr));

    /* a new map: everything to n2 at epoch 4 */
    int changes = atomic_load(&s1.changes);
    const char *only2[] = {"n2"};
    put_map(ec, only2, 1, 2, 4);
    assert_true(wait_for(m1, owns_none, NULL));
    int64_t deadline = now_ms() + 5000; /* the callback runs after the view changed */
    while (atomic_load(&s1.changes) == changes && now_ms() < deadline)
        sleep_ms(10);
    assert_true(atomic_load(&s1.changes) > changes);
    assert_true(wait_for(m2, owns_all, NULL));
    assert_true(membership_owns(m2, 0, &epoch));
    assert_int_equal(epoch, 4);

    /* leaving revokes the registration at once: the other node sees one state node */
    membership_stop(m2);
    assert_true(wait_for(m1, one_state_node, NULL));
    assert_int_equal(etcd_get(ec, "/eddy/m/nodes/n2", &kv, &found), EDDY_OK);
    assert_false(found);
    etcd_kv_release(&kv);

    /* etcd gone: the session cannot be known alive, the node stops acknowledging */
    etcd_proc_kill(ep);
    deadline = now_ms() + 10000;
    while (membership_alive(m1) && now_ms() < deadline)
        sleep_ms(20);
    assert_false(membership_alive(m1));
    assert_true(alive_reported(&s1, 0));
    /* etcd back (same data): a new session, registered again, alive */
    assert_true(etcd_proc_run(ep));
    deadline = now_ms() + 15000;
    while (!membership_alive(m1) && now_ms() < deadline)
        sleep_ms(20);
    assert_true(membership_alive(m1));
    assert_true(alive_reported(&s1, 1));
    deadline = now_ms() + 5000;
    found = false;
    while (!found && now_ms() < deadline) {
        assert_int_equal(etcd_get(ec, "/eddy/m/nodes/n1", &kv, &found), EDDY_OK);
        if (found)
            assert_int_equal(kv.lease, membership_lease(m1));
        etcd_kv_release(&kv);
        if (!found)
            sleep_ms(20);
    }
    assert_true(found);

    membership_stop(m1);
    etcd_client_free(ec);
    etcd_proc_free(ep);
}

/* --dev: the static map gives every partition to the node itself, at epoch 1, for ever,
 * with no etcd at all. */
static void test_static_membership_owns_everything(void **state)
{
    (void)state;
    struct seen s = {0, -1};
    struct membership_opts o = {.node_id = "dev", .roles = ROLE_INGEST | ROLE_STATE,
                                .grpc_addr = "in-process", .on_change = on_change,
                                .change_ud = &s};
    membership *m = NULL;
    assert_int_equal(membership_start_static(&o, P, &m), EDDY_OK);
    assert_int_equal(atomic_load(&s.changes), 1); /* the one view, before it returned */
    assert_int_equal(membership_partitions(m), P);
    assert_string_equal(membership_self(m), "dev");
    assert_true(membership_alive(m));
    assert_int_equal(membership_lease(m), 0);
    assert_null(membership_etcd(m));
    assert_int_equal(membership_min_insync(m), 1);
    assert_int_equal(membership_owned_count(m), P);
    for (uint32_t p = 0; p < P; p++) {
        char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
        uint64_t epoch = 0;
        assert_true(membership_owner(m, p, owner, &epoch, addr));
        assert_string_equal(owner, "dev");
        assert_string_equal(addr, "in-process");
        assert_int_equal(epoch, 1);
        struct cluster_part cp;
        assert_true(membership_part(m, p, &cp));
        assert_int_equal(cp.nreplicas, 1);
        assert_string_equal(cp.replicas[0], "dev");
    }
    uint64_t epoch;
    assert_false(membership_owns(m, P, &epoch)); /* out of range */
    struct cluster_node nodes[4];
    assert_int_equal(membership_state_nodes(m, nodes, 4), 1);
    assert_string_equal(nodes[0].grpc_addr, "in-process");
    /* nothing ever changes it: a wait ends at its timeout */
    uint64_t v = membership_version(m);
    int64_t t0 = now_ms();
    membership_wait_change(m, v, 50);
    assert_true(now_ms() - t0 >= 45);
    assert_int_equal(membership_version(m), v);
    membership_stop(m);
}

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_membership_follows_the_cluster),
        cmocka_unit_test(test_static_membership_owns_everything),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
