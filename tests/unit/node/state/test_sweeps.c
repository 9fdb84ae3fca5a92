/* The event-time sweeps. The dedup memory: an event id is remembered for --dedup-window of
 * event time behind the watermark, then forgotten by the sweep that walks the log (no index
 * row per event); a user removed by DeleteUser leaves its events' ids until then; a
 * partition of the older layout (DEDUP_EXP index rows) is converted and swept by both.
 * --state-ttl: a user model inactive that long goes, with the purchases remembered for it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/partition.h"
#include "node/state/apply.h"
#include "node/state/logrec.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "engine_fixture.h"

#define MIN 60000LL

static struct engine_opts dedup_opts(const char *dir)
{
    struct engine_opts o = opts(dir);
    o.apply.dedup_window_ms = 10 * MIN;
    o.apply.sweep_interval_ms = MIN;
    return o;
}

static engine *open_engine(const struct engine_opts *o)
{
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(o, &e, err, sizeof(err)), EDDY_OK);
    return e;
}

/* Ingest one view of 'user' with id 'id' at 'ts': the engine's answer. */
static struct engine_ingest_result send1(engine *e, const char *id, const char *user, int64_t ts)
{
    Eddy__V1__Event *ev = mk(id, user, ts, VIEW, "p1", "books");
    struct done d = ingest(e, &ev, 1);
    free(ev);
    return d.r;
}

static bool remembered(engine *e, const char *id, const char *user, int64_t ts)
{
    struct engine_ingest_result r = send1(e, id, user, ts);
    assert_int_equal(r.accepted + r.duplicates, 1);
    return r.duplicates == 1;
}

/* The rows of one table, as store_dump prints them. */
static char *rows(engine *e, enum store_table t)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(engine_store(e), 1u << t, f), EDDY_OK);
    fclose(f);
    return buf;
}

static size_t count_rows(engine *e, enum store_table t)
{
    char *r = rows(e, t);
    size_t n = 0;
    for (char *l = r; (l = strchr(l, '\n')) != NULL; l++)
        n++;
    free(r);
    return n;
}

/* Rows of the table's dump in which the hex of the n bytes at 's' appears. */
static size_t rows_with_bytes(engine *e, enum store_table t, const void *s, size_t len)
{
    char hex[256] = "";
    for (size_t i = 0; i < len && i < 100; i++)
        snprintf(hex + 2 * i, 3, "%02x", ((const unsigned char *)s)[i]);
    char *r = rows(e, t);
    size_t n = 0;
    for (char *l = r, *nl; *l; l = nl + 1) {
        nl = strchr(l, '\n');
        if (!nl)
            break;
        *nl = '\0';
        n += strstr(l, hex) != NULL;
    }
    free(r);
    return n;
}

/* Rows of the table's dump in which the hex of string 's' appears. */
static size_t rows_with(engine *e, enum store_table t, const char *s)
{
    return rows_with_bytes(e, t, s, strlen(s));
}

/* Whether the hex of 's' appears in the table's dump. */
static bool in_table(engine *e, enum store_table t, const char *s)
{
    return rows_with(e, t, s) > 0;
}

/* Whether a DEDUP row remembers event id 'id' (keyed by its hash: apply_dedup_key). */
static bool in_dedup(engine *e, const char *id)
{
    struct store_key k;
    apply_dedup_key(&k, 0, id, strlen(id));
    return rows_with_bytes(e, T_DEDUP, k.buf + 3, k.len - 3) > 0;
}

static void test_ids_forgotten_along_the_log(void **state)
{
    (void)state;
    char *dir = tmpdir_for("dedup");
    struct engine_opts o = dedup_opts(dir);
    engine *e = open_engine(&o);

    assert_int_equal(send1(e, "x1", "u", T0).accepted, 1);
    assert_int_equal(send1(e, "x2", "u", T0 + 20 * MIN).accepted, 1);
    assert_int_equal(send1(e, "x3", "u", T0 + 1 * MIN).accepted, 1); /* behind a newer one */
    /* the watermark passes T0 + 25 min: ids before T0 + 15 min may go, up to x2 */
    assert_int_equal(send1(e, "x4", "u", T0 + 25 * MIN).accepted, 1);
    assert_false(remembered(e, "x1", "u", T0));          /* forgotten: logged again */
    assert_true(remembered(e, "x3", "u", T0 + 1 * MIN));  /* waits behind x2 */
    assert_true(remembered(e, "x2", "u", T0 + 20 * MIN)); /* inside the window */
    assert_int_equal(count_rows(e, T_DEDUP), 4);          /* x1 (again), x2, x3, x4 */

    /* past T0 + 40 min: everything before T0 + 30 min goes, x1's second record included */
    assert_int_equal(send1(e, "x5", "u", T0 + 41 * MIN).accepted, 1);
    assert_int_equal(count_rows(e, T_DEDUP), 1);
    assert_true(in_dedup(e, "x5"));
    assert_int_equal(count_rows(e, T_DEDUP_EXP), 0); /* no index rows any more */
    engine_close(e);

    /* the place of the walk survives a restart */
    e = open_engine(&o);
    assert_true(remembered(e, "x5", "u", T0 + 41 * MIN));
    assert_false(remembered(e, "x2", "u", T0 + 20 * MIN));
    engine_close(e);
    rmrf(dir);
    free(dir);
}

/* --log-retention shorter than --dedup-window: the log stays until the walk passed it. */
static void test_log_kept_for_the_dedup_window(void **state)
{
    (void)state;
    char *dir = tmpdir_for("dedup");
    struct engine_opts o = dedup_opts(dir);
    o.apply.log_retention_ms = 2 * MIN;
    engine *e = open_engine(&o);
    uint32_t p = partition_of_user("u", FIXTURE_PARTITIONS);
    char id[16];
    for (int i = 0; i < 20; i++) { /* one a minute */
        snprintf(id, sizeof(id), "e%d", i);
        assert_int_equal(send1(e, id, "u", T0 + i * MIN).accepted, 1);
    }
    struct engine_partition_view v;
    engine_partition(e, p, &v);
    /* watermark ~T0 + 19 min: ids before ~T0 + 9 min forgotten, so is their log */
    assert_true(v.log_first_seq >= 8 && v.log_first_seq <= 10);
    assert_false(remembered(e, "e0", "u", T0));
    assert_true(remembered(e, "e12", "u", T0 + 12 * MIN));
    engine_close(e);
    rmrf(dir);
    free(dir);
}

static void on_delete(void *ud, eddy_err err, bool model, uint64_t windows, uint64_t log)
{
    uint64_t *n = ud;
    assert_int_equal(err, EDDY_OK);
    (void)model;
    (void)windows;
    *n = log;
}

/* DeleteUser: the events go, their ids stay until the window passes (a retry is still a
 * duplicate, so it cannot bring the user back), and then go too. */
static void test_deleted_user_ids_until_the_window_passes(void **state)
{
    (void)state;
    char *dir = tmpdir_for("dedup");
    struct engine_opts o = dedup_opts(dir);
    engine *e = open_engine(&o);
    assert_int_equal(send1(e, "g1", "gone-user", T0).accepted, 1);
    assert_int_equal(send1(e, "g2", "gone-user", T0 + MIN).accepted, 1);
    assert_int_equal(send1(e, "k1", "kept-user", T0 + MIN).accepted, 1);
    uint64_t log = 0;
    assert_int_equal(engine_delete_user(e, "gone-user", on_delete, &log), EDDY_OK);
    engine_flush(e);
    assert_int_equal(log, 2);
    /* no row of the log names the user: not its events, nor the DeleteUser record its
     * followers replay (which holds a salted hash of the id) */
    assert_int_equal(rows_with(e, T_LOG, "gone-user"), 0);
    assert_true(in_table(e, T_LOG, "g1"));         /* the ids are, for the dedup sweep */
    assert_true(remembered(e, "g1", "gone-user", T0));
    assert_false(in_table(e, T_USER, "gone-user"));

    /* both partitions' watermarks pass the window: every id of before is forgotten */
    assert_int_equal(send1(e, "g3", "gone-user", T0 + 30 * MIN).accepted, 1);
    assert_int_equal(send1(e, "k2", "kept-user", T0 + 30 * MIN).accepted, 1);
    assert_false(in_dedup(e, "g1"));
    assert_false(in_dedup(e, "g2"));
    assert_false(in_dedup(e, "k1"));
    assert_int_equal(count_rows(e, T_DEDUP), 2); /* g3, k2 */
    engine_close(e);
    rmrf(dir);
    free(dir);
}

/* Rewrite partition p as the older layout wrote it: its metadata without format nor walk
 * place, each event's log record as a protobuf LogRecord (format 6 writes it compactly),
 * and for each event a DEDUP_ID row keyed by its id (format 6 keys DEDUP by the id's hash)
 * holding its seq and time, with its DEDUP_EXP index row. */
struct older {
    store_txn *t;
    uint32_t p;
};

static int make_older_row(void *ud, const unsigned char *k, size_t klen, const char *v,
                          size_t vlen)
{
    struct older *o = ud;
    Eddy__Store__V1__LogRecord *r = logrec_unpack((const uint8_t *)v, vlen);
    assert_non_null(r);
    assert_true(logrec_is_compact((const uint8_t *)v, vlen));
    assert_int_equal(r->kind_case, EDDY__STORE__V1__LOG_RECORD__KIND_EVENT);
    const char *id = r->event->event_id;
    struct store_key x;
    x.len = klen;
    memcpy(x.buf, k, klen);
    assert_int_equal(store_txn_put_msg(o->t, &x, &r->base), EDDY_OK);
    size_t off = 3;
    Eddy__Store__V1__Dedup d = EDDY__STORE__V1__DEDUP__INIT;
    assert_true(key_get_u64(k, klen, &off, &d.seq));
    d.ts = r->event->timestamp_ms;
    apply_dedup_key(&x, o->p, id, strlen(id));
    assert_int_equal(store_txn_del(o->t, &x), EDDY_OK);
    key_init(&x, o->p, T_DEDUP_ID);
    key_str(&x, id);
    assert_int_equal(store_txn_put_msg(o->t, &x, &d.base), EDDY_OK);
    key_init(&x, o->p, T_DEDUP_EXP);
    key_i64(&x, d.ts);
    key_str(&x, id);
    assert_int_equal(store_txn_put(o->t, &x, "", 0), EDDY_OK);
    eddy__store__v1__log_record__free_unpacked(r, NULL);
    return 0;
}

static void make_older_layout(const char *dir, uint32_t p)
{
    store *st = NULL;
    char err[256];
    struct store_opts so = {dir, 0, 0};
    assert_int_equal(store_open(&so, &st, err, sizeof(err)), EDDY_OK);
    struct older o = {store_txn_new(st), p};
    struct store_key start, end;
    key_init(&start, p, T_LOG);
    key_prefix_end(&start, &end);
    assert_int_equal(store_scan(st, &start, &end, make_older_row, &o), EDDY_OK);
    Eddy__Store__V1__PartitionMeta *pm = NULL;
    key_init(&start, p, T_META);
    assert_int_equal(store_get_msg(st, &start, &eddy__store__v1__partition_meta__descriptor,
                                   (ProtobufCMessage **)&pm),
                     EDDY_OK);
    assert_non_null(pm);
    pm->format = 0;
    pm->dedup_next_seq = 0;
    assert_int_equal(store_txn_put_msg(o.t, &start, &pm->base), EDDY_OK);
    protobuf_c_message_free_unpacked(&pm->base, NULL);
    assert_int_equal(store_txn_commit(o.t, true), EDDY_OK);
    store_txn_free(o.t);
    store_close(st);
}

static void test_older_layout_converted(void **state)
{
    (void)state;
    char *dir = tmpdir_for("dedup");
    struct engine_opts o = dedup_opts(dir);
    uint32_t p = partition_of_user("u", FIXTURE_PARTITIONS);
    engine *e = open_engine(&o);
    assert_int_equal(send1(e, "old1", "u", T0).accepted, 1);
    assert_int_equal(send1(e, "old2", "u", T0 + 5 * MIN).accepted, 1);
    engine_close(e);
    make_older_layout(dir, p);

    e = open_engine(&o);
    assert_int_equal(count_rows(e, T_DEDUP_EXP), 2);
    assert_int_equal(count_rows(e, T_DEDUP_ID), 0); /* converted to DEDUP */
    assert_true(in_dedup(e, "old1"));
    /* watermark ~T0 + 13 min: old1 goes by its index row, the rest stays, none added */
    assert_int_equal(send1(e, "new1", "u", T0 + 13 * MIN).accepted, 1);
    assert_int_equal(count_rows(e, T_DEDUP_EXP), 1);
    assert_false(in_dedup(e, "old1"));
    assert_true(remembered(e, "old2", "u", T0 + 5 * MIN));
    assert_true(remembered(e, "new1", "u", T0 + 13 * MIN));
    /* ~T0 + 24 min: old2 by its index row, new1 along the log */
    assert_int_equal(send1(e, "new2", "u", T0 + 24 * MIN).accepted, 1);
    assert_int_equal(count_rows(e, T_DEDUP_EXP), 0);
    assert_false(in_dedup(e, "old2"));
    assert_false(in_dedup(e, "new1"));
    /* ~T0 + 40 min: new2 along the log */
    assert_int_equal(send1(e, "new3", "u", T0 + 40 * MIN).accepted, 1);
    assert_int_equal(count_rows(e, T_DEDUP), 1);
    assert_true(in_dedup(e, "new3"));
    engine_close(e);
    rmrf(dir);
    free(dir);
}

/* Two users of one partition (the sweeps run per partition). */
static void same_partition(char *a, char *b, size_t n)
{
    uint32_t want = partition_of_user("ttl-0", FIXTURE_PARTITIONS);
    snprintf(a, n, "ttl-0");
    for (int i = 1;; i++) {
        snprintf(b, n, "ttl-%d", i);
        if (partition_of_user(b, FIXTURE_PARTITIONS) == want)
            return;
    }
}

static void test_inactive_models_expire(void **state)
{
    (void)state;
    char *dir = tmpdir_for("ttl");
    struct engine_opts o = dedup_opts(dir);
    o.apply.state_ttl_ms = 10 * MIN;
    engine *e = open_engine(&o);
    char idle[16], active[16];
    same_partition(idle, active, sizeof(idle));
    Eddy__V1__Event *a[] = {mk("t1", idle, T0, BUY, "p1", "books"),
                            mk("t2", active, T0, BUY, "p2", "books"),
                            mk("t3", active, T0 + 8 * MIN, VIEW, "p3", "books")};
    ingest(e, a, 3);
    assert_true(in_table(e, T_USER, idle)); /* ~T0 + 8 min: nothing inactive for 10 min */
    assert_true(in_table(e, T_BOUGHT, idle));
    /* ~T0 + 15 min: the idle user's last event is older than the cutoff, the other's not */
    assert_int_equal(send1(e, "t4", active, T0 + 15 * MIN).accepted, 1);
    assert_false(in_table(e, T_USER, idle));
    assert_false(in_table(e, T_BOUGHT, idle));
    assert_true(in_table(e, T_USER, active));
    assert_true(in_table(e, T_BOUGHT, active));
    engine_close(e);
    for (int i = 0; i < 3; i++)
        free(a[i]);
    rmrf(dir);
    free(dir);
}

/* The answer to a batch is decided when its log is appended, before its events are
 * applied: an id that a sweep forgets at an event of the same batch must be accepted
 * again after it, as one event at a time (each applied before the next) does. */
static void test_ids_forgotten_within_a_batch(void **state)
{
    char *dir = tmpdir_for("sweeps");
    struct engine_opts o = dedup_opts(dir);
    engine *e = open_engine(&o);
    /* y2 moves the watermark past T0 + 25 min: its apply sweeps and forgets y1 */
    Eddy__V1__Event *b[] = {mk("y1", "u", T0, VIEW, "p1", "books"),
                            mk("y2", "u", T0 + 25 * MIN, VIEW, "p1", "books"),
                            mk("y1", "u", T0, VIEW, "p1", "books"),
                            mk("y2", "u", T0 + 25 * MIN, VIEW, "p1", "books")};
    struct done d = ingest(e, b, 4);
    assert_int_equal(d.r.accepted, 3);
    assert_int_equal(d.r.duplicates, 1); /* y2, remembered */
    assert_int_equal(d.r.late, 1);       /* y1 again, under the watermark */
    engine_close(e);
    rmrf(dir);
    free(dir);

    /* the same, one event at a time */
    dir = tmpdir_for("sweeps");
    o = dedup_opts(dir);
    e = open_engine(&o);
    assert_int_equal(send1(e, "y1", "u", T0).accepted, 1);
    assert_int_equal(send1(e, "y2", "u", T0 + 25 * MIN).accepted, 1);
    assert_int_equal(send1(e, "y1", "u", T0).accepted, 1);
    assert_int_equal(send1(e, "y2", "u", T0 + 25 * MIN).duplicates, 1);
    engine_close(e);
    for (int i = 0; i < 4; i++)
        free(b[i]);
    rmrf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_forgotten_along_the_log),
        cmocka_unit_test(test_ids_forgotten_within_a_batch),
        cmocka_unit_test(test_log_kept_for_the_dedup_window),
        cmocka_unit_test(test_deleted_user_ids_until_the_window_passes),
        cmocka_unit_test(test_older_layout_converted),
        cmocka_unit_test(test_inactive_models_expire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
