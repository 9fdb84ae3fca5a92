/* The replicated log with two engines in one process over a real loopback gRPC server: a
 * follower's state is byte-identical to its leader's at the same seq, acknowledgements
 * wait for the follower (and fail UNAVAILABLE once it left the in-sync set), the leader
 * refuses fetches from non-replicas and stale epochs, and the follower refuses gapped,
 * stale and corrupted batches without applying them. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/clock.h"
#include "common/completion.h"
#include "common/etcd.h"
#include "common/metrics.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "node/cluster/peers.h"
#include "node/cluster/replica.h"
#include "node/state/engine.h"
#include "node/state/store.h"

#include "../state/engine_fixture.h"
#include "tests/support/etcd_proc.h"

#define EPOCH 3
#define LAG_MS 2000 /* long enough for a loaded machine: a live follower never lags this far */
#define WRITABLE_WAIT_MS 1000 /* the leader's --replica-writable-wait */

struct node {
    char *dir;
    engine *eng;
    replica *rep;
};

struct outbox {
    Eddy__Store__V1__Stage2Batch *b[4096];
    uint64_t seqs[4096];
    size_t n;
};

struct pair {
    struct node a, b;   /* a leads every partition, b follows */
    rpc_server *srv;    /* a's server */
    char addr[64];
    peers *peers;       /* b's channels */
    struct replica_part map[FIXTURE_PARTITIONS];
};

static replica *replica_for(struct pair *t, struct node *n, const char *self)
{
    struct replica_opts ro = {.eng = n->eng, .peers = t->peers, .self = self,
                              .partitions = FIXTURE_PARTITIONS, .lag_timeout_ms = LAG_MS,
                              .fetch_wait_ms = 100, .rpc_timeout_ms = 2000};
    replica *r = replica_new(&ro);
    assert_non_null(r);
    replica_set_map(r, t->map, 2);
    return r;
}

/* B's replica, not started, counting its resyncs in *resyncs (a counter of 'm'). */
static replica *follower_counting_resyncs(struct pair *t, metrics *m, metric_counter **resyncs)
{
    struct replica_opts ro = {.eng = t->b.eng, .peers = t->peers, .self = "B",
                              .partitions = FIXTURE_PARTITIONS, .lag_timeout_ms = LAG_MS,
                              .fetch_wait_ms = 100, .rpc_timeout_ms = 2000};
    ro.metrics.resyncs = *resyncs = metrics_counter(m, "resyncs", "test");
    replica *r = replica_new(&ro);
    assert_non_null(r);
    replica_set_map(r, t->map, 2);
    return r;
}

/* Set by setup_idle: 1 s windows closed by idle watermarks after 300 ms without events. */
static bool idle_windows;
/* Set by setup_clustered: the engines run in cluster mode (stage 2 through the OUTBOX and
 * Forward, as on a cluster's nodes), the leader owning every product partition. */
static bool clustered;
/* Set by setup_recorded: the leader records its in-sync sets in this etcd (cluster "t"),
 * and a follower leaves its set only after 60 s (the test pauses etcd longer than LAG_MS). */
static struct etcd_proc *recorder;
static etcd_client *recorder_client;

static bool always(void *ud, uint32_t p)
{
    (void)ud;
    (void)p;
    return true;
}

static bool never(void *ud, uint32_t p)
{
    (void)ud;
    (void)p;
    return false;
}

static void node_open(struct node *n, const char *what, bool leads)
{
    n->dir = tmpdir_for(what);
    struct engine_opts o = opts(n->dir);
    if (idle_windows)
        o.apply.window = (struct window_params){1000, 0, 0, 300};
    if (!leads) /* a follower of every partition: it writes no log record of its own */
        o.cluster = (struct engine_cluster){.leads = never};
    if (clustered)
        o.cluster.owns = leads ? always : never;
    char err[256];
    assert_int_equal(engine_open(&o, &n->eng, err, sizeof(err)), EDDY_OK);
}

static int setup(void **state)
{
    struct pair *t = calloc(1, sizeof(*t));
    node_open(&t->a, "repl-a", true);
    node_open(&t->b, "repl-b", false);
    struct rpc_server_opts so = {.listen = "127.0.0.1:0"};
    t->srv = rpc_server_new(&so);
    t->peers = peers_new(64 << 20);
    int port = 0;
    /* the map names the server's address, known once it listens: register first with a
     * module whose map is set after the start */
    struct replica_opts ro = {.eng = t->a.eng, .peers = t->peers, .self = "A",
                              .partitions = FIXTURE_PARTITIONS, .lag_timeout_ms = LAG_MS,
                              .fetch_wait_ms = 100, .writable_wait_ms = WRITABLE_WAIT_MS};
    if (recorder_client) {
        ro.etcd = recorder_client;
        ro.cluster = "t";
        ro.lag_timeout_ms = 60000;
    }
    t->a.rep = replica_new(&ro);
    assert_int_equal(replica_register(t->a.rep, t->srv), EDDY_OK);
    assert_int_equal(rpc_server_start(t->srv, &port), EDDY_OK);
    snprintf(t->addr, sizeof(t->addr), "127.0.0.1:%d", port);
    for (int p = 0; p < FIXTURE_PARTITIONS; p++) {
        struct replica_part *m = &t->map[p];
        m->epoch = EPOCH;
        m->nreplicas = 2;
        snprintf(m->replicas[0], sizeof(m->replicas[0]), "A");
        snprintf(m->replicas[1], sizeof(m->replicas[1]), "B");
        snprintf(m->leader_addr, sizeof(m->leader_addr), "%s", t->addr);
    }
    replica_set_map(t->a.rep, t->map, 2);
    assert_int_equal(replica_start(t->a.rep), EDDY_OK);
    t->b.rep = replica_for(t, &t->b, "B");
    *state = t;
    return 0;
}

static int setup_idle(void **state)
{
    idle_windows = true;
    int rc = setup(state);
    idle_windows = false;
    return rc;
}

static int setup_clustered(void **state)
{
    clustered = true;
    int rc = setup(state);
    clustered = false;
    return rc;
}

static int setup_recorded(void **state)
{
    recorder = etcd_proc_new();
    assert_non_null(recorder);
    recorder_client = etcd_client_new(recorder->url, 2000);
    assert_non_null(recorder_client);
    return setup(state);
}

static int teardown(void **state);

static int teardown_recorded(void **state)
{
    teardown(state);
    etcd_client_free(recorder_client);
    etcd_proc_free(recorder);
    recorder_client = NULL;
    recorder = NULL;
    return 0;
}

static int teardown(void **state)
{
    struct pair *t = *state;
    replica_free(t->b.rep);
    replica_stop(t->a.rep);
    rpc_server_free(t->srv);
    replica_free(t->a.rep);
    peers_free(t->peers);
    engine_close(t->a.eng);
    engine_close(t->b.eng);
    rmrf(t->a.dir);
    rmrf(t->b.dir);
    free(t->a.dir);
    free(t->b.dir);
    free(t);
    return 0;
}

static char *dump(engine *e)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(engine_store(e), 0xffffffffu, f), EDDY_OK);
    fclose(f);
    return buf;
}

static uint64_t log_end(engine *e, uint32_t p)
{
    struct engine_partition_view v;
    engine_partition(e, p, &v);
    return v.next_seq;
}

static void acked(void *ud, eddy_err err)
{
    completion_signal(ud, err, (uint64_t)clock_mono_ms());
}

/* An acknowledgement and the partition's in-sync copies when it arrived. */
struct insync_at {
    replica *rep;
    uint32_t p;
    uint32_t insync;
    struct completion c;
};

static void acked_insync(void *ud, eddy_err err)
{
    struct insync_at *w = ud;
    w->insync = replica_insync(w->rep, w->p); /* callbacks run outside the module's lock */
    completion_signal(&w->c, err, (uint64_t)clock_mono_ms());
}

/* Wait for every partition's current log end to be acknowledged; the result of each. */
static eddy_err wait_all(struct pair *t)
{
    eddy_err worst = EDDY_OK;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        struct completion w;
        completion_init(&w);
        eddy_err err = completion_wait(&w, replica_wait(t->a.rep, p, log_end(t->a.eng, p),
                                                        acked, &w));
        if (err != EDDY_OK)
            worst = err;
    }
    return worst;
}

/* 'n' events of 'users' users, ids from 'first'; freed by the caller with free_events. */
static Eddy__V1__Event **events(int first, int n, int users, char (*ids)[16], char (*us)[16])
{
    static const char *prods[] = {"p1", "p2", "p3", "p4", "p5"};
    Eddy__V1__Event **evs = calloc((size_t)n, sizeof(*evs));
    for (int i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "e%d", first + i);
        snprintf(us[i], sizeof(us[i]), "u%d", (first + i) % users);
        evs[i] = mk(ids[i], us[i], T0 + (first + i) * 700, i % 9 == 0 ? BUY : VIEW,
                    prods[(first + i) % 5], (first + i) % 5 < 2 ? "books" : "toys");
    }
    return evs;
}

static void free_events(Eddy__V1__Event **evs, int n)
{
    for (int i = 0; i < n; i++)
        free(evs[i]);
    free(evs);
}

static void ingest_range(struct pair *t, int first, int n)
{
    char (*ids)[16] = calloc((size_t)n, sizeof(*ids));
    char (*us)[16] = calloc((size_t)n, sizeof(*us));
    Eddy__V1__Event **evs = events(first, n, 13, ids, us);
    for (int i = 0; i < n; i += 50)
        ingest(t->a.eng, evs + i, (size_t)(n - i < 50 ? n - i : 50));
    free_events(evs, n);
    free(ids);
    free(us);
}

/* Poll 'cond' until true or 15 s (a deadline, not a sleep standing in for it). */
#define EVENTUALLY(cond)                                                                  \
    do {                                                                                  \
        int64_t until_ = clock_mono_ms() + 15000;                                         \
        while (!(cond) && clock_mono_ms() < until_)                                       \
            usleep(2000);                                                                 \
        assert_true(cond);                                                                \
    } while (0)

/* Start b's fetching and wait until it is in sync for every partition (a fresh follower
 * joins once its first fetch reached the log end). */
static void start_follower(struct pair *t)
{
    assert_int_equal(replica_start(t->b.rep), EDDY_OK);
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        EVENTUALLY(replica_insync(t->a.rep, p) == 2);
}

static void test_follower_identical(void **state)
{
    struct pair *t = *state;
    start_follower(t);
    ingest_range(t, 0, 600);
    assert_int_equal(wait_all(t), EDDY_OK);
    /* acknowledged means durable on the follower: its positions reached the leader's ends */
    uint64_t total = 0;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        total += log_end(t->a.eng, p);
        assert_true(replica_position(t->b.rep, p) >= log_end(t->a.eng, p));
        assert_int_equal(log_end(t->b.eng, p), log_end(t->a.eng, p));
    }
    assert_int_equal(total, 600);
    char *da = dump(t->a.eng), *db = dump(t->b.eng);
    assert_true(strlen(da) > 1000);
    assert_string_equal(da, db);
    free(da);
    free(db);
    /* a retry of events already there (duplicates) is acknowledged too, after the wait */
    ingest_range(t, 0, 50);
    assert_int_equal(wait_all(t), EDDY_OK);
}

static int collect_outbox(void *ud, const unsigned char *k, size_t klen, const char *v,
                          size_t vlen)
{
    (void)k;
    (void)klen;
    struct outbox *o = ud;
    if (o->n == 4096)
        return 1;
    o->b[o->n] = eddy__store__v1__stage2_batch__unpack(NULL, vlen, (const uint8_t *)v);
    assert_non_null(o->b[o->n]);
    o->seqs[o->n] = o->b[o->n]->source_seq;
    o->n++;
    return 0;
}

static void forwarded(void *ud, eddy_err err, size_t applied)
{
    (void)applied;
    completion_signal(ud, err, 0);
}

static void outbox_removed(void *ud, eddy_err err)
{
    completion_signal(ud, err, 0);
}

/* What the forwarder does on a leader of every partition: Forward the OUTBOX of each
 * partition to itself, then remove it through the log. The batches applied. */
static size_t forward_all(engine *e)
{
    static struct outbox o;
    size_t applied = 0;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        struct store_key start, end;
        o.n = 0;
        key_init(&start, p, T_OUTBOX);
        key_prefix_end(&start, &end);
        assert_int_equal(store_scan(engine_store(e), &start, &end, collect_outbox, &o),
                         EDDY_OK);
        if (o.n == 0)
            continue;
        struct completion c;
        completion_init(&c);
        assert_int_equal(completion_wait(&c, engine_forward(e, o.b, o.n, forwarded, &c)),
                         EDDY_OK);
        completion_init(&c);
        assert_int_equal(completion_wait(&c, engine_outbox_forwarded(e, p, o.seqs, o.n,
                                                                     outbox_removed, &c)),
                         EDDY_OK);
        applied += o.n;
        for (size_t i = 0; i < o.n; i++)
            eddy__store__v1__stage2_batch__free_unpacked(o.b[i], NULL);
    }
    return applied;
}

static void deleted(void *ud, eddy_err err, bool model_deleted, uint64_t windows_deleted,
                    uint64_t log_deleted)
{
    (void)windows_deleted;
    completion_signal(ud, err, model_deleted ? log_deleted : 0);
}

/* Rows of a dump that contain 's' (as store_dump's hex). */
static size_t rows_with(const char *dump, const char *s)
{
    char hex[64] = "";
    for (size_t i = 0; s[i] && i < 30; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)s[i]);
    size_t n = 0;
    for (const char *l = dump; (l = strstr(l, hex)) != NULL; n++)
        l = strchr(l, '\n') ? strchr(l, '\n') : l + strlen(l);
    return n;
}

/* Stage 2 through the product partitions' logs and DeleteUser as a log record: the
 * follower's whole store, product state, exactly-once marks and OUTBOX included, is
 * byte-identical to its leader's. */
static void test_follower_identical_stage2_and_delete(void **state)
{
    struct pair *t = *state;
    start_follower(t);
    ingest_range(t, 0, 400);
    assert_true(engine_outbox_depth(t->a.eng) > 0); /* cluster mode: all through the OUTBOX */
    assert_true(forward_all(t->a.eng) > 0);
    assert_int_equal(engine_outbox_depth(t->a.eng), 0);
    assert_int_equal(forward_all(t->a.eng), 0);
    assert_int_equal(wait_all(t), EDDY_OK);
    char *da = dump(t->a.eng), *db = dump(t->b.eng);
    assert_string_equal(da, db);
    /* the product state is there (p1..p5 of the events), on the follower too */
    assert_true(rows_with(db, "p3") > 0);
    free(da);
    free(db);
    assert_int_equal(engine_outbox_depth(t->b.eng), 0); /* removed through the log */

    /* the same batches forwarded again (a new leader's retry) change nothing */
    ingest_range(t, 400, 100);
    assert_true(forward_all(t->a.eng) > 0);

    /* DeleteUser u3 (events e3, e16, ...), once the follower has the user's events (the
     * state service waits for that too): gone on both, the same way */
    assert_int_equal(wait_all(t), EDDY_OK);
    db = dump(t->b.eng);
    assert_true(rows_with(db, "u3") > 0); /* the follower has the user to find by its hash */
    free(db);
    struct completion c;
    completion_init(&c);
    assert_int_equal(completion_wait(&c, engine_delete_user(t->a.eng, "u3", deleted, &c)),
                     EDDY_OK);
    assert_true(c.value > 0);
    assert_int_equal(wait_all(t), EDDY_OK);
    da = dump(t->a.eng);
    db = dump(t->b.eng);
    assert_string_equal(da, db);
    /* no row names it: the DeleteUser record holds a salted hash, by which the follower
     * found the user to remove */
    assert_int_equal(rows_with(db, "u3"), 0);
    free(da);
    free(db);
}

/* DeleteUser while the user's stage-2 records still wait in the OUTBOX: those rows go on
 * the leader and on the follower alike (the OUTBOX gauge follows), the others stay and are
 * delivered as usual. */
static void test_delete_drops_the_users_outbox_rows(void **state)
{
    struct pair *t = *state;
    start_follower(t);
    ingest_range(t, 0, 130); /* u3: events 3, 16, ..., 120: ten of them */
    assert_int_equal(wait_all(t), EDDY_OK);
    uint64_t before = engine_outbox_depth(t->a.eng);
    assert_true(before >= 130);
    struct completion c;
    completion_init(&c);
    assert_int_equal(completion_wait(&c, engine_delete_user(t->a.eng, "u3", deleted, &c)),
                     EDDY_OK);
    assert_int_equal(c.value, 10);
    assert_int_equal(wait_all(t), EDDY_OK);
    assert_int_equal(engine_outbox_depth(t->a.eng), before - 10);
    EVENTUALLY(engine_outbox_depth(t->b.eng) == before - 10);
    char *da = dump(t->a.eng), *db = dump(t->b.eng);
    assert_string_equal(da, db);
    free(da);
    free(db);
    assert_true(forward_all(t->a.eng) > 0);
    assert_int_equal(engine_outbox_depth(t->a.eng), 0);
    assert_int_equal(wait_all(t), EDDY_OK);
    EVENTUALLY(engine_outbox_depth(t->b.eng) == 0);
}

static void test_ack_waits_for_follower(void **state)
{
    struct pair *t = *state;
    start_follower(t);
    ingest_range(t, 0, 100);
    assert_int_equal(wait_all(t), EDDY_OK);

    replica_stop(t->b.rep); /* the follower stops fetching */
    ingest_range(t, 1000, 40);
    uint32_t p = 0;
    while (p < FIXTURE_PARTITIONS && log_end(t->a.eng, p) == replica_position(t->b.rep, p))
        p++;
    assert_true(p < FIXTURE_PARTITIONS);
    struct insync_at w = {.rep = t->a.rep, .p = p};
    completion_init(&w.c);
    assert_int_equal(replica_wait(t->a.rep, p, log_end(t->a.eng, p), acked_insync, &w), EDDY_OK);
    /* a single copy never acknowledges: it fails once the follower left the in-sync set
     * (at once if it already had, on a loaded machine), not before */
    assert_int_equal(completion_wait(&w.c, EDDY_OK), EDDY_ERR_UNAVAILABLE);
    assert_int_equal(w.insync, 1);
    assert_int_equal(replica_insync(t->a.rep, p), 1);
    assert_false(replica_writable(t->a.rep, p));

    /* a new follower process on the same data catches up and rejoins */
    replica_free(t->b.rep);
    t->b.rep = replica_for(t, &t->b, "B");
    start_follower(t);
    assert_true(replica_writable(t->a.rep, p));
    assert_int_equal(wait_all(t), EDDY_OK);
    char *da = dump(t->a.eng), *db = dump(t->b.eng);
    assert_string_equal(da, db);
    free(da);
    free(db);
}

/* Fetch partition 'p' from the leader by hand as node 'who' at 'epoch', at most 'max'
 * records (0: the leader's default). */
static Eddy__State__V1__ReplicaFetchResponse *fetch_n(struct pair *t, const char *who,
                                                      uint32_t p, uint64_t epoch, uint64_t from,
                                                      uint32_t max, struct rpc_result *res)
{
    Eddy__State__V1__ReplicaFetchPartition q = EDDY__STATE__V1__REPLICA_FETCH_PARTITION__INIT;
    Eddy__State__V1__ReplicaFetchPartition *qp = &q;
    q.partition = p;
    q.epoch = epoch;
    q.next_seq = from;
    Eddy__State__V1__ReplicaFetchRequest req = EDDY__STATE__V1__REPLICA_FETCH_REQUEST__INIT;
    req.follower = (char *)who;
    req.partitions = &qp;
    req.n_partitions = 1;
    req.max_records = max;
    ProtobufCMessage *resp = NULL;
    rpc_invoke(peers_get(t->peers, t->addr), "/eddy.state.v1.State/ReplicaFetch", &req.base,
               &eddy__state__v1__replica_fetch_response__descriptor, 5000, &resp, res);
    return (Eddy__State__V1__ReplicaFetchResponse *)resp;
}

static Eddy__State__V1__ReplicaFetchResponse *fetch(struct pair *t, const char *who,
                                                    uint32_t p, uint64_t epoch,
                                                    uint64_t from, struct rpc_result *res)
{
    return fetch_n(t, who, p, epoch, from, 0, res);
}

/* R = 3, min-insync 2: an acknowledgement waits for every in-sync follower, not for any
 * two copies (Kafka's high watermark): a follower in the in-sync set may be promoted, so
 * it must hold every acknowledged record. Follower C, in sync and then silent, holds the
 * acknowledgement back until it leaves the set, though B has the records at once. */
static void test_ack_waits_for_every_in_sync_follower(void **state)
{
    struct pair *t = *state;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        t->map[p].nreplicas = 3;
        snprintf(t->map[p].replicas[2], sizeof(t->map[p].replicas[2]), "C");
    }
    replica_set_map(t->a.rep, t->map, 2);
    replica_set_map(t->b.rep, t->map, 2);
    start_follower(t);
    ingest_range(t, 0, 100);
    uint32_t p = 0;
    while (log_end(t->a.eng, p) == 0)
        p++;
    uint64_t end = log_end(t->a.eng, p);
    /* C fetches by hand up to the log end, twice: it is in sync */
    for (int i = 0; i < 2; i++) {
        struct rpc_result res;
        Eddy__State__V1__ReplicaFetchResponse *r = fetch(t, "C", p, EPOCH, end, &res);
        assert_int_equal(res.code, GRPC_STATUS_OK);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    assert_int_equal(replica_insync(t->a.rep, p), 3);
    int64_t t0 = clock_mono_ms();
    ingest_range(t, 1000, 200);
    uint64_t end2 = log_end(t->a.eng, p);
    assert_true(end2 > end);
    EVENTUALLY(replica_position(t->b.rep, p) >= end2); /* B has them */
    struct insync_at w = {.rep = t->a.rep, .p = p};
    completion_init(&w.c);
    assert_int_equal(replica_wait(t->a.rep, p, end2, acked_insync, &w), EDDY_OK);
    assert_int_equal(completion_wait(&w.c, EDDY_OK), EDDY_OK);
    /* acknowledged only once C, in sync and lacking the records, left the set */
    assert_int_equal(w.insync, 2);
    assert_true((int64_t)w.c.value - t0 >= LAG_MS / 2);
}

static void test_refusals(void **state)
{
    struct pair *t = *state;
    ingest_range(t, 0, 200); /* b does not fetch: the test drives it */
    uint32_t p = 0;
    while (log_end(t->a.eng, p) < 3)
        p++;
    struct rpc_result res;
    /* the leader: a node that is not a replica, and a stale epoch */
    assert_null(fetch(t, "C", p, EPOCH, 0, &res));
    assert_int_equal(res.code, GRPC_STATUS_FAILED_PRECONDITION);
    assert_non_null(strstr(res.details, "not a follower"));
    assert_null(fetch(t, "B", p, EPOCH - 1, 0, &res));
    assert_int_equal(res.code, GRPC_STATUS_FAILED_PRECONDITION);
    assert_non_null(strstr(res.details, "stale epoch"));

    Eddy__State__V1__ReplicaFetchResponse *r = fetch(t, "B", p, EPOCH, 0, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    Eddy__State__V1__ReplicaPartitionData *d = r->partitions[0];
    assert_true(d->n_records >= 3);
    assert_int_equal(d->next_seq, log_end(t->a.eng, p));
    char *before = dump(t->b.eng);

    /* stale epoch */
    d->epoch = EPOCH - 1;
    assert_int_equal(replica_follow_apply(t->b.rep, d), EDDY_ERR_NOT_OWNER);
    d->epoch = EPOCH;
    /* a gap: the batch does not start at the follower's position */
    d->from_seq = 1;
    assert_int_equal(replica_follow_apply(t->b.rep, d), EDDY_ERR_INVALID);
    d->from_seq = 0;
    /* a record missing in the middle is fine (a hole), one out of order is not */
    Eddy__State__V1__ReplicaRecord *x = d->records[1];
    d->records[1] = d->records[2];
    d->records[2] = x;
    assert_int_equal(replica_follow_apply(t->b.rep, d), EDDY_ERR_INVALID);
    d->records[2] = d->records[1];
    d->records[1] = x;
    /* a bad checksum, in the last record: nothing before it is applied either */
    Eddy__State__V1__ReplicaRecord *last = d->records[d->n_records - 1];
    last->record.data[last->record.len / 2] ^= 0x40;
    assert_int_equal(replica_follow_apply(t->b.rep, d), EDDY_ERR_CORRUPT);
    last->record.data[last->record.len / 2] ^= 0x40;

    char *after = dump(t->b.eng);
    assert_string_equal(before, after);
    assert_int_equal(log_end(t->b.eng, p), 0);
    assert_int_equal(replica_position(t->b.rep, p), 0);

    /* the untouched batch applies, and the position moves to its end */
    assert_int_equal(replica_follow_apply(t->b.rep, d), EDDY_OK);
    assert_int_equal(replica_position(t->b.rep, p), d->next_seq);
    assert_int_equal(log_end(t->b.eng, p), log_end(t->a.eng, p));
    /* the same batch again: it no longer starts at the position */
    assert_int_equal(replica_follow_apply(t->b.rep, d), EDDY_ERR_INVALID);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    free(before);
    free(after);
}

/* Pages end after their last record, and a follower whose position is past the leader's
 * log (a diverged log) is not counted as a copy. */
static void test_paging_and_diverged_follower(void **state)
{
    struct pair *t = *state;
    ingest_range(t, 0, 200);
    uint32_t p = 0;
    while (log_end(t->a.eng, p) < 5)
        p++;
    uint64_t end = log_end(t->a.eng, p);
    struct rpc_result res;
    Eddy__State__V1__ReplicaFetchResponse *r = fetch_n(t, "B", p, EPOCH, 1, 2, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    const Eddy__State__V1__ReplicaPartitionData *d = r->partitions[0];
    assert_int_equal(d->n_records, 2);
    assert_int_equal(d->from_seq, 1);
    assert_int_equal(d->records[0]->seq, 1);
    assert_int_equal(d->next_seq, d->records[1]->seq + 1);
    assert_int_equal(d->log_end, end);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* B at the log end is in sync and a copy of everything below it */
    r = fetch_n(t, "B", p, EPOCH, end, 0, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    assert_int_equal(replica_insync(t->a.rep, p), 2);
    struct completion w0;
    completion_init(&w0);
    assert_int_equal(completion_wait(&w0, replica_wait(t->a.rep, p, end, acked, &w0)), EDDY_OK);

    /* then it claims records the leader never had: no copy, out of the set at once, and
     * told that its log diverged */
    r = fetch_n(t, "B", p, EPOCH, end + 5, 0, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    assert_int_equal(r->partitions[0]->n_records, 0);
    assert_true(r->partitions[0]->diverged);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    assert_int_equal(replica_insync(t->a.rep, p), 1);
    struct completion w;
    completion_init(&w);
    assert_int_equal(completion_wait(&w, replica_wait(t->a.rep, p, end, acked, &w)),
                     EDDY_ERR_UNAVAILABLE);
}

/* Ingest events 'first'.. of users u-first.. straight into one engine (no replication):
 * the records only that copy has. */
static void ingest_only(engine *e, int first, int n)
{
    char (*ids)[16] = calloc((size_t)n, sizeof(*ids));
    char (*us)[16] = calloc((size_t)n, sizeof(*us));
    Eddy__V1__Event **evs = events(first, n, 13, ids, us);
    for (int i = 0; i < n; i += 50)
        ingest(e, evs + i, (size_t)(n - i < 50 ? n - i : 50));
    free_events(evs, n);
    free(ids);
    free(us);
}

/* An old leader's unacknowledged suffix: the follower's copy holds records the leader
 * never had under seqs the leader used for others (only the last record's CRC tells them
 * apart when the leader's log is longer; a copy past the leader's log end is covered by
 * test_paging_and_diverged_follower). Once it follows again, the leader says 'diverged'
 * and the copy is replaced by the leader's checkpoint: byte-identical to the leader, in
 * sync, acknowledging and following on. A copy that is only behind is not replaced.
 * Cluster mode: a partition's state, product state included, is a function of its own
 * log (stage 2 arrives through the product partitions' logs). */
static void test_diverged_copy_replaced_by_the_leaders_checkpoint(void **state)
{
    struct pair *t = *state;
    start_follower(t);
    ingest_range(t, 0, 300);
    assert_int_equal(wait_all(t), EDDY_OK);
    replica_free(t->b.rep); /* the follower stops; both copies go their own way */
    t->b.rep = NULL;
    uint64_t b_before[FIXTURE_PARTITIONS];
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        b_before[p] = log_end(t->b.eng, p);
    ingest_only(t->a.eng, 5000, 240);
    ingest_only(t->b.eng, 9000, 12);
    uint64_t diverged = 0, by_crc = 0;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        bool grew = log_end(t->b.eng, p) > b_before[p]; /* a copy only behind is a prefix */
        diverged += grew;
        by_crc += grew && log_end(t->b.eng, p) <= log_end(t->a.eng, p);
    }
    assert_true(by_crc > 0);
    assert_true(diverged < FIXTURE_PARTITIONS); /* and some copies are only behind */

    metrics *m = metrics_new();
    metric_counter *resyncs;
    t->b.rep = follower_counting_resyncs(t, m, &resyncs);
    assert_int_equal(replica_start(t->b.rep), EDDY_OK);
    EVENTUALLY(metric_counter_value(resyncs) == diverged);
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        EVENTUALLY(replica_position(t->b.rep, p) == log_end(t->a.eng, p) &&
                   replica_insync(t->a.rep, p) == 2);
    assert_int_equal(wait_all(t), EDDY_OK);
    ingest_range(t, 12000, 100); /* the copies follow on from the checkpoints */
    assert_int_equal(wait_all(t), EDDY_OK);
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        EVENTUALLY(replica_position(t->b.rep, p) == log_end(t->a.eng, p));
    char *da = dump(t->a.eng), *db = dump(t->b.eng);
    assert_string_equal(da, db);
    assert_int_equal(rows_with(db, "e9001"), 0); /* nothing of the diverged suffix */
    assert_int_equal(metric_counter_value(resyncs), diverged);
    free(da);
    free(db);
    replica_free(t->b.rep);
    t->b.rep = NULL;
    metrics_free(m);
}

/* A row written into partition 'p' outside its log (as a rebuild's swap does). */
struct outside {
    uint32_t p;
    struct completion c;
};

static eddy_err write_outside(void *ud, engine *e)
{
    struct outside *o = ud;
    struct store_key k, end;
    key_init(&k, o->p, T_PRODUCT);
    key_str(&k, "zz-rebuilt");
    key_prefix_end(&k, &end);
    store_batch *b = store_batch_new();
    assert_non_null(b);
    assert_int_equal(store_batch_put(b, k.buf, k.len, "x", 1), EDDY_OK);
    eddy_err err = store_replace_range_nosync(engine_store(e), &k, &end, b, NULL);
    store_batch_free(b);
    return err;
}

static void outside_done(void *ud, eddy_err err)
{
    struct outside *o = ud;
    completion_signal(&o->c, err, 0);
}

/* A leader whose state changed outside its log (a reprocess, a stage-2 rebuild) raises
 * the partition's generation: its follower, whose replay cannot reproduce the change,
 * copies the leader's checkpoint and ends byte-identical again; the other partitions are
 * left alone. */
static void test_state_replaced_outside_the_log_reaches_the_follower(void **state)
{
    struct pair *t = *state;
    metrics *m = metrics_new();
    metric_counter *resyncs;
    replica_free(t->b.rep);
    t->b.rep = follower_counting_resyncs(t, m, &resyncs);
    start_follower(t);
    ingest_range(t, 0, 200);
    assert_int_equal(wait_all(t), EDDY_OK);
    struct outside o = {.p = 3};
    completion_init(&o.c);
    assert_int_equal(completion_wait(&o.c, engine_exclusive_partition(t->a.eng, o.p,
                                                                       write_outside,
                                                                       outside_done, &o)),
                     EDDY_OK);
    char *da = dump(t->a.eng), *db = dump(t->b.eng);
    assert_int_equal(rows_with(da, "zz-rebuilt"), 1);
    assert_int_equal(rows_with(db, "zz-rebuilt"), 0); /* the log does not carry it */
    free(da);
    free(db);
    replica_invalidate(t->a.rep, o.p);
    EVENTUALLY(metric_counter_value(resyncs) == 1);
    EVENTUALLY(replica_insync(t->a.rep, o.p) == 2);
    assert_int_equal(wait_all(t), EDDY_OK);
    da = dump(t->a.eng);
    db = dump(t->b.eng);
    assert_string_equal(da, db);
    assert_int_equal(metric_counter_value(resyncs), 1); /* only that partition */
    free(da);
    free(db);
    replica_free(t->b.rep);
    t->b.rep = NULL;
    metrics_free(m);
}

static uint64_t log_total(engine *e)
{
    uint64_t n = 0;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        n += log_end(e, p);
    return n;
}

/* Idle watermarks close windows on the leader only, as log records the follower replays:
 * the follower, idle as long, appends none of its own under the same seqs. */
static void test_idle_records_come_from_the_leader(void **state)
{
    struct pair *t = *state;
    start_follower(t);
    ingest_range(t, 0, 40);
    assert_int_equal(wait_all(t), EDDY_OK);
    uint64_t events = log_total(t->a.eng);
    EVENTUALLY(log_total(t->a.eng) > events); /* the leader appended idle watermarks */
    /* the leader appends one each second from now on: compare both copies at a moment
     * when they have the same records (the follower is one fetch behind at most) */
    bool compared = false;
    for (int tries = 0; tries < 10 && !compared; tries++) {
        EVENTUALLY(log_total(t->b.eng) == log_total(t->a.eng));
        uint64_t at = log_total(t->a.eng);
        char *da = dump(t->a.eng), *db = dump(t->b.eng);
        if (log_total(t->a.eng) == at && log_total(t->b.eng) == at) {
            assert_string_equal(da, db);
            compared = true;
        }
        free(da);
        free(db);
    }
    assert_true(compared);
}

struct writable_at {
    struct completion c; /* value: whether writable, 'at' when */
    int64_t at;
};

static void writable_cb(void *ud, bool writable)
{
    struct writable_at *w = ud;
    w->at = clock_mono_ms();
    completion_signal(&w->c, EDDY_OK, writable);
}

/* A write of a partition short of in-sync copies is held: refused once
 * --replica-writable-wait passed without a new copy, let through the moment a new
 * follower joins the in-sync set (the owner tells, instead of the router retrying). */
static void test_write_held_until_writable(void **state)
{
    struct pair *t = *state;
    ingest_range(t, 0, 200); /* b is not fetching yet: A alone has the records */
    uint32_t p = 0;
    while (log_end(t->a.eng, p) < 3)
        p++;
    assert_false(replica_writable(t->a.rep, p));
    struct writable_at w1, w2;
    completion_init(&w1.c);
    int64_t t0 = clock_mono_ms();
    assert_int_equal(replica_when_writable(t->a.rep, p, writable_cb, &w1), EDDY_OK);
    assert_int_equal(completion_wait(&w1.c, EDDY_OK), EDDY_OK);
    assert_int_equal(w1.c.value, 0); /* not writable: the wait ran out */
    assert_true(w1.at - t0 >= WRITABLE_WAIT_MS);

    completion_init(&w2.c);
    assert_int_equal(replica_when_writable(t->a.rep, p, writable_cb, &w2), EDDY_OK);
    int64_t t1 = clock_mono_ms();
    assert_int_equal(replica_start(t->b.rep), EDDY_OK);
    assert_int_equal(completion_wait(&w2.c, EDDY_OK), EDDY_OK);
    assert_int_equal(w2.c.value, 1);
    assert_int_equal(replica_insync(t->a.rep, p), 2); /* told once B had joined */
    assert_true(w2.at - t1 < WRITABLE_WAIT_MS);
    /* writable now: answered at once, on this thread */
    struct writable_at w3;
    completion_init(&w3.c);
    assert_int_equal(replica_when_writable(t->a.rep, p, writable_cb, &w3), EDDY_OK);
    assert_true(w3.c.done);
    assert_int_equal(completion_wait(&w3.c, EDDY_OK), EDDY_OK);
    assert_int_equal(w3.c.value, 1);
}

/* Holds an engine's writer (engine_exclusive) until released. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, open;
    struct completion done;
};

static eddy_err gate_hold(void *ud, engine *e)
{
    (void)e;
    struct gate *g = ud;
    pthread_mutex_lock(&g->mu);
    g->entered = true;
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return EDDY_OK;
}

static void gate_done(void *ud, eddy_err err)
{
    struct gate *g = ud;
    completion_signal(&g->done, err, 0);
}

static bool gate_entered(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    bool in = g->entered;
    pthread_mutex_unlock(&g->mu);
    return in;
}

/* A new follower hands the batches of every partition in a fetch answer to its engine
 * before it waits for the first, so they share group commits (a failover's new follower
 * copies ~P/N partitions: one synced write each made its catch-up take seconds): with
 * the follower's writer held, every record the leader has ends up queued at once. */
static void test_new_follower_batches_share_commits(void **state)
{
    struct pair *t = *state;
    ingest_range(t, 0, 600);
    uint32_t nonempty = 0;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        nonempty += log_end(t->a.eng, p) > 0;
    assert_true(nonempty >= 4);
    struct gate g = {.entered = false, .open = false};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    completion_init(&g.done);
    assert_int_equal(engine_exclusive(t->b.eng, gate_hold, gate_done, &g), EDDY_OK);
    EVENTUALLY(gate_entered(&g));
    assert_int_equal(replica_start(t->b.rep), EDDY_OK);
    int64_t until = clock_mono_ms() + 15000; /* the gate opens before any assertion */
    while (engine_queue_depth(t->b.eng) < 600 && clock_mono_ms() < until)
        usleep(2000);
    int64_t queued = engine_queue_depth(t->b.eng);
    uint64_t durable = 0;
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        durable += replica_position(t->b.rep, p);
    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    assert_int_equal(completion_wait(&g.done, EDDY_OK), EDDY_OK);
    assert_int_equal(queued, 600);
    assert_int_equal(durable, 0); /* nothing was durable while the writer was held */
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        EVENTUALLY(replica_insync(t->a.rep, p) == 2);
    assert_int_equal(wait_all(t), EDDY_OK);
    char *da = dump(t->a.eng), *db = dump(t->b.eng);
    assert_string_equal(da, db);
    free(da);
    free(db);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
}

static void test_not_replicated_no_wait(void **state)
{
    struct pair *t = *state;
    struct replica_part one[FIXTURE_PARTITIONS];
    memcpy(one, t->map, sizeof(one));
    for (int p = 0; p < FIXTURE_PARTITIONS; p++)
        one[p].nreplicas = 1;
    replica_set_map(t->a.rep, one, 2);
    ingest_range(t, 0, 50);
    /* R = 1: acknowledged at once, on this thread, with no follower anywhere */
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        struct completion w;
        completion_init(&w);
        assert_int_equal(replica_wait(t->a.rep, p, log_end(t->a.eng, p), acked, &w), EDDY_OK);
        assert_true(w.done);
        assert_int_equal(completion_wait(&w, EDDY_OK), EDDY_OK);
        assert_true(replica_writable(t->a.rep, p));
    }
}

/* A follower's staleness for stale reads: unknown until its leader answered, no record
 * behind once caught up, and the time since the leader's last answer grows when the
 * fetches stop; the leader itself follows nothing. */
static void test_follower_lag(void **state)
{
    struct pair *t = *state;
    uint64_t lag = 1, ms = 1;
    assert_false(replica_follower_lag(t->b.rep, 0, &lag, &ms)); /* not fetched yet */
    assert_int_equal(lag, 0);
    assert_int_equal(ms, 0);
    start_follower(t);
    ingest_range(t, 0, 200);
    assert_int_equal(wait_all(t), EDDY_OK);
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++) {
        assert_false(replica_follower_lag(t->a.rep, p, &lag, &ms)); /* the leader */
        EVENTUALLY(replica_follower_lag(t->b.rep, p, &lag, &ms) && lag == 0);
        assert_true(ms < 5000);
    }
    replica_stop(t->b.rep);
    assert_true(replica_follower_lag(t->b.rep, 0, &lag, &ms));
    uint64_t before = ms;
    EVENTUALLY(replica_follower_lag(t->b.rep, 0, &lag, &ms) && ms >= before + 200);
    assert_false(replica_follower_lag(t->b.rep, FIXTURE_PARTITIONS, &lag, &ms));
}

/* The in-sync record at 'key' in the recorder's etcd, decoded into *rec; false when
 * there is none (or it cannot be read). */
static bool read_isr(const char *key, struct cluster_isr *rec)
{
    struct etcd_kv kv = {0};
    bool found = false;
    bool ok = etcd_get(recorder_client, key, &kv, &found) == EDDY_OK && found &&
              cluster_isr_from_json(kv.value, kv.value_len, rec) == EDDY_OK;
    etcd_kv_release(&kv);
    return ok;
}

/* A follower counts towards min-insync only once the in-sync record in etcd names it: the
 * coordinator promotes nothing else. With etcd down the leader cannot record B's join,
 * so nothing is acknowledged though B is in sync at the log end (acknowledged then, the
 * events were on a copy no record names: lost with the leader); once etcd is back the
 * record names B and the acknowledgement follows. */
static void test_ack_waits_for_the_record(void **state)
{
    struct pair *t = *state;
    char key[64];
    struct cluster_isr rec;
    ingest_range(t, 0, 100);
    uint32_t p = 0;
    while (log_end(t->a.eng, p) == 0)
        p++;
    uint64_t end = log_end(t->a.eng, p);
    snprintf(key, sizeof(key), "/eddy/t/isr/%u", p);
    /* the leader's first record (itself alone) is written while etcd is up */
    EVENTUALLY(read_isr(key, &rec));
    assert_int_equal(rec.nisr, 1);
    etcd_proc_kill(recorder);
    /* B fetches by hand at the log end: in sync, with every record */
    struct rpc_result res;
    Eddy__State__V1__ReplicaFetchResponse *r = fetch(t, "B", p, EPOCH, end, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    assert_int_equal(replica_insync(t->a.rep, p), 2);
    struct completion w;
    completion_init(&w);
    assert_int_equal(replica_wait(t->a.rep, p, end, acked, &w), EDDY_OK);
    /* the fetch that reports the position again: an acknowledgement it allowed would have
     * run before its answer */
    r = fetch(t, "B", p, EPOCH, end, &res);
    assert_int_equal(res.code, GRPC_STATUS_OK);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    assert_false(w.done);
    assert_int_equal(replica_committed(t->a.rep, p), 0);
    assert_true(etcd_proc_run(recorder));
    assert_int_equal(completion_wait(&w, EDDY_OK), EDDY_OK);
    assert_true(read_isr(key, &rec));
    assert_int_equal(rec.nisr, 2);
    assert_true(cluster_isr_has(&rec, "B"));
    assert_int_equal(rec.npromoted, 0);
    assert_int_equal(replica_committed(t->a.rep, p), end);
}

static struct cluster_isr isr_of(uint64_t epoch, const char *ids, const char *from)
{
    struct cluster_isr x = {.epoch = epoch};
    for (const char *c = ids; *c; c++)
        snprintf(x.isr[x.nisr++], CLUSTER_ID_MAX, "%c", *c);
    for (const char *c = from; *c; c++)
        snprintf(x.promoted_from[x.npromoted++], CLUSTER_ID_MAX, "%c", *c);
    snprintf(x.leader, CLUSTER_ID_MAX, "%s", x.isr[0]);
    return x;
}

/* 'next' as replica_isr_next leaves it over 'stored' names 'from' as promoted_from. */
static void assert_next(const struct cluster_isr *stored, const char *ids, uint64_t epoch,
                        const char *from)
{
    struct cluster_isr next = isr_of(epoch, ids, "X"); /* a caller's leftover: replaced */
    replica_isr_next(stored, &next);
    struct cluster_isr want = isr_of(epoch, ids, from);
    assert_int_equal(next.npromoted, want.npromoted);
    for (uint32_t i = 0; i < want.npromoted; i++)
        assert_string_equal(next.promoted_from[i], want.promoted_from[i]);
    assert_int_equal(next.nisr, want.nisr);
}

/* The leader's in-sync record: B, promoted at 6 from [A, B], keeps that set while it is
 * in sync alone (and over its own record, after a restart) and drops it once a follower
 * joined; a leader that was no copy of the older set (a move's target), a record of the
 * old leader alone, or one of its own epoch without promoted_from carry nothing. */
static void test_isr_record(void **state)
{
    (void)state;
    struct cluster_isr ab5 = isr_of(5, "AB", ""), abc5 = isr_of(5, "ABC", "");
    struct cluster_isr a5 = isr_of(5, "A", ""), b6_ab = isr_of(6, "B", "AB");
    struct cluster_isr bc6 = isr_of(6, "BC", ""), b7 = isr_of(7, "B", "");
    assert_next(NULL, "B", 6, "");
    assert_next(&ab5, "B", 6, "AB");
    assert_next(&abc5, "B", 6, "ABC");
    assert_next(&b6_ab, "B", 6, "AB");   /* B restarted, still alone */
    assert_next(&b6_ab, "BC", 6, "");    /* C joined */
    assert_next(&bc6, "B", 6, "");       /* C left again: as before */
    assert_next(&ab5, "T", 6, "");       /* a move's target */
    assert_next(&a5, "B", 6, "");        /* the old leader was alone */
    assert_next(&b7, "B", 6, "");        /* a newer epoch's: not written anyway */
    /* a chain: A, promoted at 5 from [X, A], lost in sync alone; X returned leads at 6 */
    struct cluster_isr a5_xa = isr_of(5, "A", "XA");
    assert_next(&a5_xa, "X", 6, "AX");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_follower_identical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_follower_identical_stage2_and_delete,
                                        setup_clustered, teardown),
        cmocka_unit_test_setup_teardown(test_delete_drops_the_users_outbox_rows, setup_clustered,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ack_waits_for_follower, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_waits_for_every_in_sync_follower, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_paging_and_diverged_follower, setup, teardown),
        cmocka_unit_test_setup_teardown(test_diverged_copy_replaced_by_the_leaders_checkpoint,
                                        setup_clustered, teardown),
        cmocka_unit_test_setup_teardown(test_state_replaced_outside_the_log_reaches_the_follower,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_records_come_from_the_leader, setup_idle,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_not_replicated_no_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_follower_batches_share_commits, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_held_until_writable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_follower_lag, setup, teardown),
        cmocka_unit_test(test_isr_record),
        cmocka_unit_test_setup_teardown(test_ack_waits_for_the_record, setup_recorded,
                                        teardown_recorded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
