/* node/node.c: whole nodes built and run inside this test process through node_new /
 * node_start / node_stop / node_free, called over loopback gRPC as a client would:
 *   - a --dev node answers every public method through the local backend, keeps its
 *     state across a restart, and rejects a bad configuration as a usage error;
 *   - a cluster in one process: a real etcd, the coordinator's election and leader loop,
 *     state nodes and an ingest node. Writes go to the only state node; a second one joins
 *     and half of the partitions move to it live (the mover: copy, tail, flip, final tail,
 *     the source drops its copy) while writes go on; nothing acknowledged is lost or
 *     applied twice (a retry of every batch is all duplicates); per-user reads reach the
 *     owners, global queries merge both nodes, and stage 2 reaches each product's owner
 *     through the forwarder, every record once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/etcd.h"
#include "common/cluster.h"
#include "common/log.h"
#include "common/partition.h"
#include "common/rpc_client.h"
#include "coordinator/election.h"
#include "coordinator/leader.h"
#include "eddy/v1/eddy.pb-c.h"
#include "node/node.h"
#include "node/state/engine.h"
#include "tests/support/etcd_proc.h"

#define PARTS 16

/* A node's own temporary data directory and its configuration. */
struct test_node {
    char dir[128];
    struct node_config cfg;
    node *n;
    rpc_channel *ch;
};

static void tn_config(struct test_node *t, bool dev)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/eddy-node-test-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    t->cfg = node_config_defaults();
    t->cfg.dev = dev;
    t->cfg.data_dir = t->dir;
    t->cfg.listen = "127.0.0.1:0";
    t->cfg.metrics_listen = "";
    t->cfg.partitions = PARTS;
    t->cfg.checkpoint_interval = 0;
    t->cfg.handler_threads = 2;
    t->cfg.internal_threads = 2;
    t->cfg.shutdown_grace = 2000;
}

static void tn_start(struct test_node *t)
{
    char err[512] = "";
    eddy_err e = node_new(&t->cfg, &t->n, err, sizeof(err));
    if (e == EDDY_OK)
        e = node_start(t->n, err, sizeof(err));
    if (e != EDDY_OK)
        print_error("node: %s\n", err);
    assert_int_equal(e, EDDY_OK);
    assert_true(node_port(t->n) > 0);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", node_port(t->n));
    t->ch = rpc_channel_open(target, NULL);
    assert_non_null(t->ch);
}

static void tn_stop(struct test_node *t)
{
    rpc_channel_close(t->ch);
    t->ch = NULL;
    node_stop(t->n);
    node_free(t->n);
    t->n = NULL;
}

/* ---- requests ------------------------------------------------------------------------------ */

struct batch {
    Eddy__V1__Event ev[256];
    Eddy__V1__Event *evp[256];
    char ids[256][32], users[256][32], products[256][32];
    Eddy__V1__IngestRequest req;
};

/* 'n' events: user u-(i % users) views (or, every 4th, buys) product p-(i % 13). */
static void batch_fill(struct batch *b, size_t n, int users, const char *prefix)
{
    int64_t now = clock_wall_ms();
    eddy__v1__ingest_request__init(&b->req);
    for (size_t i = 0; i < n; i++) {
        Eddy__V1__Event *e = &b->ev[i];
        eddy__v1__event__init(e);
        snprintf(b->ids[i], sizeof(b->ids[i]), "%s-%zu", prefix, i);
        snprintf(b->users[i], sizeof(b->users[i]), "u-%d", (int)(i % (size_t)users));
        snprintf(b->products[i], sizeof(b->products[i]), "p-%zu", i % 13);
        e->event_id = b->ids[i];
        e->user_id = b->users[i];
        e->product_id = b->products[i];
        e->category = "books";
        e->timestamp_ms = now - 1000 + (int64_t)i;
        e->event_type = i % 4 == 3 ? EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE
                                   : EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
        e->price = 10;
        b->evp[i] = e;
    }
    b->req.events = b->evp;
    b->req.n_events = n;
}

static Eddy__V1__IngestResponse *ingest(rpc_channel *ch, struct batch *b)
{
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_invoke(ch, "/eddy.v1.Eddy/Ingest", &b->req.base, &eddy__v1__ingest_response__descriptor,
               10000, &resp, &res);
    if (res.code != GRPC_STATUS_OK)
        print_error("ingest: %d %s\n", res.code, res.details);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    return (Eddy__V1__IngestResponse *)resp;
}

/* Send the batch again until every event is acknowledged (accepted or duplicate), which
 * a move or a map not seen yet may delay (ids make the retries safe): how many were. */
static uint64_t ingest_all(rpc_channel *ch, struct batch *b)
{
    uint64_t acked = 0;
    int64_t deadline = now_ms() + 30000;
    while (acked < b->req.n_events && now_ms() < deadline) {
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        rpc_invoke(ch, "/eddy.v1.Eddy/Ingest", &b->req.base,
                   &eddy__v1__ingest_response__descriptor, 10000, &resp, &res);
        Eddy__V1__IngestResponse *ir = (Eddy__V1__IngestResponse *)resp;
        if (res.code == GRPC_STATUS_OK)
            acked = ir->accepted + ir->duplicates;
        if (resp)
            protobuf_c_message_free_unpacked(resp, NULL);
        if (acked < b->req.n_events)
            sleep_ms(20);
    }
    return acked;
}

static ProtobufCMessage *call(rpc_channel *ch, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *rd, struct rpc_result *res)
{
    ProtobufCMessage *resp = NULL;
    rpc_invoke(ch, method, req, rd, 10000, &resp, res);
    return resp;
}

static Eddy__V1__GetUserProfileResponse *profile(rpc_channel *ch, const char *user,
                                                 struct rpc_result *res)
{
    Eddy__V1__GetUserProfileRequest req = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    req.user_id = (char *)user;
    return (Eddy__V1__GetUserProfileResponse *)call(
        ch, "/eddy.v1.Eddy/GetUserProfile", &req.base,
        &eddy__v1__get_user_profile_response__descriptor, res);
}

/* Total events of every type in every window, over the whole key space, into *total;
 * the call's status. */
static grpc_status_code counts_total(rpc_channel *ch, uint64_t *total)
{
    Eddy__V1__EventCountsRequest req = EDDY__V1__EVENT_COUNTS_REQUEST__INIT;
    req.include_open = true;
    struct rpc_result res;
    Eddy__V1__EventCountsResponse *r = (Eddy__V1__EventCountsResponse *)call(
        ch, "/eddy.v1.Eddy/EventCounts", &req.base, &eddy__v1__event_counts_response__descriptor,
        &res);
    *total = 0;
    for (size_t i = 0; r && i < r->n_windows; i++)
        *total += r->windows[i]->counts ? r->windows[i]->counts->total : 0;
    if (r)
        protobuf_c_message_free_unpacked(&r->base, NULL);
    if (res.code != GRPC_STATUS_OK)
        print_message("counts: %d %s\n", res.code, res.details);
    return res.code;
}

static uint64_t total_events(rpc_channel *ch)
{
    uint64_t total;
    assert_int_equal(counts_total(ch, &total), GRPC_STATUS_OK);
    return total;
}

/* Purchases of every product over the whole key space (stage 2: product windows, applied
 * by each product's owner). */
static uint64_t total_purchases(rpc_channel *ch)
{
    Eddy__V1__TopProductsRequest req = EDDY__V1__TOP_PRODUCTS_REQUEST__INIT;
    req.include_open = true;
    req.limit = 1000;
    struct rpc_result res;
    Eddy__V1__TopProductsResponse *r = (Eddy__V1__TopProductsResponse *)call(
        ch, "/eddy.v1.Eddy/TopProducts", &req.base, &eddy__v1__top_products_response__descriptor,
        &res);
    if (res.code != GRPC_STATUS_OK)
        return 0; /* a partition being taken over: the caller polls */
    uint64_t total = 0;
    for (size_t i = 0; i < r->n_products; i++)
        total += r->products[i]->counts ? r->products[i]->counts->purchase : 0;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return total;
}

/* total_events once the answer covers every partition and reaches 'want' (20 s at most). */
static uint64_t poll_total(rpc_channel *ch, uint64_t want)
{
    int64_t deadline = now_ms() + 20000;
    for (;;) {
        uint64_t total;
        grpc_status_code code = counts_total(ch, &total);
        if ((code == GRPC_STATUS_OK && total >= want) || now_ms() > deadline)
            return total;
        sleep_ms(20);
    }
}

static size_t recommend(rpc_channel *ch, const char *user)
{
    Eddy__V1__RecommendRequest req = EDDY__V1__RECOMMEND_REQUEST__INIT;
    req.user_id = (char *)user;
    req.max_recommendations = 5;
    struct rpc_result res;
    Eddy__V1__RecommendResponse *r = (Eddy__V1__RecommendResponse *)call(
        ch, "/eddy.v1.Eddy/Recommend", &req.base, &eddy__v1__recommend_response__descriptor,
        &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    size_t n = r->n_items;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

/* ---- --dev --------------------------------------------------------------------------------- */

static void test_dev_node_serves_and_restarts(void **state)
{
    struct test_node t;
    tn_config(&t, true);
    tn_start(&t);
    struct batch *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    batch_fill(b, 40, 5, "dev");
    b->evp[7]->user_id = ""; /* one bad event: rejected with its index, the rest kept */
    Eddy__V1__IngestResponse *ir = ingest(t.ch, b);
    assert_int_equal(ir->accepted, 39);
    assert_int_equal(ir->n_rejected, 1);
    assert_int_equal(ir->rejected[0]->index, 7);
    protobuf_c_message_free_unpacked(&ir->base, NULL);
    assert_int_equal(total_events(t.ch), 39);

    struct rpc_result res;
    Eddy__V1__GetUserProfileResponse *p = profile(t.ch, "u-1", &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_string_equal(p->profile->user_id, "u-1");
    protobuf_c_message_free_unpacked(&p->base, NULL);
    assert_null(profile(t.ch, "nobody", &res));
    assert_int_equal(res.code, GRPC_STATUS_NOT_FOUND);
    assert_non_null(strstr(res.details, "no state for user nobody"));
    assert_true(recommend(t.ch, "u-2") > 0);

    Eddy__V1__DeleteUserRequest del = EDDY__V1__DELETE_USER_REQUEST__INIT;
    del.user_id = "u-3";
    Eddy__V1__DeleteUserResponse *dr = (Eddy__V1__DeleteUserResponse *)call(
        t.ch, "/eddy.v1.Eddy/DeleteUser", &del.base, &eddy__v1__delete_user_response__descriptor,
        &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_true(dr->model_deleted);
    protobuf_c_message_free_unpacked(&dr->base, NULL);
    tn_stop(&t);

    /* the same directory again: what was acknowledged is there, the deleted user is not */
    tn_start(&t);
    p = profile(t.ch, "u-1", &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    assert_null(profile(t.ch, "u-3", &res));
    assert_int_equal(res.code, GRPC_STATUS_NOT_FOUND);
    /* a retry: duplicates only, the deleted user's events too (their ids stay until the
     * dedup window passes, so a retry does not bring the user back) */
    ir = ingest(t.ch, b);
    assert_int_equal(ir->accepted, 0);
    assert_int_equal(ir->duplicates, 39);
    protobuf_c_message_free_unpacked(&ir->base, NULL);
    assert_null(profile(t.ch, "u-3", &res));
    assert_int_equal(res.code, GRPC_STATUS_NOT_FOUND);
    tn_stop(&t);
    rm_tree(t.dir);
    free(b);
}

/* EventCounts of the whole key space with open windows, from a thread of its own. */
struct counts_call {
    rpc_channel *ch;
    pthread_t thread;
    Eddy__V1__EventCountsResponse *resp;
    struct rpc_result res;
};

static void *counts_main(void *arg)
{
    struct counts_call *cc = arg;
    Eddy__V1__EventCountsRequest req = EDDY__V1__EVENT_COUNTS_REQUEST__INIT;
    req.include_open = true;
    cc->resp = (Eddy__V1__EventCountsResponse *)call(cc->ch, "/eddy.v1.Eddy/EventCounts",
                                                     &req.base,
                                                     &eddy__v1__event_counts_response__descriptor,
                                                     &cc->res);
    return NULL;
}

/* A query that arrives while the events acknowledged before it are still being applied
 * answers as of their apply: the window an acknowledged event closed is closed in it,
 * whatever the watermark was when the query arrived (the router closes windows with the
 * partitions' watermarks, which must be read after the read barrier, not before). */
static void test_counts_after_the_apply_of_acknowledged_events(void **state)
{
    (void)state;
    struct test_node t;
    tn_config(&t, true);
    tn_start(&t);
    engine *eng = node_engine(t.n);
    struct batch *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    batch_fill(b, 2, 1, "rw");
    /* both in one hour of event time: a watermark that crosses an hour (--sweep-interval)
     * has the writer apply what is appended at once, for the sweep, apply held or not */
    int64_t hour = clock_wall_ms() / 3600000 * 3600000 - 3600000;
    b->evp[0]->timestamp_ms = hour + 5 * 60 * 1000; /* its window closes once ev 1 applies */
    b->evp[1]->timestamp_ms = hour + 20 * 60 * 1000;
    engine_hold_apply(eng, true); /* acknowledged (the log is durable), not applied */
    Eddy__V1__IngestResponse *ir = ingest(t.ch, b);
    assert_int_equal(ir->accepted, 2);
    protobuf_c_message_free_unpacked(&ir->base, NULL);

    uint64_t waits, now_waits;
    engine_read_barrier_counts(eng, &waits, NULL);
    struct counts_call cc = {.ch = t.ch};
    assert_int_equal(pthread_create(&cc.thread, NULL, counts_main, &cc), 0);
    int64_t deadline = now_ms() + 10000;
    do { /* until the query waits for the apply */
        sleep_ms(1);
        engine_read_barrier_counts(eng, &now_waits, NULL);
    } while (now_waits == waits && now_ms() < deadline);
    assert_true(now_waits > waits);
    engine_hold_apply(eng, false);
    pthread_join(cc.thread, NULL);

    assert_int_equal(cc.res.code, GRPC_STATUS_OK);
    assert_int_equal(cc.resp->n_windows, 2);
    assert_true(cc.resp->windows[0]->closed); /* the old window: closed by event 1 */
    assert_false(cc.resp->windows[1]->closed);
    assert_int_equal(cc.resp->windows[0]->counts->total, 1);
    assert_int_equal(cc.resp->windows[1]->counts->total, 1);
    protobuf_c_message_free_unpacked(&cc.resp->base, NULL);
    tn_stop(&t);
    rm_tree(t.dir);
    free(b);
}

static void test_bad_config_is_a_usage_error(void **state)
{
    struct node_config c = node_config_defaults();
    c.dev = false; /* cluster mode without --role and --etcd */
    node *n = NULL;
    char err[256] = "";
    assert_int_equal(node_new(&c, &n, err, sizeof(err)), EDDY_ERR_INVALID);
    assert_null(n);
    assert_non_null(strstr(err, "--role"));
}

/* ---- a cluster in one process ------------------------------------------------------------- */

struct coord {
    etcd_client *etcd;
    leader *lead;
    uint32_t replication; /* the coordinator's --replication-factor (min-insync the same) */
};

static void on_elected(void *ud, etcd_session *s)
{
    struct coord *co = ud;
    struct leader_opts lo = {
        .etcd = co->etcd, .cluster = "t", .id = "coord", .partitions = PARTS,
        .settle_ms = 100, .max_moves = 2, .move_timeout_ms = 60000,
        .replication_factor = co->replication,
        .min_insync = 1, /* s1 alone acknowledges before s2 joins */
    };
    co->lead = leader_start(&lo, s);
}

static void on_demoted(void *ud)
{
    struct coord *co = ud;
    leader_stop(co->lead);
    co->lead = NULL;
}

static void tn_cluster_config(struct test_node *t, const char *role, const char *id,
                              const char *etcd)
{
    tn_config(t, false);
    t->cfg.role = role;
    t->cfg.node_id = id;
    t->cfg.etcd = etcd;
    t->cfg.cluster = "t";
    t->cfg.lease_ttl = 2000;
    t->cfg.join_timeout = 20000;
    t->cfg.load_interval = 0;
}

/* The cluster with 'R' copies of each partition: with R = 1 the source of a move drops
 * what it gave away; with R = 2 it stays a follower of it and its copy follows the new
 * leader's log. */
static void cluster_in_one_process(uint32_t R)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct etcd_proc *ep = etcd_proc_new();
    assert_non_null(ep);
    struct coord co = {etcd_client_new(ep->url, 2000), NULL, R};
    assert_non_null(co.etcd);
    struct election_opts eo = {.etcd = co.etcd, .key = "/eddy/t/leader", .id = "coord",
                               .ttl_s = 2, .on_elected = on_elected, .on_demoted = on_demoted,
                               .ud = &co};
    election *el = election_new(&eo);
    assert_non_null(el);

    struct test_node s1, s2, in;
    tn_cluster_config(&s1, "state", "s1", ep->url);
    tn_cluster_config(&s2, "state", "s2", ep->url);
    tn_cluster_config(&in, "ingest", "i1", ep->url);
    tn_start(&s1);
    tn_start(&in);
    struct batch *b = calloc(1, sizeof(*b)), *b2 = calloc(1, sizeof(*b2));
    assert_non_null(b);
    assert_non_null(b2);
    batch_fill(b, 200, 50, "c");
    batch_fill(b2, 200, 50, "d");
    assert_int_equal(ingest_all(in.ch, b), 200); /* everything on s1 */

    /* a second state node: the coordinator moves half of the partitions to it, live,
     * while writes go on; wait for the balanced map with no move left (the map in etcd is
     * what every node follows) */
    tn_start(&s2);
    assert_int_equal(ingest_all(in.ch, b2), 200);
    int64_t deadline = now_ms() + 30000;
    size_t own1 = 0, own2 = 0, moving = 1;
    struct cluster_map m = {0};
    while (now_ms() < deadline && (own1 != PARTS / 2 || own2 != PARTS / 2 || moving > 0)) {
        struct etcd_kv kv;
        struct etcd_kvs moves = {0};
        bool found = false;
        own1 = own2 = 0;
        if (etcd_get(co.etcd, "/eddy/t/assignment", &kv, &found) == EDDY_OK && found &&
            cluster_map_from_json(kv.value, kv.value_len, &m) == EDDY_OK) {
            for (uint32_t p = 0; p < m.nparts; p++) {
                own1 += strcmp(m.parts[p].owner, "s1") == 0;
                own2 += strcmp(m.parts[p].owner, "s2") == 0;
            }
        }
        etcd_kv_release(&kv);
        if (etcd_range_prefix(co.etcd, "/eddy/t/moves/", &moves, NULL) == EDDY_OK)
            moving = moves.n;
        etcd_kvs_release(&moves);
        sleep_ms(20);
    }
    assert_int_equal(own1, PARTS / 2);
    assert_int_equal(own2, PARTS / 2);
    assert_int_equal(moving, 0);
    /* nothing acknowledged was lost or applied twice by the moves: a retry of both
     * batches is all duplicates */
    Eddy__V1__IngestResponse *ir = ingest(in.ch, b);
    assert_int_equal(ir->accepted, 0);
    assert_int_equal(ir->duplicates, 200);
    protobuf_c_message_free_unpacked(&ir->base, NULL);
    ir = ingest(in.ch, b2);
    assert_int_equal(ir->accepted, 0);
    assert_int_equal(ir->duplicates, 200);
    protobuf_c_message_free_unpacked(&ir->base, NULL);
    /* the target holds the partitions it took; the source dropped them (R = 1) or holds
     * the same log as a follower (R = 2) */
    deadline = now_ms() + 20000;
    for (uint32_t p = 0; p < PARTS; p++) {
        struct engine_partition_view v1, v2;
        engine_partition(node_engine(s2.n), p, &v2);
        engine_partition(node_engine(s1.n), p, &v1);
        if (strcmp(m.parts[p].owner, "s2") != 0)
            continue;
        uint64_t want = R == 1 ? 0 : v2.next_seq;
        while (v1.next_seq != want && now_ms() < deadline) {
            sleep_ms(20);
            engine_partition(node_engine(s1.n), p, &v1);
        }
        assert_int_equal(v1.next_seq, want);
        bool has_events = false; /* some partitions have no user of the batches */
        for (size_t i = 0; i < b->req.n_events; i++)
            has_events |= partition_of_user(b->evp[i]->user_id, PARTS) == p;
        assert_int_equal(v2.next_seq > 0, has_events);
    }
    cluster_map_release(&m);

    /* global counts merge both state nodes: every event counted once (a node that has not
     * seen the last map yet may refuse for a moment: poll) */
    assert_int_equal(poll_total(in.ch, 400), 400);
    /* per-user reads reach the owner, whichever node it is */
    struct rpc_result res;
    for (int u = 0; u < 50; u += 7) {
        char user[16];
        snprintf(user, sizeof(user), "u-%d", u);
        Eddy__V1__GetUserProfileResponse *p = profile(in.ch, user, &res);
        assert_int_equal(res.code, GRPC_STATUS_OK);
        assert_string_equal(p->profile->user_id, user);
        protobuf_c_message_free_unpacked(&p->base, NULL);
    }
    assert_true(recommend(in.ch, "u-4") > 0);
    /* stage 2: a user's events count at each product's owner, often the other node, which
     * the forwarder reaches after the acknowledgement: every purchase arrives, once */
    uint64_t purchases = 0;
    deadline = now_ms() + 20000;
    while ((purchases = total_purchases(in.ch)) < 100 && now_ms() < deadline)
        sleep_ms(20);
    assert_int_equal(purchases, 100);
    /* the state nodes' own public API routes too (ingest role off: reads still answer) */
    assert_int_equal(poll_total(s1.ch, 400), 400);

    tn_stop(&in);
    tn_stop(&s2);
    tn_stop(&s1);
    election_free(el);
    etcd_client_free(co.etcd);
    etcd_proc_free(ep);
    rm_tree(s1.dir);
    rm_tree(s2.dir);
    rm_tree(in.dir);
    free(b);
    free(b2);
}

static void test_cluster_in_one_process(void **state)
{
    (void)state;
    cluster_in_one_process(1);
}

static void test_cluster_in_one_process_replicated(void **state)
{
    (void)state;
    cluster_in_one_process(2);
}

int main(void)
{
    log_set_level("warn");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dev_node_serves_and_restarts),
        cmocka_unit_test(test_counts_after_the_apply_of_acknowledged_events),
        cmocka_unit_test(test_bad_config_is_a_usage_error),
        cmocka_unit_test(test_cluster_in_one_process),
        cmocka_unit_test(test_cluster_in_one_process_replicated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
