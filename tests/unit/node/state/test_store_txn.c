/* Write transactions on a real LevelDB in a temp dir: pending keys are written once with
 * their last value; values read or decoded are kept across commits (hits, not LevelDB
 * reads) and always equal the committed state: forgotten after store_replace_range (only
 * in its range), another txn's commit, store_delete of a kept table and a reset, also
 * between groups the engine did not commit; evicted past the budget; scans merge pending
 * writes with the committed keys; a commit split in seal, write and settle keeps the
 * sealed keys visible to the txn until the settle, and a failed write resets it; an edit
 * (store_txn_obj_edit) is written as a get and a set are; the store counts what committed
 * writes put, per table (store_write_stats); with key sets a key known not to exist is
 * answered without a read, and every key that exists is found; a set that fails for want
 * of memory leaves a message its entry holds to the entry (calloc fails on demand:
 * -Wl,--wrap=calloc, tests/CMakeLists.txt). */
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "eddy/v1/store.pb-c.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "store_fixture.h"

#define VIEW EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW

/* Every calloc of the code under test (store_txn's table rebuild among them) fails while
 * this is set; the linker sends them here. */
static bool fail_calloc;
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size)
{
    return fail_calloc ? NULL : __real_calloc(n, size);
}

static void counts_key(struct store_key *k, uint32_t p, const char *id)
{
    key_init(k, p, T_USER_WIN);
    key_str(k, id);
}

/* The committed Counts at 'k' straight from LevelDB (view count), -1 if absent. */
static int64_t committed_views(store *s, const struct store_key *k)
{
    Eddy__Store__V1__Counts *c = NULL;
    assert_int_equal(store_get_msg(s, k, &eddy__store__v1__counts__descriptor,
                                   (ProtobufCMessage **)&c),
                     EDDY_OK);
    if (!c)
        return -1;
    int64_t v = (int64_t)c->view;
    eddy__store__v1__counts__free_unpacked(c, NULL);
    return v;
}

/* Through the txn's decoded view: the Counts at 'k' (created if absent) gets 'n' more views. */
static void bump(store_txn *t, const struct store_key *k, uint64_t n)
{
    Eddy__Store__V1__Counts *c = NULL;
    assert_int_equal(store_txn_obj_get(t, k, &eddy__store__v1__counts__descriptor,
                                       (ProtobufCMessage **)&c),
                     EDDY_OK);
    if (!c) {
        c = malloc(sizeof(*c));
        assert_non_null(c);
        eddy__store__v1__counts__init(c);
    }
    c->view += n;
    assert_int_equal(store_txn_obj_set(t, k, &c->base), EDDY_OK);
}

static int64_t txn_views(store_txn *t, const struct store_key *k)
{
    Eddy__Store__V1__Counts *c = NULL;
    assert_int_equal(store_txn_obj_get(t, k, &eddy__store__v1__counts__descriptor,
                                       (ProtobufCMessage **)&c),
                     EDDY_OK);
    return c ? (int64_t)c->view : -1;
}

static void put_counts_committed(store *s, const struct store_key *k, uint64_t views)
{
    store_txn *t = store_txn_new(s);
    assert_non_null(t);
    Eddy__Store__V1__Counts c = EDDY__STORE__V1__COUNTS__INIT;
    c.view = views;
    assert_int_equal(store_txn_put_msg(t, k, &c.base), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
}

static void test_kept_across_commits(void **state)
{
    struct fx *f = *state;
    struct store_key k;
    counts_key(&k, 1, "u1");
    put_counts_committed(f->s, &k, 5);

    store_txn *t = store_txn_new(f->s);
    struct store_txn_stats st;
    bump(t, &k, 1); /* read from LevelDB once */
    store_txn_stats(t, &st);
    assert_int_equal(st.misses, 1);
    assert_int_equal(store_txn_pending(t), 1);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(committed_views(f->s, &k), 6);
    store_txn_stats(t, &st);
    assert_int_equal(st.kept, 1);
    assert_true(st.kept_bytes > 0);
    assert_int_equal(store_txn_pending(t), 0);

    for (int i = 0; i < 3; i++) { /* later groups: no LevelDB read */
        bump(t, &k, 1);
        assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    }
    store_txn_stats(t, &st);
    assert_int_equal(st.misses, 1);
    assert_true(st.hits >= 3);
    assert_int_equal(committed_views(f->s, &k), 9);

    /* bytes readers see the kept object packed */
    const char *v;
    size_t vlen;
    bool found;
    assert_int_equal(store_txn_get(t, &k, &v, &vlen, &found), EDDY_OK);
    assert_true(found);
    Eddy__Store__V1__Counts *c = eddy__store__v1__counts__unpack(NULL, vlen, (const uint8_t *)v);
    assert_non_null(c);
    assert_int_equal(c->view, 9);
    eddy__store__v1__counts__free_unpacked(c, NULL);
    store_txn_free(t);
}

/* Through store_txn_obj_edit: the Counts at 'k' (created if absent) gets 'n' more views. */
static void edit_bump(store_txn *t, const struct store_key *k, uint64_t n)
{
    Eddy__Store__V1__Counts *c = NULL;
    assert_int_equal(store_txn_obj_edit(t, k, &eddy__store__v1__counts__descriptor,
                                        (ProtobufCMessage **)&c),
                     EDDY_OK);
    assert_non_null(c);
    c->view += n;
}

static void test_edit_marks_changed(void **state)
{
    struct fx *f = *state;
    struct store_key stored, absent, deleted;
    counts_key(&stored, 1, "u1");
    counts_key(&absent, 1, "u2");
    counts_key(&deleted, 1, "u3");
    put_counts_committed(f->s, &stored, 5);
    put_counts_committed(f->s, &deleted, 7);

    store_txn *t = store_txn_new(f->s);
    struct store_txn_stats st;
    edit_bump(t, &stored, 1); /* read from LevelDB */
    edit_bump(t, &absent, 2); /* created empty */
    bump(t, &deleted, 1);     /* kept, then deleted: an edit starts it afresh */
    assert_int_equal(store_txn_del(t, &deleted), EDDY_OK);
    edit_bump(t, &deleted, 3);
    assert_int_equal(store_txn_pending(t), 3);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(committed_views(f->s, &stored), 6);
    assert_int_equal(committed_views(f->s, &absent), 2);
    assert_int_equal(committed_views(f->s, &deleted), 3);

    /* kept now: changed in place with no read, and written at the next commit */
    store_txn_stats(t, &st);
    uint64_t misses = st.misses, hits = st.hits;
    edit_bump(t, &stored, 1);
    edit_bump(t, &stored, 1);
    edit_bump(t, &absent, 1);
    assert_int_equal(store_txn_pending(t), 2);
    store_txn_stats(t, &st);
    assert_int_equal(st.misses, misses);
    assert_int_equal(st.hits, hits + 3);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(committed_views(f->s, &stored), 8);
    assert_int_equal(committed_views(f->s, &absent), 3);
    assert_int_equal(txn_views(t, &stored), 8);
    store_txn_free(t);
}

/* The get-then-set pattern (a message changed in place, then set) whose set fails for
 * want of memory: the table's rebuild, before the key's probe, is what fails. The entry
 * still holds the message, so the set must not free it: the txn reads it afterwards and
 * frees it once, with the txn. */
static void test_failed_set_keeps_held_message(void **state)
{
    struct fx *f = *state;
    store_txn *t = store_txn_new(f->s);
    struct store_key held;
    counts_key(&held, 1, "held");
    bump(t, &held, 1);
    for (int i = 0;; i++) {
        Eddy__Store__V1__Counts *c = NULL;
        assert_int_equal(store_txn_obj_get(t, &held, &eddy__store__v1__counts__descriptor,
                                           (ProtobufCMessage **)&c),
                         EDDY_OK);
        assert_non_null(c);
        fail_calloc = true; /* the set fails when the next entry needs a bigger table */
        eddy_err err = store_txn_obj_set(t, &held, &c->base);
        fail_calloc = false;
        if (err != EDDY_OK) {
            assert_int_equal(err, EDDY_ERR_NOMEM);
            break;
        }
        assert_true(i < 1 << 20);
        char id[32];
        snprintf(id, sizeof(id), "other-%d", i);
        struct store_key other;
        counts_key(&other, 1, id);
        bump(t, &other, 1);
    }
    assert_int_equal(txn_views(t, &held), 1);
    store_txn_free(t);
}

static void test_pending_written_once_last_value(void **state)
{
    struct fx *f = *state;
    struct store_key k, d;
    key_init(&k, 2, T_S2_HW);
    key_u16(&k, 7);
    key_init(&d, 2, T_LATE);
    key_u64(&d, 1);
    put_counts_committed(f->s, &d, 1);

    store_txn *t = store_txn_new(f->s);
    assert_int_equal(store_txn_put(t, &k, "a", 1), EDDY_OK);
    assert_int_equal(store_txn_put(t, &k, "bb", 2), EDDY_OK);
    assert_int_equal(store_txn_put(t, &k, "ccc", 3), EDDY_OK);
    assert_int_equal(store_txn_del(t, &d), EDDY_OK);
    assert_int_equal(store_txn_pending(t), 2);
    const char *v;
    size_t vlen;
    bool found;
    assert_int_equal(store_txn_get(t, &k, &v, &vlen, &found), EDDY_OK);
    assert_true(found);
    assert_int_equal(vlen, 3);
    assert_int_equal(store_txn_get(t, &d, &v, &vlen, &found), EDDY_OK);
    assert_false(found);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);

    char *got = NULL;
    assert_int_equal(store_get(f->s, &k, &got, &vlen), EDDY_OK);
    assert_non_null(got);
    assert_int_equal(vlen, 3);
    assert_memory_equal(got, "ccc", 3);
    free(got);
    assert_int_equal(store_get(f->s, &d, &got, &vlen), EDDY_OK);
    assert_null(got);
    /* written, never read: not kept */
    struct store_txn_stats st;
    store_txn_stats(t, &st);
    assert_int_equal(st.kept, 0);
    store_txn_free(t);
}

static void test_replace_range_forgets(void **state)
{
    struct fx *f = *state;
    struct store_key k, other, start, end;
    counts_key(&k, 3, "u1");
    counts_key(&other, 5, "u1");
    put_counts_committed(f->s, &k, 1);
    store_txn *t = store_txn_new(f->s);
    bump(t, &k, 1);
    bump(t, &other, 7);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(txn_views(t, &k), 2);

    /* a checkpoint load replaces partition 3 with a value of 40 */
    store_batch *b = store_batch_new();
    Eddy__Store__V1__Counts c = EDDY__STORE__V1__COUNTS__INIT;
    c.view = 40;
    uint8_t buf[64];
    size_t n = eddy__store__v1__counts__pack(&c, buf);
    assert_int_equal(store_batch_put(b, k.buf, k.len, buf, n), EDDY_OK);
    key_init(&start, 3, T_LOG);
    key_init(&end, 4, T_LOG);
    assert_int_equal(store_replace_range(f->s, &start, &end, b, NULL), EDDY_OK);
    store_batch_free(b);

    assert_int_equal(txn_views(t, &k), 40);
    bump(t, &k, 1);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(committed_views(f->s, &k), 41);

    /* a dropped partition: gone for the txn as well */
    b = store_batch_new();
    assert_int_equal(store_replace_range(f->s, &start, &end, b, NULL), EDDY_OK);
    store_batch_free(b);
    assert_int_equal(txn_views(t, &k), -1);
    struct store_txn_stats st, st2;
    store_txn_stats(t, &st);
    assert_int_equal(st.forgets, 0); /* only the replaced ranges were forgotten... */
    assert_int_equal(st.forgets_ranged, 2);
    assert_int_equal(txn_views(t, &other), 7); /* ...partition 5's value is still kept */
    store_txn_stats(t, &st2);
    assert_int_equal(st2.misses, st.misses);

    /* more writes around the txn than it can catch up with: everything goes */
    for (int i = 0; i < 20; i++) {
        b = store_batch_new();
        assert_int_equal(store_replace_range(f->s, &start, &end, b, NULL), EDDY_OK);
        store_batch_free(b);
    }
    assert_int_equal(txn_views(t, &other), 7);
    store_txn_stats(t, &st2);
    assert_int_equal(st2.forgets, 1);
    assert_int_equal(st2.misses, st.misses + 1);
    store_txn_free(t);
}

static void test_other_writers_forget(void **state)
{
    struct fx *f = *state;
    struct store_key k, o;
    counts_key(&k, 4, "u1");
    store_txn *t = store_txn_new(f->s);
    bump(t, &k, 3);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);

    /* another txn on the same store (a reprocess swap) writes the key */
    put_counts_committed(f->s, &k, 70);
    assert_int_equal(txn_views(t, &k), 70);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);

    /* store_delete of a table no txn keeps (OUTBOX) keeps what the txn has... */
    struct store_txn_stats before, after;
    store_txn_stats(t, &before);
    key_init(&o, 4, T_OUTBOX);
    key_u64(&o, 1);
    assert_int_equal(store_delete(f->s, &o), EDDY_OK);
    assert_int_equal(txn_views(t, &k), 70);
    store_txn_stats(t, &after);
    assert_int_equal(after.forgets, before.forgets);
    assert_int_equal(after.misses, before.misses);
    /* ...of a kept table, not */
    assert_int_equal(store_delete(f->s, &k), EDDY_OK);
    assert_int_equal(txn_views(t, &k), -1);
    store_txn_free(t);
}

static void test_reset_forgets_changes_in_place(void **state)
{
    struct fx *f = *state;
    struct store_key k;
    counts_key(&k, 5, "u1");
    put_counts_committed(f->s, &k, 10);
    store_txn *t = store_txn_new(f->s);
    assert_int_equal(txn_views(t, &k), 10);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);

    /* a failed group: changed in place (even marked), then abandoned */
    bump(t, &k, 5);
    store_txn_reset(t);
    assert_int_equal(txn_views(t, &k), 10);
    assert_int_equal(committed_views(f->s, &k), 10);
    store_txn_free(t);
}

static void test_eviction_keeps_budget_and_values(void **state)
{
    struct fx *f = *state;
    store_set_kept_bytes(f->s, 16384);
    store_txn *t = store_txn_new(f->s);
    char id[16];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 200; i++) {
            struct store_key k;
            snprintf(id, sizeof(id), "u%d", i);
            counts_key(&k, 6, id);
            bump(t, &k, (uint64_t)i + 1);
            if (i % 20 == 19)
                assert_int_equal(store_txn_commit(t, false), EDDY_OK);
        }
    }
    struct store_txn_stats st;
    store_txn_stats(t, &st);
    assert_true(st.evictions > 0);
    assert_true(st.kept_bytes <= 16384);
    assert_true(st.kept > 0);
    for (int i = 0; i < 200; i++) { /* kept or re-read: every value is right */
        struct store_key k;
        snprintf(id, sizeof(id), "u%d", i);
        counts_key(&k, 6, id);
        assert_int_equal(txn_views(t, &k), 3 * (i + 1));
        assert_int_equal(committed_views(f->s, &k), 3 * (i + 1));
    }
    store_txn_free(t);
}

struct seen {
    char keys[8][32];
    size_t lens[8];
    int n;
};

static int collect(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct seen *s = ud;
    if (s->n < 8) {
        memcpy(s->keys[s->n], k, klen < 32 ? klen : 32);
        s->lens[s->n++] = klen;
    }
    return 0;
}

/* glibc's bytes in use: the arenas' and the mmap'd chunks'. */
static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* The budget covers what the txn holds, measured by malloc: its table (entries, slots,
 * keys) besides the kept values. Counts values are small, so the table is most of it (it
 * held 1.6x the budget when only the values and ~80 bytes an entry were charged). */
static void test_budget_covers_what_the_txn_holds(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
    skip(); /* ASan's allocator is not glibc's: mallinfo2 does not see it */
#endif
    struct fx *f = *state;
    const size_t budget = (size_t)8 << 20;
    store_set_kept_bytes(f->s, budget);
    store_txn *t = store_txn_new(f->s);
    char id[16];
    for (int i = 0; i < 100000; i++) {
        struct store_key k;
        snprintf(id, sizeof(id), "u%06d", i);
        counts_key(&k, 7, id);
        bump(t, &k, 1);
        if (i % 1000 == 999)
            assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    }
    struct store_txn_stats st;
    store_txn_stats(t, &st);
    assert_true(st.evictions > 0);
    assert_true(st.kept_bytes + st.table_bytes <= budget);
    size_t held = heap_in_use();
    store_txn_free(t);
    held -= heap_in_use();
    assert_true(held <= budget + budget / 20);
    assert_true(held >= budget / 2); /* the values were kept up to the budget */
}

static void test_scan_merges_pending(void **state)
{
    struct fx *f = *state;
    struct store_key a, b, c, start, end;
    counts_key(&a, 7, "a");
    counts_key(&b, 7, "b");
    counts_key(&c, 7, "c");
    put_counts_committed(f->s, &a, 1);
    put_counts_committed(f->s, &b, 1);
    key_init(&start, 7, T_USER_WIN);
    key_prefix_end(&start, &end);

    store_txn *t = store_txn_new(f->s);
    struct seen s = {0};
    /* nothing pending in the prefix (a pending key elsewhere): the committed keys */
    struct store_key other;
    counts_key(&other, 8, "x");
    bump(t, &other, 1);
    assert_int_equal(store_txn_scan(t, &start, &end, collect, &s), EDDY_OK);
    assert_int_equal(s.n, 2);

    /* a deleted, c added, b changed and kept from before */
    bump(t, &b, 1);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(store_txn_del(t, &a), EDDY_OK);
    bump(t, &c, 1);
    memset(&s, 0, sizeof(s));
    assert_int_equal(store_txn_scan(t, &start, &end, collect, &s), EDDY_OK);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.lens[0], b.len);
    assert_memory_equal(s.keys[0], b.buf, b.len);
    assert_memory_equal(s.keys[1], c.buf, c.len);

    uint64_t deleted = 0;
    assert_int_equal(store_txn_del_range(t, &start, &end, &deleted), EDDY_OK);
    assert_int_equal(deleted, 2);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(committed_views(f->s, &b), -1);
    assert_int_equal(committed_views(f->s, &c), -1);
    assert_int_equal(txn_views(t, &b), -1);
    store_txn_free(t);
}

static int count_keys(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    (*(int *)ud)++;
    return 0;
}

/* A group that only read (so the engine did not commit it), then a checkpoint load of the
 * partition, then a group that reads and writes the same keys: the new values, and every
 * key listed once by scans and range deletes. */
static void test_forgotten_between_uncommitted_groups(void **state)
{
    struct fx *f = *state;
    struct store_key k[20], start, end;
    char id[16];
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof(id), "u%d", i);
        counts_key(&k[i], 9, id);
        put_counts_committed(f->s, &k[i], 1);
    }
    store_txn *t = store_txn_new(f->s);
    for (int i = 0; i < 20; i++)
        assert_int_equal(txn_views(t, &k[i]), 1);
    assert_int_equal(store_txn_pending(t), 0);

    store_batch *b = store_batch_new();
    Eddy__Store__V1__Counts c = EDDY__STORE__V1__COUNTS__INIT;
    c.view = 100;
    uint8_t buf[64];
    size_t n = eddy__store__v1__counts__pack(&c, buf);
    for (int i = 0; i < 20; i++)
        assert_int_equal(store_batch_put(b, k[i].buf, k[i].len, buf, n), EDDY_OK);
    key_init(&start, 9, T_LOG);
    key_init(&end, 10, T_LOG);
    assert_int_equal(store_replace_range(f->s, &start, &end, b, NULL), EDDY_OK);
    store_batch_free(b);

    for (int i = 0; i < 20; i++)
        bump(t, &k[i], 1);
    assert_int_equal(txn_views(t, &k[7]), 101);
    int seen = 0;
    key_init(&start, 9, T_USER_WIN);
    key_prefix_end(&start, &end);
    assert_int_equal(store_txn_scan(t, &start, &end, count_keys, &seen), EDDY_OK);
    assert_int_equal(seen, 20);
    uint64_t deleted = 0;
    assert_int_equal(store_txn_del_range(t, &start, &end, &deleted), EDDY_OK);
    assert_int_equal(deleted, 20);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    for (int i = 0; i < 20; i++)
        assert_int_equal(committed_views(f->s, &k[i]), -1);
    store_txn_free(t);
}

/* A commit in three steps: between the seal and the settle the sealed keys are in flight:
 * not in LevelDB before the write, yet read and scanned through the txn, written again as
 * pending keys of the next seal; after the settle the keys only written leave the txn. */
static void test_sealed_keys_in_flight(void **state)
{
    struct fx *f = *state;
    struct store_key k, log, start, end;
    counts_key(&k, 3, "k");
    put_counts_committed(f->s, &k, 1);
    key_init(&log, 3, T_LOG);
    key_u64(&log, 7);
    key_init(&start, 3, T_LOG);
    key_prefix_end(&start, &end);

    store_txn *t = store_txn_new(f->s);
    bump(t, &k, 1);
    assert_int_equal(store_txn_put(t, &log, "rec", 3), EDDY_OK);
    assert_int_equal(store_txn_seal(t), EDDY_OK);
    assert_int_equal(store_txn_pending(t), 0);
    /* the next group, while the write has not run */
    assert_int_equal(committed_views(f->s, &k), 1);
    assert_int_equal(txn_views(t, &k), 2);
    const char *v;
    size_t vlen;
    bool found = false;
    assert_int_equal(store_txn_get(t, &log, &v, &vlen, &found), EDDY_OK);
    assert_true(found);
    assert_memory_equal(v, "rec", 3);
    int seen = 0;
    assert_int_equal(store_txn_scan(t, &start, &end, count_keys, &seen), EDDY_OK);
    assert_int_equal(seen, 1);
    bump(t, &k, 1);
    assert_int_equal(store_txn_pending(t), 1);

    assert_int_equal(store_txn_write(t, true), EDDY_OK);
    assert_int_equal(committed_views(f->s, &k), 2);
    store_txn_settle(t, EDDY_OK);
    assert_int_equal(txn_views(t, &k), 3); /* still pending */
    struct store_txn_stats st;
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_int_equal(committed_views(f->s, &k), 3);
    /* the written-only key (read in the group after it, so held until that group's seal)
     * has left the txn: read from LevelDB */
    store_txn_stats(t, &st);
    uint64_t misses = st.misses;
    assert_int_equal(store_txn_get(t, &log, &v, &vlen, &found), EDDY_OK);
    assert_true(found);
    assert_memory_equal(v, "rec", 3);
    store_txn_stats(t, &st);
    assert_int_equal(st.misses, misses + 1);
    store_txn_free(t);
}

/* A failed write resets the txn, pending writes made on top of the sealed ones included:
 * afterwards it reads the store's values again. */
static void test_failed_write_resets(void **state)
{
    struct fx *f = *state;
    struct store_key k, other;
    counts_key(&k, 4, "k");
    counts_key(&other, 4, "other");
    put_counts_committed(f->s, &k, 5);

    store_txn *t = store_txn_new(f->s);
    bump(t, &k, 1);
    assert_int_equal(store_txn_seal(t), EDDY_OK);
    bump(t, &k, 1);
    bump(t, &other, 1);
    store_fail_writes(f->s, 1, EDDY_ERR_IO);
    assert_int_equal(store_txn_write(t, true), EDDY_ERR_IO);
    store_txn_settle(t, EDDY_ERR_IO);
    assert_int_equal(store_txn_pending(t), 0);
    assert_int_equal(txn_views(t, &k), 5);
    assert_int_equal(txn_views(t, &other), -1);
    assert_int_equal(committed_views(f->s, &k), 5);
    bump(t, &k, 2); /* the next write goes through */
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    assert_int_equal(committed_views(f->s, &k), 7);
    store_txn_free(t);
}


/* ---- scans against a reference, with the pending and in-flight prefix chains ---------- */

#define REF_MAX 1300

struct ref {
    struct store_key k[REF_MAX];
    char v[REF_MAX][16]; /* "" : absent */
    size_t n;
};

static size_t ref_slot(struct ref *r, const struct store_key *k)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->k[i].len == k->len && memcmp(r->k[i].buf, k->buf, k->len) == 0)
            return i;
    assert_true(r->n < REF_MAX);
    r->k[r->n] = *k;
    r->v[r->n][0] = '\0';
    return r->n++;
}

struct got {
    size_t n;
    struct store_key k[REF_MAX];
    char v[REF_MAX][16];
};

static int collect_kv(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct got *g = ud;
    assert_true(g->n < REF_MAX && vlen < 16);
    memcpy(g->k[g->n].buf, k, klen);
    g->k[g->n].len = klen;
    memcpy(g->v[g->n], v, vlen);
    g->v[g->n][vlen] = '\0';
    g->n++;
    return 0;
}

static int key_order(const void *a, const void *b)
{
    const struct store_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->buf, y->buf, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The txn's scan of prefix (p, table) lists exactly the reference's live keys there, in
 * order, with their values. */
static void check_prefix(store_txn *t, struct ref *r, uint32_t p, enum store_table table)
{
    struct store_key start, end;
    key_init(&start, p, table);
    key_prefix_end(&start, &end);
    static struct got g;
    g.n = 0;
    assert_int_equal(store_txn_scan(t, &start, &end, collect_kv, &g), EDDY_OK);
    static struct store_key want[REF_MAX];
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->v[i][0] && r->k[i].len >= 3 && memcmp(r->k[i].buf, start.buf, 3) == 0)
            want[n++] = r->k[i];
    qsort(want, n, sizeof(want[0]), key_order);
    assert_int_equal(g.n, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(g.k[i].len, want[i].len);
        assert_memory_equal(g.k[i].buf, want[i].buf, want[i].len);
        assert_string_equal(g.v[i], r->v[ref_slot(r, &want[i])]);
    }
}

static void test_scan_chains_match_reference(void **state)
{
    struct fx *f = *state;
    /* partitions 1 and 4097 share a prefix bit (the chains are by hashed prefix) */
    static const uint32_t parts[] = {1, 2, 4097};
    static const enum store_table tables[] = {T_USER_WIN, T_LOG};
    static struct ref r;
    r.n = 0;
    store_txn *t = store_txn_new(f->s);
    unsigned seed = 7, counter = 0;
    for (int round = 0; round < 40; round++) {
        bool sealed = false;
        for (int op = 0; op < 60; op++) {
            struct store_key k;
            char id[16];
            key_init(&k, parts[rand_r(&seed) % 3], tables[rand_r(&seed) % 2]);
            snprintf(id, sizeof(id), "k%u", rand_r(&seed) % (round < 20 ? 40 : 200));
            key_str(&k, id);
            size_t i = ref_slot(&r, &k);
            if (rand_r(&seed) % 4 == 0) {
                assert_int_equal(store_txn_del(t, &k), EDDY_OK);
                r.v[i][0] = '\0';
            } else {
                snprintf(r.v[i], sizeof(r.v[i]), "v%u", ++counter);
                assert_int_equal(store_txn_put(t, &k, r.v[i], strlen(r.v[i])), EDDY_OK);
            }
            if (op == 30 && round % 2 == 0) { /* the first half goes in flight */
                assert_int_equal(store_txn_seal(t), EDDY_OK);
                sealed = true;
            }
        }
        for (size_t pi = 0; pi < 3; pi++)
            for (size_t ti = 0; ti < 2; ti++)
                check_prefix(t, &r, parts[pi], tables[ti]);
        if (sealed) {
            assert_int_equal(store_txn_write(t, false), EDDY_OK);
            store_txn_settle(t, EDDY_OK);
        }
        if (round % 3 == 0)
            assert_int_equal(store_txn_commit(t, false), EDDY_OK);
        for (size_t pi = 0; pi < 3; pi++)
            check_prefix(t, &r, parts[pi], tables[0]);
    }
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
}

/* store_write_stats counts each committed record once per write, with its key and value
 * bytes, under its table; objects packed at the seal count as encodes; a failed write and
 * a reset count nothing. */
static void test_write_stats_per_table(void **state)
{
    struct fx *f = *state;
    struct store_write_stats w;
    store_txn *t = store_txn_new(f->s);
    struct store_key a, b, c;
    counts_key(&a, 3, "ua");
    key_init(&b, 3, T_LOG);
    key_u64(&b, 7);
    key_init(&c, 3, T_DEDUP);
    key_str(&c, "e1");
    bump(t, &a, 1);
    bump(t, &a, 1); /* one record: the last value */
    assert_int_equal(store_txn_put(t, &b, "xy", 2), EDDY_OK);
    assert_int_equal(store_txn_put(t, &b, "xyz", 3), EDDY_OK);
    assert_int_equal(store_txn_del(t, &c), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_write_stats(f->s, &w);
    assert_int_equal(w.writes, 1);
    assert_int_equal(w.keys[T_USER_WIN], 1);
    assert_int_equal(w.packs[T_USER_WIN], 1);
    assert_true(w.bytes[T_USER_WIN] > a.len); /* key and the packed Counts */
    assert_int_equal(w.keys[T_LOG], 1);
    assert_int_equal(w.packs[T_LOG], 0);
    assert_int_equal(w.bytes[T_LOG], b.len + 3);
    assert_int_equal(w.keys[T_DEDUP], 1);
    assert_int_equal(w.bytes[T_DEDUP], c.len); /* a delete: its key only */
    uint64_t counts_bytes = w.bytes[T_USER_WIN];
    assert_int_equal(store_txn_put(t, &b, "z", 1), EDDY_OK); /* a second write: LOG only */
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_write_stats(f->s, &w);
    assert_int_equal(w.writes, 2);
    assert_int_equal(w.keys[T_USER_WIN], 1);
    assert_int_equal(w.keys[T_LOG], 2);
    assert_int_equal(w.bytes[T_LOG], 2 * b.len + 4);

    store_fail_writes(f->s, 1, EDDY_ERR_IO); /* refused: nothing counted */
    bump(t, &a, 1);
    assert_int_equal(store_txn_commit(t, false), EDDY_ERR_IO);
    bump(t, &a, 1);
    store_txn_reset(t); /* dropped: nothing counted */
    bump(t, &a, 1);     /* read again from LevelDB, changed, written */
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_write_stats(f->s, &w);
    assert_int_equal(w.writes, 3);
    assert_int_equal(w.keys[T_USER_WIN], 2);
    assert_int_equal(w.packs[T_USER_WIN], 2);
    assert_int_equal(w.bytes[T_USER_WIN], 2 * counts_bytes);
    assert_int_equal(w.keys[T_LOG], 2);
    store_txn_free(t);
}

/* A COOC key of partition p (the table the txn keeps key sets of here). */
static void pair_key(struct store_key *k, uint32_t p, const char *from, const char *to)
{
    key_init(k, p, T_COOC);
    key_lstr(k, from);
    key_str(k, to);
}

/* Through txn 't': whether 'k' exists. */
static bool txn_has(store_txn *t, const struct store_key *k)
{
    const char *v;
    size_t vlen;
    bool found;
    assert_int_equal(store_txn_get(t, k, &v, &vlen, &found), EDDY_OK);
    return found;
}

static void put_committed(store *s, const struct store_key *k)
{
    store_txn *o = store_txn_new(s);
    assert_non_null(o);
    assert_int_equal(store_txn_put(o, k, "x", 1), EDDY_OK);
    assert_int_equal(store_txn_commit(o, false), EDDY_OK);
    store_txn_free(o);
}

/* With key sets (store_txn_index_keys), a key the set of its partition lacks is answered
 * absent without a LevelDB read, and every key that exists is found: those committed
 * before the set was built, those the txn wrote (a delete then a put among them), and those
 * written around the txn (a range replace, another txn's commit), which drop the sets. */
static void test_key_sets_answer_absent(void **state)
{
    struct fx *f = *state;
    struct store_key a, b, c, d, e, u, start, end;
    struct store_txn_stats st, st2;
    pair_key(&a, 3, "p1", "a");
    pair_key(&b, 3, "p1", "b");
    pair_key(&c, 3, "p2", "c");
    pair_key(&d, 3, "p3", "d");
    pair_key(&e, 4, "p1", "e");
    counts_key(&u, 3, "u1");
    put_committed(f->s, &a);
    store_txn *t = store_txn_new(f->s);
    store_txn_index_keys(t, UINT32_C(1) << T_COOC, 1 << 20);

    assert_true(txn_has(t, &a)); /* the set of partition 3 is built from its table */
    store_txn_stats(t, &st);
    assert_false(txn_has(t, &b));
    assert_false(txn_has(t, &e)); /* partition 4: an empty table */
    assert_false(txn_has(t, &u)); /* another table: read */
    store_txn_stats(t, &st2);
    assert_int_equal(st2.absent, st.absent + 2);
    assert_int_equal(st2.misses, st.misses + 1);
    assert_int_equal(st2.key_set_keys, 1);

    /* written by the txn: found once committed (the txn no longer holds them) */
    assert_int_equal(store_txn_put(t, &b, "y", 1), EDDY_OK);
    assert_int_equal(store_txn_del(t, &c), EDDY_OK);
    assert_int_equal(store_txn_put(t, &c, "z", 1), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_true(txn_has(t, &b));
    assert_true(txn_has(t, &c));

    /* a checkpoint load of partition 3 around the txn, then another txn's commit */
    store_batch *bt = store_batch_new();
    assert_int_equal(store_batch_put(bt, d.buf, d.len, "w", 1), EDDY_OK);
    key_init(&start, 3, T_LOG);
    key_init(&end, 4, T_LOG);
    assert_int_equal(store_replace_range(f->s, &start, &end, bt, NULL), EDDY_OK);
    store_batch_free(bt);
    assert_true(txn_has(t, &d));
    assert_false(txn_has(t, &b)); /* replaced */
    put_committed(f->s, &e);
    assert_true(txn_has(t, &e));
    store_txn_free(t);
}

/* Past the budget a partition's set is given up and its reads go to LevelDB: still right. */
static void test_key_sets_over_budget(void **state)
{
    struct fx *f = *state;
    struct store_key k;
    struct store_txn_stats st, st2;
    store_txn *t = store_txn_new(f->s);
    store_txn_index_keys(t, UINT32_C(1) << T_COOC, 64 * 8); /* one set of 64 slots: 32 keys */
    pair_key(&k, 2, "p", "none");
    assert_false(txn_has(t, &k));
    char to[16];
    for (int i = 0; i < 40; i++) {
        snprintf(to, sizeof(to), "n%d", i);
        pair_key(&k, 2, "p", to);
        assert_int_equal(store_txn_put(t, &k, "x", 1), EDDY_OK);
    }
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_stats(t, &st);
    assert_int_equal(st.key_set_overflows, 1);
    assert_int_equal(st.key_set_bytes, 0);
    pair_key(&k, 2, "p", "n39");
    assert_true(txn_has(t, &k));
    pair_key(&k, 2, "p", "none");
    assert_false(txn_has(t, &k));
    store_txn_stats(t, &st2);
    assert_int_equal(st2.absent, st.absent);
    assert_int_equal(st2.misses, st.misses + 2);
    store_txn_free(t);
}

/* Sets of two masks side by side, each with its own budget: a key of any of their tables
 * that its set lacks is answered absent, one of another table is read; one mask's set given
 * up for its budget leaves the other's; a mask sharing a table with an earlier one replaces
 * it. */
static void test_key_sets_of_two_masks(void **state)
{
    struct fx *f = *state;
    struct store_key user, impr, pair, win, big;
    struct store_txn_stats st, st2;
    key_init(&user, 3, T_USER);
    key_str(&user, "u1");
    key_init(&impr, 3, T_IMPR);
    key_lstr(&impr, "u1");
    pair_key(&pair, 3, "p1", "a");
    counts_key(&win, 3, "u1");
    put_committed(f->s, &user);
    store_txn *t = store_txn_new(f->s);
    /* two sets of 64 slots (32 keys each) */
    store_txn_index_keys(t, (UINT32_C(1) << T_USER) | (UINT32_C(1) << T_IMPR), 2 * 64 * 8);
    store_txn_index_keys(t, UINT32_C(1) << T_COOC, 1 << 20);

    assert_true(txn_has(t, &user)); /* a miss: kept from now on */
    store_txn_stats(t, &st);
    assert_false(txn_has(t, &impr));
    assert_false(txn_has(t, &pair));
    assert_false(txn_has(t, &win)); /* not indexed: read */
    store_txn_stats(t, &st2);
    assert_int_equal(st2.absent, st.absent + 2);
    assert_int_equal(st2.misses, st.misses + 1);
    assert_int_equal(st2.key_set_keys, 1); /* u1's USER row; IMPR and COOC empty */

    /* 40 USER rows: the USER set of partition 3 is given up, IMPR's and COOC's are not */
    char id[16];
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof(id), "n%d", i);
        key_init(&big, 3, T_USER);
        key_str(&big, id);
        assert_int_equal(store_txn_put(t, &big, "x", 1), EDDY_OK);
    }
    assert_int_equal(store_txn_put(t, &impr, "y", 1), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_stats(t, &st);
    assert_int_equal(st.key_set_overflows, 1);
    key_init(&big, 3, T_USER);
    key_str(&big, "none");
    assert_false(txn_has(t, &big)); /* read */
    key_init(&big, 3, T_IMPR);
    key_lstr(&big, "none");
    assert_false(txn_has(t, &big)); /* absent */
    assert_true(txn_has(t, &impr)); /* read: written, not kept */
    pair_key(&big, 3, "p1", "none");
    assert_false(txn_has(t, &big)); /* absent */
    store_txn_stats(t, &st2);
    assert_int_equal(st2.misses, st.misses + 2);
    assert_int_equal(st2.absent, st.absent + 2);

    /* {IMPR} replaces {USER, IMPR}: USER is read again, IMPR's set is built anew */
    store_txn_index_keys(t, UINT32_C(1) << T_IMPR, 1 << 20);
    store_txn_stats(t, &st);
    key_init(&big, 4, T_USER);
    key_str(&big, "none");
    assert_false(txn_has(t, &big));
    key_init(&big, 4, T_IMPR);
    key_lstr(&big, "none");
    assert_false(txn_has(t, &big));
    assert_true(txn_has(t, &impr));
    store_txn_stats(t, &st2);
    assert_int_equal(st2.misses, st.misses + 1);
    assert_int_equal(st2.absent, st.absent + 1);
    store_txn_free(t);
}

/* A set built while a key is pending deleted lacks it (the scan hides it): a put of it
 * then, pending already, still adds it. */
static void test_key_set_put_after_pending_delete(void **state)
{
    struct fx *f = *state;
    struct store_key x, y;
    key_init(&x, 5, T_USER);
    key_str(&x, "x");
    key_init(&y, 5, T_USER);
    key_str(&y, "y");
    put_committed(f->s, &x);
    store_txn *t = store_txn_new(f->s);
    store_txn_index_keys(t, UINT32_C(1) << T_USER, 1 << 20);
    assert_int_equal(store_txn_del(t, &x), EDDY_OK);
    assert_false(txn_has(t, &y)); /* builds partition 5's set, without x */
    assert_int_equal(store_txn_put(t, &x, "z", 1), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    assert_true(txn_has(t, &x));
    store_txn_free(t);
}

/* Key i of test_every_length: 3 + i % 280 + 2 bytes; its value in a round, in 'val':
 * returns its length. */
static void length_key(struct store_key *k, int i)
{
    key_init(k, 7, T_USER);
    for (int j = 0; j < i % 280; j++)
        key_bytes(k, "k", 1);
    key_u16(k, (uint16_t)i);
}

static size_t length_val(char *val, int i, int round, int n)
{
    size_t len = (size_t)((i * 7 + round * 31) % n);
    memset(val, 'a' + (i + round) % 26, len);
    return len;
}

/* Keys and values of every length around the txn's small-block sizes (16-byte steps to
 * 256 bytes, malloc beyond), rewritten with other lengths, deleted, forgotten at a reset:
 * each read gives the last bytes written, before and after the commit. */
static void test_every_length(void **state)
{
    struct fx *f = *state;
    enum { N = 300 };
    char val[N];
    struct store_key k;
    store_txn *t = store_txn_new(f->s);
    assert_non_null(t);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            length_key(&k, i);
            size_t len = length_val(val, i, round, N);
            if (round == 2 && i % 5 == 0)
                assert_int_equal(store_txn_del(t, &k), EDDY_OK);
            else
                assert_int_equal(store_txn_put(t, &k, val, len), EDDY_OK);
        }
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < N; i++) {
                const char *v;
                size_t vlen;
                bool found;
                length_key(&k, i);
                assert_int_equal(store_txn_get(t, &k, &v, &vlen, &found), EDDY_OK);
                assert_true(found == !(round == 2 && i % 5 == 0));
                if (!found)
                    continue;
                size_t len = length_val(val, i, round, N);
                assert_int_equal(vlen, len);
                assert_memory_equal(v, val, len);
            }
            if (pass == 0)
                assert_int_equal(store_txn_commit(t, false), EDDY_OK);
        }
        if (round == 1)
            store_txn_reset(t); /* every block at once; read back from LevelDB next */
    }
    store_txn_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kept_across_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_chains_match_reference, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_written_once_last_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edit_marks_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_set_keeps_held_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_range_forgets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_writers_forget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_forgets_changes_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction_keeps_budget_and_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_covers_what_the_txn_holds, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_scan_merges_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forgotten_between_uncommitted_groups, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sealed_keys_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_resets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_stats_per_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_sets_answer_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_sets_over_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_sets_of_two_masks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_set_put_after_pending_delete, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_every_length, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
