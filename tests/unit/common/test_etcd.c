/* common/etcd.c against a real etcd 3.4 started here on free loopback ports in a temporary
 * directory (fast raft timings), killed and removed at the end: KV, txn/CAS, leases and
 * their expiry, sessions (kept alive, then lost when etcd dies), watches (order, resume
 * across an etcd restart, RESYNC after compaction, prompt stop), endpoint failover,
 * bounded timeouts against a peer that never answers, and concurrent use of one client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/etcd.h"
#include "tests/support/etcd_proc.h"

/* --- fixtures ---------------------------------------------------------------------------- */

static struct etcd_proc *shared; /* one etcd for the tests that do not kill it */

static int group_setup(void **state)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int64_t t0 = now_ms();
    shared = etcd_proc_new();
    if (!shared)
        return -1;
    print_message("etcd healthy in %lld ms at %s\n", (long long)(now_ms() - t0), shared->url);
    return 0;
}

static int group_teardown(void **state)
{
    etcd_proc_free(shared);
    shared = NULL;
    return 0;
}

static etcd_client *client(const char *url, int64_t timeout_ms)
{
    etcd_client *c = etcd_client_new(url, timeout_ms);
    assert_non_null(c);
    return c;
}

/* --- KV ---------------------------------------------------------------------------------- */

static void test_kv(void **state)
{
    etcd_client *c = client(shared->url, 2000);
    int64_t r1 = 0, r2 = 0, r3 = 0, rev = 0, deleted = -1;
    const char bin[] = {'a', '\0', 'b', (char)0xff};
    assert_int_equal(etcd_put(c, "/t/kv/a", "one", 3, 0, &r1), EDDY_OK);
    assert_int_equal(etcd_put(c, "/t/kv/b", bin, sizeof(bin), 0, &r2), EDDY_OK);
    assert_int_equal(etcd_put(c, "/t/kv0", "outside", 7, 0, &r3), EDDY_OK);
    assert_int_equal(etcd_put(c, "/t/kv/e", "", 0, 0, NULL), EDDY_OK); /* empty value */
    assert_true(r1 > 0 && r2 == r1 + 1 && r3 == r2 + 1);

    struct etcd_kv kv;
    bool found = false;
    assert_int_equal(etcd_get(c, "/t/kv/a", &kv, &found), EDDY_OK);
    assert_true(found);
    assert_string_equal(kv.key, "/t/kv/a");
    assert_int_equal(kv.value_len, 3);
    assert_string_equal(kv.value, "one");
    assert_int_equal(kv.create_revision, r1);
    assert_int_equal(kv.mod_revision, r1);
    assert_int_equal(kv.version, 1);
    assert_int_equal(kv.lease, 0);
    etcd_kv_release(&kv);

    assert_int_equal(etcd_put(c, "/t/kv/a", "two", 3, 0, NULL), EDDY_OK);
    assert_int_equal(etcd_get(c, "/t/kv/a", &kv, &found), EDDY_OK);
    assert_string_equal(kv.value, "two");
    assert_int_equal(kv.version, 2);
    assert_int_equal(kv.create_revision, r1);
    assert_true(kv.mod_revision > r3);
    etcd_kv_release(&kv);

    assert_int_equal(etcd_get(c, "/t/kv/missing", &kv, &found), EDDY_OK);
    assert_false(found);
    assert_null(kv.key);

    struct etcd_kvs kvs;
    assert_int_equal(etcd_range_prefix(c, "/t/kv/", &kvs, &rev), EDDY_OK);
    assert_int_equal(kvs.n, 3); /* not /t/kv0 */
    assert_string_equal(kvs.kvs[0].key, "/t/kv/a");
    assert_string_equal(kvs.kvs[1].key, "/t/kv/b");
    assert_memory_equal(kvs.kvs[1].value, bin, sizeof(bin));
    assert_int_equal(kvs.kvs[1].value_len, sizeof(bin));
    assert_string_equal(kvs.kvs[2].key, "/t/kv/e");
    assert_int_equal(kvs.kvs[2].value_len, 0);
    assert_string_equal(kvs.kvs[2].value, "");
    assert_true(rev >= kvs.kvs[0].mod_revision);
    etcd_kvs_release(&kvs);

    assert_int_equal(etcd_range_prefix(c, "/t/none/", &kvs, &rev), EDDY_OK);
    assert_int_equal(kvs.n, 0);
    assert_null(kvs.kvs);

    assert_int_equal(etcd_delete(c, "/t/kv/a"), EDDY_OK);
    assert_int_equal(etcd_delete(c, "/t/kv/a"), EDDY_OK); /* already gone: fine */
    assert_int_equal(etcd_get(c, "/t/kv/a", &kv, &found), EDDY_OK);
    assert_false(found);
    assert_int_equal(etcd_delete_prefix(c, "/t/kv/", &deleted), EDDY_OK);
    assert_int_equal(deleted, 2);
    assert_int_equal(etcd_range_prefix(c, "/t/kv", &kvs, NULL), EDDY_OK);
    assert_int_equal(kvs.n, 1);
    assert_string_equal(kvs.kvs[0].key, "/t/kv0");
    etcd_kvs_release(&kvs);

    /* Bad input is refused before any I/O, with a message. */
    assert_int_equal(etcd_put(c, "", "x", 1, 0, NULL), EDDY_ERR_INVALID);
    assert_true(strlen(etcd_last_error(c)) > 0);
    etcd_client_free(c);
}

/* --- txn --------------------------------------------------------------------------------- */

static void test_txn_cas(void **state)
{
    etcd_client *c = client(shared->url, 2000);
    bool ok = false;
    struct etcd_kv cur;
    /* create-if-absent: first wins, second loses and learns the winner */
    assert_int_equal(etcd_txn_cas(c, "/t/cas/leader", 0, "A", 1, 0, &ok, &cur), EDDY_OK);
    assert_true(ok);
    assert_string_equal(cur.value, "A");
    int64_t rev_a = cur.mod_revision;
    assert_true(rev_a > 0);
    assert_int_equal(cur.create_revision, rev_a);
    etcd_kv_release(&cur);
    assert_int_equal(etcd_txn_cas(c, "/t/cas/leader", 0, "B", 1, 0, &ok, &cur), EDDY_OK);
    assert_false(ok);
    assert_string_equal(cur.value, "A");
    assert_int_equal(cur.mod_revision, rev_a);
    etcd_kv_release(&cur);

    /* CAS on mod_revision: the right revision wins, a stale one loses */
    assert_int_equal(etcd_txn_cas(c, "/t/cas/leader", rev_a, "C", 1, 0, &ok, &cur), EDDY_OK);
    assert_true(ok);
    int64_t rev_c = cur.mod_revision;
    assert_true(rev_c > rev_a);
    assert_int_equal(cur.version, 2);
    etcd_kv_release(&cur);
    assert_int_equal(etcd_txn_cas(c, "/t/cas/leader", rev_a, "D", 1, 0, &ok, &cur), EDDY_OK);
    assert_false(ok);
    assert_int_equal(cur.mod_revision, rev_c);
    assert_string_equal(cur.value, "C");
    etcd_kv_release(&cur);
    /* a CAS on a key that does not exist (expecting a revision) loses, current is empty */
    assert_int_equal(etcd_txn_cas(c, "/t/cas/none", rev_a, "E", 1, 0, &ok, &cur), EDDY_OK);
    assert_false(ok);
    assert_null(cur.key);
    assert_int_equal(cur.mod_revision, 0);
    assert_int_equal(etcd_txn_cas(c, "/t/cas/none", 0, "E", 1, 0, &ok, NULL), EDDY_OK);
    assert_true(ok);

    /* A general txn: value compare, put + delete on success, range on failure. */
    struct etcd_txn t;
    struct etcd_txn_result r;
    etcd_txn_init(&t);
    etcd_txn_compare_value(&t, "/t/cas/leader", ETCD_CMP_EQUAL, "C", 1);
    etcd_txn_compare(&t, "/t/cas/none", ETCD_CMP_VERSION, ETCD_CMP_GREATER, 0);
    etcd_txn_put(&t, ETCD_ON_SUCCESS, "/t/cas/x", "xv", 2, 0);
    etcd_txn_delete(&t, ETCD_ON_SUCCESS, "/t/cas/none", false);
    etcd_txn_range(&t, ETCD_ON_FAILURE, "/t/cas/", true);
    assert_int_equal(etcd_txn(c, &t, &r), EDDY_OK);
    assert_true(r.succeeded);
    assert_int_equal(r.n_ops, 2);
    assert_int_equal(r.ops[0].type, ETCD_OP_PUT);
    assert_int_equal(r.ops[1].type, ETCD_OP_DELETE);
    assert_int_equal(r.ops[1].deleted, 1);
    int64_t rev_txn = r.revision;
    etcd_txn_result_release(&r);
    /* Same txn again: "none" is gone, so the failure branch ranges over the prefix. */
    assert_int_equal(etcd_txn(c, &t, &r), EDDY_OK);
    assert_false(r.succeeded);
    assert_int_equal(r.revision, rev_txn);
    assert_int_equal(r.n_ops, 1);
    assert_int_equal(r.ops[0].type, ETCD_OP_RANGE);
    assert_int_equal(r.ops[0].kvs.n, 2);
    assert_string_equal(r.ops[0].kvs.kvs[0].key, "/t/cas/leader");
    assert_string_equal(r.ops[0].kvs.kvs[1].key, "/t/cas/x");
    etcd_txn_result_release(&r);

    /* Over the builder's capacity: refused without a request. */
    etcd_txn_init(&t);
    for (int i = 0; i <= ETCD_TXN_MAX; i++)
        etcd_txn_range(&t, ETCD_ON_SUCCESS, "/t/cas/x", false);
    assert_int_equal(etcd_txn(c, &t, &r), EDDY_ERR_TOO_LARGE);
    /* Two writes of one key in a branch: etcd says INVALID_ARGUMENT (code 3). */
    etcd_txn_init(&t);
    etcd_txn_put(&t, ETCD_ON_SUCCESS, "/t/cas/x", "1", 1, 0);
    etcd_txn_put(&t, ETCD_ON_SUCCESS, "/t/cas/x", "2", 1, 0);
    assert_int_equal(etcd_txn(c, &t, &r), EDDY_ERR_INVALID);
    assert_non_null(strstr(etcd_last_error(c), "duplicate key"));
    assert_int_equal(etcd_delete_prefix(c, "/t/cas/", NULL), EDDY_OK);
    etcd_client_free(c);
}

/* --- leases ------------------------------------------------------------------------------ */

static void test_lease_grant_keepalive_revoke(void **state)
{
    etcd_client *c = client(shared->url, 2000);
    int64_t id = 0, granted = 0, ttl = 0;
    assert_int_equal(etcd_lease_grant(c, 30, &id, &granted), EDDY_OK);
    assert_true(id != 0);
    assert_int_equal(granted, 30);
    assert_int_equal(etcd_put(c, "/t/lease/k", "v", 1, id, NULL), EDDY_OK);
    assert_int_equal(etcd_lease_keepalive(c, id, &ttl), EDDY_OK);
    assert_int_equal(ttl, 30);

    struct etcd_kv kv;
    bool found;
    assert_int_equal(etcd_get(c, "/t/lease/k", &kv, &found), EDDY_OK);
    assert_true(found);
    assert_int_equal(kv.lease, id);
    etcd_kv_release(&kv);
    /* ETCD_LEASE_KEEP keeps the lease; a put with lease 0 detaches the key from it. */
    assert_int_equal(etcd_put(c, "/t/lease/k", "w", 1, ETCD_LEASE_KEEP, NULL), EDDY_OK);
    assert_int_equal(etcd_get(c, "/t/lease/k", &kv, &found), EDDY_OK);
    assert_int_equal(kv.lease, id);
    etcd_kv_release(&kv);
    assert_int_equal(etcd_put(c, "/t/lease/detached", "v", 1, id, NULL), EDDY_OK);
    assert_int_equal(etcd_put(c, "/t/lease/detached", "v", 1, 0, NULL), EDDY_OK);

    assert_int_equal(etcd_lease_revoke(c, id), EDDY_OK);
    assert_int_equal(etcd_get(c, "/t/lease/k", &kv, &found), EDDY_OK);
    assert_false(found); /* revoking deletes the lease's keys */
    assert_int_equal(etcd_get(c, "/t/lease/detached", &kv, &found), EDDY_OK);
    assert_true(found);
    etcd_kv_release(&kv);
    /* A dead lease: keepalive says NOT_FOUND (HTTP 200 without TTL), revoke code 5. */
    assert_int_equal(etcd_lease_keepalive(c, id, &ttl), EDDY_ERR_NOT_FOUND);
    assert_int_equal(etcd_lease_revoke(c, id), EDDY_ERR_NOT_FOUND);
    assert_non_null(strstr(etcd_last_error(c), "lease not found"));
    assert_int_equal(etcd_delete_prefix(c, "/t/lease/", NULL), EDDY_OK);
    etcd_client_free(c);
}

static void test_lease_expiry(void **state)
{
    etcd_client *c = client(shared->url, 2000);
    int64_t id = 0, granted = 0, ttl = 0;
    assert_int_equal(etcd_lease_grant(c, 1, &id, &granted), EDDY_OK);
    assert_int_equal(granted, 1);
    assert_int_equal(etcd_put(c, "/t/expiry/k", "v", 1, id, NULL), EDDY_OK);
    int64_t t0 = now_ms();
    bool found = true;
    while (found && now_ms() - t0 < 5000) { /* no keepalives: etcd expires the lease */
        struct etcd_kv kv;
        assert_int_equal(etcd_get(c, "/t/expiry/k", &kv, &found), EDDY_OK);
        etcd_kv_release(&kv);
        if (found)
            sleep_ms(50);
    }
    assert_false(found);
    print_message("leased key gone %lld ms after the put (TTL 1 s)\n",
                  (long long)(now_ms() - t0));
    assert_true(now_ms() - t0 >= 900);
    assert_int_equal(etcd_lease_keepalive(c, id, &ttl), EDDY_ERR_NOT_FOUND);
    etcd_client_free(c);
}

/* --- sessions ---------------------------------------------------------------------------- */

struct lost {
    atomic_int calls;
    atomic_llong at_ms;
};

static void on_lost(etcd_session *s, void *ud)
{
    struct lost *l = ud;
    assert_false(etcd_session_alive(s));
    atomic_store(&l->at_ms, now_ms());
    atomic_fetch_add(&l->calls, 1);
}

static void test_session_kept_alive(void **state)
{
    etcd_client *c = client(shared->url, 2000);
    struct lost l = {0};
    etcd_session *s = etcd_session_new(c, 1, on_lost, &l);
    assert_non_null(s);
    int64_t lease = etcd_session_lease(s);
    assert_true(lease != 0);
    assert_int_equal(etcd_session_ttl(s), 1);
    assert_int_equal(etcd_put(c, "/t/session/n1", "addr", 4, lease, NULL), EDDY_OK);
    int64_t t0 = now_ms();
    while (now_ms() - t0 < 2500) { /* 2.5 TTLs: only the keepalives keep it */
        assert_true(etcd_session_alive(s));
        sleep_ms(100);
    }
    struct etcd_kv kv;
    bool found;
    assert_int_equal(etcd_get(c, "/t/session/n1", &kv, &found), EDDY_OK);
    assert_true(found);
    etcd_kv_release(&kv);
    assert_int_equal(atomic_load(&l.calls), 0);
    etcd_session_free(s); /* revokes: the key goes at once */
    assert_int_equal(etcd_get(c, "/t/session/n1", &kv, &found), EDDY_OK);
    assert_false(found);
    assert_int_equal(atomic_load(&l.calls), 0);
    etcd_client_free(c);
}

static void test_session_lost_when_etcd_dies(void **state)
{
    struct etcd_proc *e = etcd_proc_new();
    assert_non_null(e);
    etcd_client *c = client(e->url, 1000);
    struct lost l = {0};
    etcd_session *s = etcd_session_new(c, 2, on_lost, &l);
    assert_non_null(s);
    assert_int_equal(etcd_session_ttl(s), 2);
    assert_true(etcd_session_alive(s));
    sleep_ms(300);
    assert_true(etcd_session_alive(s));
    int64_t killed = now_ms();
    etcd_proc_kill(e);
    while (etcd_session_alive(s) && now_ms() - killed < 4000)
        sleep_ms(10);
    int64_t lost_after = now_ms() - killed;
    print_message("session lost %lld ms after etcd was killed (TTL 2000 ms)\n",
                  (long long)lost_after);
    assert_false(etcd_session_alive(s));
    assert_true(lost_after < 2000); /* before the lease could have expired */
    int64_t t0 = now_ms();
    while (atomic_load(&l.calls) == 0 && now_ms() - t0 < 2000)
        sleep_ms(10);
    assert_int_equal(atomic_load(&l.calls), 1);
    assert_true(atomic_load(&l.at_ms) - killed < 2000);
    assert_false(etcd_session_alive(s)); /* final */
    etcd_session_free(s);
    etcd_client_free(c);
    etcd_proc_free(e);
}

/* --- watches ----------------------------------------------------------------------------- */

struct rec {
    enum etcd_event_type type;
    char key[64], value[64], prev[64];
    int64_t mod_revision, revision, compact_revision;
};

struct collector {
    pthread_mutex_t mu;
    struct rec ev[64]; /* the first 64 events */
    int n;             /* all events */
    int puts, deletes;
    int64_t last_mod;  /* PUT/DELETE mod_revision must never go back */
    bool out_of_order;
    etcd_client *c;     /* for RESYNC: re-read the prefix */
    const char *prefix;
    int64_t resync_from; /* what the RESYNC callback returned */
};

static int64_t collect(const struct etcd_event *ev, void *ud)
{
    struct collector *col = ud;
    int64_t ret = 0;
    if (ev->type == ETCD_EVENT_RESYNC && col->c) {
        struct etcd_kvs kvs;
        int64_t rev = 0;
        if (etcd_range_prefix(col->c, col->prefix, &kvs, &rev) == EDDY_OK) {
            etcd_kvs_release(&kvs);
            ret = rev + 1;
        }
    }
    pthread_mutex_lock(&col->mu);
    if (ev->type != ETCD_EVENT_RESYNC) {
        col->out_of_order |= ev->kv.mod_revision < col->last_mod;
        col->last_mod = ev->kv.mod_revision;
        col->puts += ev->type == ETCD_EVENT_PUT;
        col->deletes += ev->type == ETCD_EVENT_DELETE;
    }
    if (col->n++ < 64) {
        struct rec *r = &col->ev[col->n - 1];
        r->type = ev->type;
        snprintf(r->key, sizeof(r->key), "%s", ev->kv.key ? ev->kv.key : "");
        snprintf(r->value, sizeof(r->value), "%s", ev->kv.value ? ev->kv.value : "");
        snprintf(r->prev, sizeof(r->prev), "%s", ev->prev_kv.value ? ev->prev_kv.value : "");
        r->mod_revision = ev->kv.mod_revision;
        r->revision = ev->revision;
        r->compact_revision = ev->compact_revision;
        col->resync_from = ev->type == ETCD_EVENT_RESYNC ? ret : col->resync_from;
    }
    pthread_mutex_unlock(&col->mu);
    return ret;
}

static void collector_init(struct collector *col)
{
    memset(col, 0, sizeof(*col));
    pthread_mutex_init(&col->mu, NULL);
}

static int collected(struct collector *col)
{
    pthread_mutex_lock(&col->mu);
    int n = col->n;
    pthread_mutex_unlock(&col->mu);
    return n;
}

static bool wait_events(struct collector *col, int n, int64_t timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    while (collected(col) < n && now_ms() < deadline)
        sleep_ms(5);
    return collected(col) >= n;
}

static bool wait_connected(etcd_watch *w, int64_t timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    while (!etcd_watch_connected(w) && now_ms() < deadline)
        sleep_ms(5);
    return etcd_watch_connected(w);
}

static void test_watch_order(void **state)
{
    etcd_client *c = client(shared->url, 2000);
    struct collector col;
    collector_init(&col);
    int64_t base = 0, r1, r2, r3, r4;
    struct etcd_kvs kvs;
    assert_int_equal(etcd_range_prefix(c, "/t/watch/", &kvs, &base), EDDY_OK);
    etcd_kvs_release(&kvs);
    /* Writes made before the watch is even connected are not missed: it starts at base+1. */
    assert_int_equal(etcd_put(c, "/t/watch/a", "1", 1, 0, &r1), EDDY_OK);
    etcd_watch *w = etcd_watch_start(c, "/t/watch/", true, base + 1, collect, &col);
    assert_non_null(w);
    assert_int_equal(etcd_put(c, "/t/watch/b", "2", 1, 0, &r2), EDDY_OK);
    assert_int_equal(etcd_put(c, "/t/watchX", "no", 2, 0, NULL), EDDY_OK); /* not in prefix */
    assert_int_equal(etcd_put(c, "/t/watch/a", "3", 1, 0, &r3), EDDY_OK);
    assert_int_equal(etcd_delete(c, "/t/watch/a"), EDDY_OK);
    assert_int_equal(etcd_range_prefix(c, "/t/none", &kvs, &r4), EDDY_OK);
    etcd_kvs_release(&kvs);
    assert_true(wait_events(&col, 4, 5000));
    sleep_ms(100); /* nothing else may arrive */
    assert_int_equal(collected(&col), 4);
    assert_int_equal(col.ev[0].type, ETCD_EVENT_PUT);
    assert_string_equal(col.ev[0].key, "/t/watch/a");
    assert_string_equal(col.ev[0].value, "1");
    assert_int_equal(col.ev[0].mod_revision, r1);
    assert_int_equal(col.ev[1].type, ETCD_EVENT_PUT);
    assert_string_equal(col.ev[1].key, "/t/watch/b");
    assert_int_equal(col.ev[1].mod_revision, r2);
    assert_int_equal(col.ev[2].type, ETCD_EVENT_PUT);
    assert_string_equal(col.ev[2].value, "3");
    assert_string_equal(col.ev[2].prev, "1");
    assert_int_equal(col.ev[2].mod_revision, r3);
    assert_int_equal(col.ev[3].type, ETCD_EVENT_DELETE);
    assert_string_equal(col.ev[3].key, "/t/watch/a");
    assert_string_equal(col.ev[3].prev, "3"); /* prev_kv carries the deleted value */
    assert_int_equal(col.ev[3].mod_revision, r4);
    for (int i = 0; i < 4; i++)
        assert_true(col.ev[i].revision >= col.ev[i].mod_revision);
    assert_true(etcd_watch_connected(w));

    /* A single-key watch from now. */
    struct collector one;
    collector_init(&one);
    etcd_watch *w1 = etcd_watch_start(c, "/t/watch/b", false, 0, collect, &one);
    assert_non_null(w1);
    assert_true(wait_connected(w1, 5000));
    assert_int_equal(etcd_put(c, "/t/watch/c", "x", 1, 0, NULL), EDDY_OK);
    assert_int_equal(etcd_put(c, "/t/watch/b", "y", 1, 0, NULL), EDDY_OK);
    assert_true(wait_events(&one, 1, 5000));
    assert_string_equal(one.ev[0].key, "/t/watch/b");
    assert_string_equal(one.ev[0].value, "y");

    /* Stopping an idle watch is prompt (woken, not polled). */
    int64_t t0 = now_ms();
    etcd_watch_stop(w);
    etcd_watch_stop(w1);
    int64_t took = now_ms() - t0;
    print_message("two idle watches stopped in %lld ms\n", (long long)took);
    assert_true(took < 300);
    etcd_watch_stop(NULL);
    assert_int_equal(etcd_delete_prefix(c, "/t/watch", NULL), EDDY_OK);
    etcd_client_free(c);
}

/* The watch talks to 'url'; writes go through 'url2'. While the watch is cut off (etcd
 * down, then up on url2 only) a write lands; when etcd is back on both URLs the same watch
 * object must deliver it: only a resume from its last revision + 1 can. */
static void test_watch_resumes_after_restart(void **state)
{
    struct etcd_proc *e = etcd_proc_new();
    assert_non_null(e);
    etcd_client *wc = client(e->url, 1000), *c = client(e->url2, 1000);
    struct collector col;
    collector_init(&col);
    int64_t r1 = 0, r2 = 0;
    etcd_watch *w = etcd_watch_start(wc, "/t/restart/", true, 0, collect, &col);
    assert_non_null(w);
    assert_true(wait_connected(w, 5000));
    assert_int_equal(etcd_put(c, "/t/restart/k", "before", 6, 0, &r1), EDDY_OK);
    assert_true(wait_events(&col, 1, 5000));

    etcd_proc_kill(e);
    int64_t t0 = now_ms();
    while (etcd_watch_connected(w) && now_ms() - t0 < 3000)
        sleep_ms(5);
    assert_false(etcd_watch_connected(w));
    e->only_second = true; /* same data dir; the watch's URL stays closed */
    assert_true(etcd_proc_run(e));
    assert_int_equal(etcd_put(c, "/t/restart/k", "after", 5, 0, &r2), EDDY_OK);
    assert_int_equal(etcd_put(c, "/t/restart/k2", "more", 4, 0, NULL), EDDY_OK);
    assert_int_equal(collected(&col), 1);
    etcd_proc_kill(e);
    e->only_second = false;
    assert_true(etcd_proc_run(e));
    int64_t up = now_ms();
    assert_true(wait_events(&col, 3, 5000));
    print_message("watch delivered the missed writes %lld ms after etcd was back\n",
                  (long long)(now_ms() - up));
    assert_true(now_ms() - up < 2000); /* backoff is capped at 1 s */
    sleep_ms(100);
    assert_int_equal(collected(&col), 3); /* no repeat of "before" */
    assert_string_equal(col.ev[0].value, "before");
    assert_int_equal(col.ev[0].mod_revision, r1);
    assert_string_equal(col.ev[1].value, "after");
    assert_string_equal(col.ev[1].prev, "before");
    assert_int_equal(col.ev[1].mod_revision, r2);
    assert_string_equal(col.ev[2].key, "/t/restart/k2");
    assert_true(etcd_watch_connected(w));
    etcd_watch_stop(w);
    etcd_client_free(wc);
    etcd_client_free(c);
    etcd_proc_free(e);
}

static void test_watch_compacted_resync(void **state)
{
    etcd_client *c = client(shared->url, 2000);
    int64_t first = 0, rev = 0;
    assert_int_equal(etcd_put(c, "/t/compact/k", "0", 1, 0, &first), EDDY_OK);
    for (int i = 1; i < 5; i++)
        assert_int_equal(etcd_put(c, "/t/compact/k", "x", 1, 0, &rev), EDDY_OK);
    assert_int_equal(etcd_compact(c, rev), EDDY_OK);
    /* Reading below the compaction is gone: gateway code 11. */
    struct collector col;
    collector_init(&col);
    col.c = c;
    col.prefix = "/t/compact/";
    etcd_watch *w = etcd_watch_start(c, "/t/compact/", true, first, collect, &col);
    assert_non_null(w);
    assert_true(wait_events(&col, 1, 5000));
    assert_int_equal(col.ev[0].type, ETCD_EVENT_RESYNC);
    assert_int_equal(col.ev[0].compact_revision, rev);
    assert_true(col.resync_from > rev); /* the owner's range revision + 1 */
    assert_true(wait_connected(w, 5000));
    int64_t r2 = 0;
    assert_int_equal(etcd_put(c, "/t/compact/k", "new", 3, 0, &r2), EDDY_OK);
    assert_true(wait_events(&col, 2, 5000));
    sleep_ms(50);
    assert_int_equal(collected(&col), 2);
    assert_int_equal(col.ev[1].type, ETCD_EVENT_PUT);
    assert_string_equal(col.ev[1].value, "new");
    assert_int_equal(col.ev[1].mod_revision, r2);
    etcd_watch_stop(w);
    assert_int_equal(etcd_delete_prefix(c, "/t/compact/", NULL), EDDY_OK);
    etcd_client_free(c);
}

/* --- endpoints, errors and timeouts ------------------------------------------------------ */

static void test_first_endpoint_dead(void **state)
{
    int dead = free_port();
    char eps[160];
    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d, %s/", dead, shared->url);
    etcd_client *c = client(eps, 2000);
    int64_t t0 = now_ms();
    assert_int_equal(etcd_put(c, "/t/eps/k", "v", 1, 0, NULL), EDDY_OK);
    assert_true(now_ms() - t0 < 1000);
    assert_string_equal(etcd_current_endpoint(c), shared->url);
    struct etcd_kv kv;
    bool found;
    assert_int_equal(etcd_get(c, "/t/eps/k", &kv, &found), EDDY_OK);
    assert_true(found);
    etcd_kv_release(&kv);
    /* A watch on the same client follows the live endpoint too. */
    struct collector col;
    collector_init(&col);
    etcd_watch *w = etcd_watch_start(c, "/t/eps/k", false, 0, collect, &col);
    assert_true(wait_connected(w, 5000));
    assert_int_equal(etcd_delete(c, "/t/eps/k"), EDDY_OK);
    assert_true(wait_events(&col, 1, 5000));
    assert_int_equal(col.ev[0].type, ETCD_EVENT_DELETE);
    etcd_watch_stop(w);
    etcd_client_free(c);

    /* Every endpoint refusing: UNAVAILABLE, quickly, with the reason. */
    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,http://127.0.0.1:%d", dead, free_port());
    c = client(eps, 2000);
    t0 = now_ms();
    assert_int_equal(etcd_get(c, "/t/eps/k", &kv, &found), EDDY_ERR_UNAVAILABLE);
    assert_true(now_ms() - t0 < 1000);
    assert_true(strlen(etcd_last_error(c)) > 0);
    etcd_client_free(c);
    assert_null(etcd_client_new("", 1000));
    assert_null(etcd_client_new(" , ", 1000));
    assert_null(etcd_client_new(shared->url, 0));
}

static void test_timeout_bounded(void **state)
{
    /* A peer that accepts TCP connections (the kernel does, from the backlog) and never
     * answers. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(a.sin_port));
    etcd_client *c = client(url, 300);
    struct etcd_kv kv;
    bool found;
    int64_t t0 = now_ms();
    assert_int_equal(etcd_get(c, "/t/k", &kv, &found), EDDY_ERR_TIMEOUT);
    int64_t took = now_ms() - t0;
    assert_true(took >= 250 && took < 800);
    t0 = now_ms();
    assert_int_equal(etcd_put(c, "/t/k", "v", 1, 0, NULL), EDDY_ERR_TIMEOUT);
    assert_true(now_ms() - t0 < 800);
    print_message("blackhole: get timed out after %lld ms (timeout 300 ms): %s\n",
                  (long long)took, etcd_last_error(c));
    /* A session cannot start without a grant. */
    t0 = now_ms();
    assert_null(etcd_session_new(c, 2, NULL, NULL));
    assert_true(now_ms() - t0 < 800);
    etcd_client_free(c);

    /* A blackhole first, live etcd second: the timed-out endpoint is left for the next. */
    char eps[160];
    snprintf(eps, sizeof(eps), "%s,%s", url, shared->url);
    c = client(eps, 300);
    assert_int_equal(etcd_get(c, "/t/k", &kv, &found), EDDY_ERR_TIMEOUT);
    assert_string_equal(etcd_current_endpoint(c), shared->url);
    assert_int_equal(etcd_get(c, "/t/k", &kv, &found), EDDY_OK);
    etcd_client_free(c);
    close(fd);
}

struct worker {
    etcd_client *c;
    int id;
    int ok;
};

static void *put_many(void *arg)
{
    struct worker *wk = arg;
    char key[64], val[16];
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "/t/mt/%d/%02d", wk->id, i);
        snprintf(val, sizeof(val), "%d", i);
        wk->ok += etcd_put(wk->c, key, val, strlen(val), 0, NULL) == EDDY_OK;
    }
    return NULL;
}

/* Four threads writing through one client while a watch takes the burst: 200 puts, then one
 * delete of 200 keys (a single long watch line with prev_kvs, split over curl writes). */
static void test_threads_share_a_client(void **state)
{
    etcd_client *c = client(shared->url, 5000);
    struct collector col;
    collector_init(&col);
    struct etcd_kvs kvs;
    int64_t base = 0;
    assert_int_equal(etcd_range_prefix(c, "/t/mt/", &kvs, &base), EDDY_OK);
    etcd_watch *w = etcd_watch_start(c, "/t/mt/", true, base + 1, collect, &col);
    assert_non_null(w);
    pthread_t th[4];
    struct worker wk[4];
    for (int i = 0; i < 4; i++) {
        wk[i] = (struct worker){.c = c, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, put_many, &wk[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(wk[i].ok, 50);
    }
    assert_int_equal(etcd_range_prefix(c, "/t/mt/", &kvs, NULL), EDDY_OK);
    assert_int_equal(kvs.n, 200);
    etcd_kvs_release(&kvs);
    int64_t deleted = 0;
    assert_int_equal(etcd_delete_prefix(c, "/t/mt/", &deleted), EDDY_OK);
    assert_int_equal(deleted, 200);
    assert_true(wait_events(&col, 400, 5000));
    sleep_ms(50);
    pthread_mutex_lock(&col.mu);
    assert_int_equal(col.n, 400);
    assert_int_equal(col.puts, 200);
    assert_int_equal(col.deletes, 200);
    assert_false(col.out_of_order);
    pthread_mutex_unlock(&col.mu);
    etcd_watch_stop(w);
    etcd_client_free(c);
}

/* --- answers decoded without etcd (etcd_decode_*: what the fuzzer feeds) --------------- */

/* "/k" and "v" in base64. */
#define KEY_B64 "L2s="
#define VAL_B64 "dg=="

static void test_decode_range(void **state)
{
    struct etcd_kvs kvs;
    int64_t rev = -1;
    const char *ok = "{\"header\":{\"revision\":\"9\"},\"kvs\":[{\"key\":\"" KEY_B64
                     "\",\"value\":\"" VAL_B64 "\",\"mod_revision\":\"7\",\"version\":2}]}";
    assert_int_equal(etcd_decode_range(ok, strlen(ok), &kvs, &rev), EDDY_OK);
    assert_int_equal(rev, 9);
    assert_int_equal(kvs.n, 1);
    assert_string_equal(kvs.kvs[0].key, "/k");
    assert_int_equal(kvs.kvs[0].value_len, 1);
    assert_int_equal(kvs.kvs[0].mod_revision, 7);
    assert_int_equal(kvs.kvs[0].version, 2);
    etcd_kvs_release(&kvs);

    /* Found by fuzz_etcd_json: a number no int64 holds (3.8e73) was converted anyway
     * (undefined behaviour; x86 gave INT64_MIN). It reads as absent, 0. */
    const char *huge = "{\"header\":{\"revision\":1e300},\"kvs\":[{\"key\":\"" KEY_B64
                       "\",\"value\":\"" VAL_B64 "\",\"version\":3.8e73,\"mod_revision\":-1e19}]}";
    assert_int_equal(etcd_decode_range(huge, strlen(huge), &kvs, &rev), EDDY_OK);
    assert_int_equal(rev, 0);
    assert_int_equal(kvs.kvs[0].version, 0);
    assert_int_equal(kvs.kvs[0].mod_revision, 0);
    etcd_kvs_release(&kvs);

    const char *not_b64 = "{\"kvs\":[{\"key\":\"L2s\",\"value\":\"" VAL_B64 "\"}]}";
    assert_int_equal(etcd_decode_range(not_b64, strlen(not_b64), &kvs, NULL), EDDY_ERR_CORRUPT);
    assert_int_equal(kvs.n, 0);
    assert_int_equal(etcd_decode_range("{\"kvs\":", 7, &kvs, NULL), EDDY_ERR_CORRUPT);
}

static int64_t count_events(const struct etcd_event *ev, void *ud)
{
    int *n = ud;
    assert_string_equal(ev->kv.key, "/k");
    (*n)++;
    return 0;
}

static void test_decode_txn_and_watch(void **state)
{
    struct etcd_txn t = {0};
    t.ops[ETCD_ON_SUCCESS][0] = (struct etcd_txn_op){.type = ETCD_OP_RANGE, .key = "/k"};
    t.ops[ETCD_ON_SUCCESS][1] = (struct etcd_txn_op){.type = ETCD_OP_DELETE, .key = "/k"};
    t.n_ops[ETCD_ON_SUCCESS] = 2;
    struct etcd_txn_result r;
    const char *txn = "{\"header\":{\"revision\":\"12\"},\"succeeded\":true,\"responses\":["
                      "{\"response_range\":{\"kvs\":[{\"key\":\"" KEY_B64 "\",\"value\":\""
                      VAL_B64 "\"}]}},{\"response_delete_range\":{\"deleted\":\"1\"}}]}";
    assert_int_equal(etcd_decode_txn(txn, strlen(txn), &t, &r), EDDY_OK);
    assert_true(r.succeeded);
    assert_int_equal(r.revision, 12);
    assert_int_equal(r.n_ops, 2);
    assert_int_equal(r.ops[0].kvs.n, 1);
    assert_int_equal(r.ops[1].deleted, 1);
    etcd_txn_result_release(&r);

    int n = 0;
    int64_t last = 0;
    const char *line = "{\"result\":{\"header\":{\"revision\":\"5\"},\"events\":["
                       "{\"kv\":{\"key\":\"" KEY_B64 "\",\"mod_revision\":\"4\"}},"
                       "{\"type\":\"DELETE\",\"kv\":{\"key\":\"" KEY_B64
                       "\",\"mod_revision\":\"5\"}}]}}";
    assert_int_equal(etcd_decode_watch_events(line, strlen(line), count_events, &n, &last), EDDY_OK);
    assert_int_equal(n, 2);
    assert_int_equal(last, 5);
    const char *bad = "{\"result\":{\"events\":[{\"kv\":{\"key\":\"!!!!\"}}]}}";
    assert_int_equal(etcd_decode_watch_events(bad, strlen(bad), count_events, &n, &last),
                     EDDY_ERR_CORRUPT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv),
        cmocka_unit_test(test_txn_cas),
        cmocka_unit_test(test_lease_grant_keepalive_revoke),
        cmocka_unit_test(test_lease_expiry),
        cmocka_unit_test(test_session_kept_alive),
        cmocka_unit_test(test_session_lost_when_etcd_dies),
        cmocka_unit_test(test_watch_order),
        cmocka_unit_test(test_watch_resumes_after_restart),
        cmocka_unit_test(test_watch_compacted_resync),
        cmocka_unit_test(test_first_endpoint_dead),
        cmocka_unit_test(test_timeout_bounded),
        cmocka_unit_test(test_threads_share_a_client),
    };
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_decode_range),
        cmocka_unit_test(test_decode_txn_and_watch),
    };
    int failed = cmocka_run_group_tests(pure, NULL, NULL);
    return failed + cmocka_run_group_tests(tests, group_setup, group_teardown);
}
