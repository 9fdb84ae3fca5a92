/* The store's dirty set (write-behind) on a real LevelDB in a temp dir: the behind tables'
 * committed writes are read (get, scan, last) before any flush, deletes included, merged
 * with LevelDB's keys; snapshots flush first; a write that deletes a log key goes through;
 * flushes beside a thread that keeps replacing the values they write (the flush reads
 * the entries outside the set's lock: a replaced one must outlive it; ASan checks) leave
 * the last values; keys that tie on their leading bytes (the run's slots hold 16 of them)
 * are ordered, found and scanned as a model of them says, from the set and from LevelDB. */
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/bytes.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "store_fixture.h"

static void user_key(struct store_key *k, const char *id)
{
    key_init(k, 3, T_USER);
    key_str(k, id);
}

static void put(store_txn *t, const char *id, const char *val)
{
    struct store_key k;
    user_key(&k, id);
    assert_int_equal(store_txn_put(t, &k, val, strlen(val)), EDDY_OK);
}

struct seen {
    char keys[256];
    size_t n;
};

/* "id=value;" per key */
static int collect(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct seen *s = ud;
    s->n += (size_t)snprintf(s->keys + s->n, sizeof(s->keys) - s->n, "%.*s=%.*s;",
                             (int)(klen - 3), (const char *)k + 3, (int)vlen, v);
    return 0;
}

static char *get(store *s, const char *id)
{
    struct store_key k;
    user_key(&k, id);
    char *v = NULL;
    size_t n = 0;
    assert_int_equal(store_get(s, &k, &v, &n), EDDY_OK);
    if (!v)
        return NULL;
    char *z = calloc(1, n + 1);
    memcpy(z, v, n);
    free(v);
    return z;
}

static void test_reads_before_flush(void **state)
{
    struct fx *f = *state;
    store_set_behind(f->s, 1u << T_USER);
    store_txn *t = store_txn_new(f->s);
    /* in LevelDB first: d (deleted below) and e (left alone) */
    put(t, "d", "D");
    put(t, "e", "E");
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    assert_true(store_dirty_bytes(f->s) > 0);
    assert_int_equal(store_flush(f->s), EDDY_OK);
    assert_int_equal(store_dirty_bytes(f->s), 0);
    assert_int_equal(store_flush_count(f->s), 1);

    put(t, "a", "A");
    put(t, "c", "C");
    put(t, "b", "B");
    struct store_key k;
    user_key(&k, "d");
    assert_int_equal(store_txn_del(t, &k), EDDY_OK);
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    assert_true(store_dirty_bytes(f->s) > 0);
    assert_int_equal(store_flush_count(f->s), 1); /* nothing flushed by the commit */

    char *v = get(f->s, "b");
    assert_string_equal(v, "B");
    free(v);
    assert_null(get(f->s, "d")); /* the dirty delete hides LevelDB's value */
    struct store_key start, end;
    key_init(&start, 3, T_USER);
    key_prefix_end(&start, &end);
    struct seen s = {{0}, 0};
    assert_int_equal(store_scan(f->s, &start, &end, collect, &s), EDDY_OK);
    assert_string_equal(s.keys, "a=A;b=B;c=C;e=E;");
    /* a range over several prefixes (the whole partition) merges the same */
    struct store_key pstart, pend;
    key_init(&pstart, 3, 0);
    key_init(&pend, 4, 0);
    struct seen ps = {{0}, 0};
    assert_int_equal(store_scan(f->s, &pstart, &pend, collect, &ps), EDDY_OK);
    assert_string_equal(ps.keys, s.keys);
    /* the txn's own scan (its kept values left at the settle) merges the same */
    struct seen ts = {{0}, 0};
    assert_int_equal(store_txn_scan(t, &start, &end, collect, &ts), EDDY_OK);
    assert_string_equal(ts.keys, s.keys);
    /* the last key: LevelDB's e, over the dirty c; then e deleted: the dirty c */
    struct seen last = {{0}, 0};
    bool found;
    assert_int_equal(store_last(f->s, &start, &end, collect, &last, &found), EDDY_OK);
    assert_true(found);
    assert_string_equal(last.keys, "e=E;");
    user_key(&k, "e");
    assert_int_equal(store_txn_del(t, &k), EDDY_OK);
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    last.n = 0;
    assert_int_equal(store_last(f->s, &start, &end, collect, &last, &found), EDDY_OK);
    assert_string_equal(last.keys, "c=C;");

    /* a snapshot flushes first: it holds what reads see */
    store_snapshot *snap = store_snapshot_new(f->s);
    assert_non_null(snap);
    assert_int_equal(store_dirty_bytes(f->s), 0);
    struct seen ss = {{0}, 0};
    assert_int_equal(store_snapshot_scan(snap, &start, &end, collect, &ss), EDDY_OK);
    assert_string_equal(ss.keys, "a=A;b=B;c=C;");
    store_snapshot_free(snap);
    store_txn_free(t);
}

static void test_log_delete_writes_through(void **state)
{
    struct fx *f = *state;
    store_set_behind(f->s, 1u << T_USER);
    store_txn *t = store_txn_new(f->s);
    struct store_key log;
    key_init(&log, 3, T_LOG);
    key_u64(&log, 7);
    assert_int_equal(store_txn_put(t, &log, "r", 1), EDDY_OK);
    put(t, "a", "A");
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    assert_true(store_dirty_bytes(f->s) > 0); /* a behind, the log record synced */

    assert_int_equal(store_txn_del(t, &log), EDDY_OK);
    put(t, "b", "B");
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    assert_int_equal(store_dirty_bytes(f->s), 0); /* flushed, then b written with the log */
    char *v = get(f->s, "b");
    assert_string_equal(v, "B");
    free(v);
    v = get(f->s, "a");
    assert_string_equal(v, "A");
    free(v);
    store_txn_free(t);
}

enum { KEYS = 1000, PUTS = 100000, PER_COMMIT = 20 };

struct publisher {
    store *s;
    int last[KEYS]; /* the put that wrote each key last */
    atomic_bool done;
};

static void value_of(int key, int put_no, char *id, size_t idn, char *val, size_t valn)
{
    snprintf(id, idn, "k%04d", key);
    snprintf(val, valn, "put-%d-of-%s", put_no, id);
}

/* Random keys in small commits: a flush of many keys reads them while the next commits
 * replace some. */
static void *publish_puts(void *arg)
{
    struct publisher *pb = arg;
    store_txn *t = store_txn_new(pb->s);
    assert_non_null(t);
    uint64_t x = 88172645463325252ull;
    for (int n = 1; n <= PUTS; n++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int key = (int)(x % KEYS);
        char id[16], val[32];
        value_of(key, n, id, sizeof(id), val, sizeof(val));
        put(t, id, val);
        pb->last[key] = n;
        if (n % PER_COMMIT == 0 || n == PUTS)
            assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    }
    store_txn_free(t);
    atomic_store(&pb->done, true);
    return NULL;
}

static void test_flush_beside_publishes(void **state)
{
    struct fx *f = *state;
    store_set_behind(f->s, 1u << T_USER);
    struct publisher *pb = calloc(1, sizeof(*pb));
    assert_non_null(pb);
    pb->s = f->s;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, publish_puts, pb), 0);
    int flushes = 0;
    while (!atomic_load(&pb->done)) {
        /* a flush of about half of the keys, not one per commit */
        if (store_dirty_bytes(f->s) < (size_t)KEYS / 2 * 64) {
            sched_yield();
            continue;
        }
        assert_int_equal(store_flush(f->s), EDDY_OK);
        flushes++;
    }
    pthread_join(th, NULL);
    assert_true(flushes > 1);
    for (int round = 0; round < 2; round++) { /* the dirty set's, then LevelDB's */
        for (int i = 0; i < KEYS; i++) {
            char id[16], want[32];
            value_of(i, pb->last[i], id, sizeof(id), want, sizeof(want));
            char *v = get(f->s, id);
            if (pb->last[i])
                assert_string_equal(v, want);
            else
                assert_null(v);
            free(v);
        }
        assert_int_equal(store_flush(f->s), EDDY_OK);
        assert_int_equal(store_dirty_bytes(f->s), 0);
    }
    free(pb);
}

/* --- the order of keys that tie on their leading bytes ------------------------------- */

enum { MKEYS = 600, MPUTS = 3000 };

struct model {
    unsigned char id[MKEYS][40];
    size_t len[MKEYS];
    int val[MKEYS];     /* the last put's number, 0: deleted or never written */
    int order[MKEYS];   /* the keys' indexes in key order */
};

static uint64_t next_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Ids of 0 to 39 bytes from a few byte values (0 and 0xff among them), most sharing a
 * 16- or 20-byte head: the run's 16 leading bytes tie and the rest decides; ids that end
 * in zeros, and ids that are prefixes of others. */
static void random_id(uint64_t *x, unsigned char *id, size_t *len)
{
    static const unsigned char alpha[] = {0x00, 0x01, 'a', 'b', 0x7f, 0x80, 0xff};
    static const char head[] = "0123456789abcdefghij";
    size_t n = 0, total = (size_t)(next_rand(x) % 40);
    uint64_t shape = next_rand(x) % 3;
    if (shape > 0) { /* a shared head of 16 or 20 bytes */
        size_t h = shape == 1 ? 16 : 20;
        memcpy(id, head, h < total ? h : total);
        n = h < total ? h : total;
    }
    for (; n < total; n++)
        id[n] = alpha[next_rand(x) % sizeof(alpha)];
    *len = total;
}

static void model_key(struct store_key *k, const unsigned char *id, size_t len)
{
    key_init(k, 3, T_USER);
    key_bytes(k, (const char *)id, len);
}

static int cmp_model_index(const void *a, const void *b, void *ud)
{
    const struct model *m = ud;
    int x = *(const int *)a, y = *(const int *)b;
    return bytes_cmp(m->id[x], m->len[x], m->id[y], m->len[y]);
}

struct walk {
    const struct model *m;
    size_t at, n;       /* the next expected of the m->order[] indexes in [at, n) */
    int mismatches;
};

/* Each key the scan gives must be the next live key of the model's order. */
static int walk_next(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct walk *w = ud;
    const struct model *m = w->m;
    while (w->at < w->n && m->val[m->order[w->at]] == 0)
        w->at++;
    if (w->at >= w->n) {
        w->mismatches++;
        return 1;
    }
    int i = m->order[w->at++];
    char want[16];
    int wl = snprintf(want, sizeof(want), "%d", m->val[i]);
    if (klen != 3 + m->len[i] || memcmp(k + 3, m->id[i], m->len[i]) != 0 ||
        vlen != (size_t)wl || memcmp(v, want, vlen) != 0)
        w->mismatches++;
    return 0;
}

/* After the scan: every key it gave was the expected one, and none is missing. */
static void walk_done(struct walk *w)
{
    while (w->at < w->n && w->m->val[w->m->order[w->at]] == 0)
        w->at++;
    assert_int_equal(w->mismatches, 0);
    assert_int_equal(w->at, w->n);
}

/* The model's keys in key order between the model's keys at order positions [a, b). */
static void check_range(store *s, const struct model *m, size_t a, size_t b)
{
    struct store_key start, end;
    if (a < MKEYS)
        model_key(&start, m->id[m->order[a]], m->len[m->order[a]]);
    else
        key_init(&start, 3, T_USER + 1);
    if (b < MKEYS)
        model_key(&end, m->id[m->order[b]], m->len[m->order[b]]);
    else
        key_init(&end, 3, T_USER + 1);
    struct walk w = {m, a, b < MKEYS ? b : MKEYS, 0};
    assert_int_equal(store_scan(s, &start, &end, walk_next, &w), EDDY_OK);
    walk_done(&w);
}

static void check_model(store *s, struct model *m)
{
    for (int i = 0; i < MKEYS; i++) {
        struct store_key k;
        model_key(&k, m->id[i], m->len[i]);
        char *v = NULL;
        size_t n = 0;
        assert_int_equal(store_get(s, &k, &v, &n), EDDY_OK);
        if (m->val[i] == 0) {
            assert_null(v);
            continue;
        }
        char want[16];
        snprintf(want, sizeof(want), "%d", m->val[i]);
        assert_non_null(v);
        assert_int_equal(n, strlen(want));
        assert_memory_equal(v, want, n);
        free(v);
    }
    /* the whole table (the range of one run, from the table's first key), the whole
     * partition (bounds in other runs), and ranges between the model's keys */
    struct store_key pstart, pend;
    key_init(&pstart, 3, 0);
    key_init(&pend, 4, 0);
    struct walk w = {m, 0, MKEYS, 0};
    assert_int_equal(store_scan(s, &pstart, &pend, walk_next, &w), EDDY_OK);
    walk_done(&w);
    /* from a key of the table before, whose later bytes sort after every key's */
    key_init(&pstart, 3, T_USER - 1);
    key_bytes(&pstart, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 16);
    w = (struct walk){m, 0, MKEYS, 0};
    assert_int_equal(store_scan(s, &pstart, &pend, walk_next, &w), EDDY_OK);
    walk_done(&w);
    check_range(s, m, 0, MKEYS);
    for (size_t a = 0; a < MKEYS; a += 37)
        for (size_t b = a; b <= MKEYS; b += 53)
            check_range(s, m, a, b);
}

static void test_order_of_keys_tied_at_the_head(void **state)
{
    struct fx *f = *state;
    store_set_behind(f->s, 1u << T_USER);
    struct model *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < MKEYS; i++) { /* distinct ids */
        bool dup;
        do {
            random_id(&x, m->id[i], &m->len[i]);
            dup = false;
            for (int j = 0; j < i && !dup; j++)
                dup = m->len[j] == m->len[i] && memcmp(m->id[j], m->id[i], m->len[i]) == 0;
        } while (dup);
        m->order[i] = i;
    }
    qsort_r(m->order, MKEYS, sizeof(int), cmp_model_index, m);
    store_txn *t = store_txn_new(f->s);
    assert_non_null(t);
    for (int n = 1; n <= MPUTS; n++) {
        int i = (int)(next_rand(&x) % MKEYS);
        struct store_key k;
        model_key(&k, m->id[i], m->len[i]);
        if (next_rand(&x) % 5 == 0) {
            assert_int_equal(store_txn_del(t, &k), EDDY_OK);
            m->val[i] = 0;
        } else {
            char v[16];
            snprintf(v, sizeof(v), "%d", n);
            assert_int_equal(store_txn_put(t, &k, v, strlen(v)), EDDY_OK);
            m->val[i] = n;
        }
        if (n % 50 == 0)
            assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    }
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
    assert_true(store_dirty_bytes(f->s) > 0);
    check_model(f->s, m); /* from the dirty set */
    assert_int_equal(store_flush(f->s), EDDY_OK);
    assert_int_equal(store_dirty_bytes(f->s), 0);
    check_model(f->s, m); /* from LevelDB: the same */
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reads_before_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_delete_writes_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_beside_publishes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_of_keys_tied_at_the_head, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
