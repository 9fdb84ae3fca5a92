/* Checkpoint files on real LevelDBs in temp dirs: a partition written from an engine with
 * real state and loaded into a fresh store dumps byte for byte the same, other partitions
 * untouched; checkpoints taken while the writer keeps committing are consistent; every
 * flipped byte and every truncation is caught; latest_valid falls back; prune keeps N. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/completion.h"
#include "common/crc32c.h"
#include "common/partition.h"
#include "node/state/apply.h"
#include "node/state/checkpoint.h"
#include "node/state/engine.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "engine_fixture.h"

#define NPARTS FIXTURE_PARTITIONS

static char *subdir(const char *dir, const char *name)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    assert_non_null(p);
    snprintf(p, strlen(dir) + strlen(name) + 2, "%s/%s", dir, name);
    return p;
}

static store *open_store(const char *path)
{
    struct store_opts so = {path, 0, 0};
    store *s = NULL;
    char err[256];
    assert_int_equal(store_open(&so, &s, err, sizeof(err)), EDDY_OK);
    return s;
}

/* store_dump lines of partition 'p' (want_p >= 0), or of every other partition
 * (want_p < 0: all but -want_p - 1). Caller frees. */
static char *dump_filtered(store *s, int want_p)
{
    char *buf = NULL, *res = NULL;
    size_t len = 0, rlen = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(s, 0xffffffffu, f), EDDY_OK);
    fclose(f);
    FILE *r = open_memstream(&res, &rlen);
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char hex[5] = {line[0], line[1], line[2], line[3], 0};
        int p = (int)strtol(hex, NULL, 16);
        bool match = want_p >= 0 ? p == want_p : p != -want_p - 1;
        if (match)
            fprintf(r, "%s\n", line);
    }
    fclose(r);
    free(buf);
    return res;
}

static void put_raw(store *s, const struct store_key *k, const char *val)
{
    store_txn *t = store_txn_new(s);
    assert_int_equal(store_txn_put(t, k, val, strlen(val)), EDDY_OK);
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    store_txn_free(t);
}

static void put_meta(store *s, uint32_t p, uint64_t next_seq)
{
    struct part_meta m = {0};
    m.next_seq = next_seq;
    m.dirty = true;
    store_txn *t = store_txn_new(s);
    assert_int_equal(apply_meta_save(t, p, &m), EDDY_OK);
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    store_txn_free(t);
}

static int count_fn(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    (*(uint64_t *)ud)++;
    return 0;
}

static uint64_t count_table(store *s, uint32_t p, enum store_table t)
{
    struct store_key start, end;
    key_init(&start, p, t);
    key_prefix_end(&start, &end);
    uint64_t n = 0;
    assert_int_equal(store_scan(s, &start, &end, count_fn, &n), EDDY_OK);
    return n;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    *n = (size_t)file_size(path);
    unsigned char *b = malloc(*n ? *n : 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void write_all(const char *path, const unsigned char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* ---- engine with real state --------------------------------------------------------- */

static const char *cats[] = {"books", "toys", "garden", "food"};

/* Ingest 'n' events numbered from 'first', one per minute of event time. */
static void acked_fn(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    (void)r;
    completion_signal(ud, err, 0);
}

/* Ingest events first..first+n-1; 'flush': and wait until every job is done (applied),
 * else only until the batch is acknowledged (its log durable). */
static void ingest_events(engine *e, int first, int n, bool flush)
{
    Eddy__V1__Event *ev = calloc((size_t)n, sizeof(*ev));
    Eddy__V1__Event **evs = calloc((size_t)n, sizeof(*evs));
    char (*ids)[24] = calloc((size_t)n, sizeof(*ids));
    char (*users)[16] = calloc((size_t)n, sizeof(*users));
    char (*prods)[16] = calloc((size_t)n, sizeof(*prods));
    assert_true(ev && evs && ids && users && prods);
    for (int i = 0; i < n; i++) {
        int k = first + i;
        snprintf(ids[i], sizeof(ids[i]), "e%d", k);
        snprintf(users[i], sizeof(users[i]), "u%d", k % 23);
        snprintf(prods[i], sizeof(prods[i]), "p%d", (k * 7) % 31);
        eddy__v1__event__init(&ev[i]);
        ev[i].event_id = ids[i];
        ev[i].user_id = users[i];
        ev[i].timestamp_ms = T0 + (int64_t)k * 60000;
        ev[i].event_type = k % 5 == 0   ? EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE
                           : k % 3 == 0 ? EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART
                                        : EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
        ev[i].product_id = prods[i];
        ev[i].category = (char *)cats[k % 4];
        ev[i].price = 5 + k % 17;
        evs[i] = &ev[i];
    }
    struct completion acked;
    completion_init(&acked);
    assert_int_equal(completion_wait(&acked, engine_ingest(e, evs, (size_t)n, acked_fn, &acked)),
                     EDDY_OK);
    if (flush)
        engine_flush(e);
    free(ev);
    free(evs);
    free(ids);
    free(users);
    free(prods);
}

static void ingest_range(engine *e, int first, int n)
{
    ingest_events(e, first, n, true);
}

static void test_write_load_roundtrip(void **state)
{
    char *dir = tmpdir_for("ckp");
    char *edir = subdir(dir, "engine"), *fdir = subdir(dir, "fresh"), *cdir = subdir(dir, "ckp");
    struct engine_opts o = opts(edir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    ingest_range(e, 0, 400);

    uint32_t p = partition_of_user("u0", NPARTS);
    uint32_t q = (p + 1) % NPARTS;
    store *src = engine_store(e);
    struct part_meta m;
    assert_int_equal(apply_meta_load(src, p, &m), EDDY_OK);
    assert_true(m.next_seq > 10);

    struct checkpoint_info info;
    assert_int_equal(checkpoint_write_dir(NULL, src, p, cdir, &info), EDDY_OK);
    char want_path[CHECKPOINT_PATH_MAX];
    assert_int_equal(checkpoint_path(want_path, sizeof(want_path), cdir, p, m.next_seq), EDDY_OK);
    assert_string_equal(info.path, want_path);
    assert_int_equal(info.partition, p);
    assert_int_equal(info.seq, m.next_seq);
    assert_int_equal(info.bytes, file_size(info.path));
    assert_true(info.records > 20);
    char *src_dump = dump_filtered(src, (int)p);
    size_t lines = 0;
    for (const char *c = src_dump; *c; c++)
        lines += *c == '\n';
    assert_int_equal(lines, info.records);

    struct checkpoint_info vi;
    assert_int_equal(checkpoint_verify(NULL, info.path, &vi), EDDY_OK);
    assert_int_equal(vi.seq, info.seq);
    assert_int_equal(vi.records, info.records);
    assert_int_equal(vi.bytes, info.bytes);
    assert_int_equal(vi.crc, info.crc);
    assert_int_equal(vi.created_ms, info.created_ms);
    assert_int_equal(vi.version, CHECKPOINT_VERSION);

    /* a fresh store with stale keys in partition p and data in q and the partitions around */
    store *dst = open_store(fdir);
    struct store_key k;
    key_init(&k, p, T_USER);
    key_str(&k, "stale-user");
    put_raw(dst, &k, "old");
    key_init(&k, p, T_LATE);
    key_u64(&k, 999999);
    put_raw(dst, &k, "");
    key_init(&k, q, T_USER);
    key_str(&k, "someone");
    put_raw(dst, &k, "keep me");
    if (p > 0) {
        key_init(&k, p - 1, T_META);
        put_raw(dst, &k, "keep me too");
    }
    char *others_before = dump_filtered(dst, -(int)p - 1);
    assert_true(strlen(others_before) > 0);

    struct checkpoint_info li;
    assert_int_equal(checkpoint_load(NULL, dst, p, info.path, &li), EDDY_OK);
    assert_int_equal(li.seq, info.seq);
    assert_int_equal(li.records, info.records);
    char *dst_dump = dump_filtered(dst, (int)p);
    assert_string_equal(dst_dump, src_dump);
    char *others_after = dump_filtered(dst, -(int)p - 1);
    assert_string_equal(others_after, others_before);
    struct part_meta dm;
    assert_int_equal(apply_meta_load(dst, p, &dm), EDDY_OK);
    assert_int_equal(dm.next_seq, info.seq);
    assert_int_equal(dm.events, m.events);

    /* a file of partition p is refused for partition q, and nothing changes */
    char *q_before = dump_filtered(dst, (int)q);
    assert_int_equal(checkpoint_load(NULL, dst, q, info.path, NULL), EDDY_ERR_INVALID);
    char *q_after = dump_filtered(dst, (int)q);
    assert_string_equal(q_after, q_before);

    /* loading the same file again is idempotent */
    assert_int_equal(checkpoint_load(NULL, dst, p, info.path, NULL), EDDY_OK);
    free(dst_dump);
    dst_dump = dump_filtered(dst, (int)p);
    assert_string_equal(dst_dump, src_dump);

    /* an empty partition: checkpoint of a partition with no keys clears the target's */
    uint32_t empty = 7;
    char *bdir = subdir(dir, "blank");
    store *blank = open_store(bdir);
    free(bdir);
    struct checkpoint_info ei;
    char epath[CHECKPOINT_PATH_MAX];
    snprintf(epath, sizeof(epath), "%s/empty.ckp", dir);
    assert_int_equal(checkpoint_write(NULL, blank, empty, epath, &ei), EDDY_OK);
    assert_int_equal(ei.records, 0);
    assert_int_equal(ei.seq, 0);
    assert_int_equal(ei.bytes, CHECKPOINT_HEADER_LEN + CHECKPOINT_FOOTER_LEN);
    key_init(&k, empty, T_USER);
    key_str(&k, "x");
    put_raw(dst, &k, "gone soon");
    assert_int_equal(count_table(dst, empty, T_USER), 1);
    assert_int_equal(checkpoint_load(NULL, dst, empty, epath, NULL), EDDY_OK);
    char *ed = dump_filtered(dst, (int)empty);
    assert_string_equal(ed, "");
    free(ed);
    store_close(blank);

    free(q_before);
    free(q_after);
    free(others_before);
    free(others_after);
    free(dst_dump);
    free(src_dump);
    store_close(dst);
    engine_close(e);
    rmrf(dir);
    free(edir);
    free(fdir);
    free(cdir);
    free(dir);
}

/* ---- consistency while the writer commits ------------------------------------------- */

static int collect_seq(void *ud, const unsigned char *k, size_t klen, const char *v,
                       size_t vlen);

struct producer {
    engine *e;
    atomic_int stop;
    atomic_int batches;
};

static void *produce(void *arg)
{
    struct producer *pr = arg;
    int next = 400; /* after the events ingested before the producer starts */
    while (!atomic_load(&pr->stop) && next < 200000) {
        ingest_range(pr->e, next, 40);
        next += 40;
        atomic_fetch_add(&pr->batches, 1);
    }
    return NULL;
}

static void test_consistent_while_writing(void **state)
{
    char *dir = tmpdir_for("ckp");
    char *edir = subdir(dir, "engine"), *fdir = subdir(dir, "fresh");
    struct engine_opts o = opts(edir);
    o.apply.log_retention_ms = 2 * 3600000LL; /* the log's front moves too */
    o.apply.dedup_window_ms = 3600000LL;      /* (the log is kept for the dedup window too) */
    o.max_group_events = 40;
    o.flush_interval_ms = 5; /* flushes race the checkpoints' copies of the rows behind */
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    ingest_range(e, 0, 400);

    uint32_t p = partition_of_user("u0", NPARTS);
    store *dst = open_store(fdir);
    struct producer pr = {.e = e};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, produce, &pr), 0);

    enum { ROUNDS = 12 };
    uint64_t seqs[ROUNDS];
    int distinct = 0;
    bool front_moved = false;
    for (int i = 0; i < ROUNDS; i++) {
        /* let some commits land between checkpoints */
        int b0 = atomic_load(&pr.batches);
        while (atomic_load(&pr.batches) < b0 + 2)
            usleep(1000);
        char path[512];
        snprintf(path, sizeof(path), "%s/c%d.ckp", dir, i);
        struct checkpoint_info info;
        assert_int_equal(checkpoint_write(NULL, engine_store(e), p, path, &info), EDDY_OK);
        seqs[i] = info.seq;
        if (i == 0 || seqs[i] != seqs[i - 1])
            distinct++;
        assert_int_equal(checkpoint_load(NULL, dst, p, path, NULL), EDDY_OK);
        struct part_meta m;
        assert_int_equal(apply_meta_load(dst, p, &m), EDDY_OK);
        assert_int_equal(m.next_seq, info.seq);
        /* the log records [log_first_seq, end) are in the file, with no gap: end is
         * next_seq, or past it by the records appended and not yet applied when the
         * snapshot was taken (a restore applies them: test_restore_applies_the_log_tail) */
        uint64_t n = count_table(dst, p, T_LOG), last = 0;
        struct store_key ls, le;
        key_init(&ls, p, T_LOG);
        key_prefix_end(&ls, &le);
        assert_int_equal(store_scan(dst, &ls, &le, collect_seq, &last), EDDY_OK);
        assert_true(n >= m.next_seq - m.log_first_seq);
        if (n > 0)
            assert_int_equal(last + 1 - m.log_first_seq, n);
        front_moved |= m.log_first_seq > 0;
        unlink(path);
    }
    atomic_store(&pr.stop, 1);
    pthread_join(th, NULL);
    assert_true(distinct >= ROUNDS / 2); /* the checkpoints really raced the writer */
    assert_true(front_moved);

    store_close(dst);
    engine_close(e);
    rmrf(dir);
    free(edir);
    free(fdir);
    free(dir);
}

/* ---- corruption ------------------------------------------------------------------------ */

/* A small store with a few keys in partitions 2 and 3; partition 3 has META next_seq. */
/* Records appended and acknowledged but not yet applied when a checkpoint is taken are
 * in its log (and in its DEDUP rows): a restore applies them, so the restored partition
 * equals its source once that applied them too, and the next append goes after them.
 * Without it the next appends overwrote them and a re-send of their events was a
 * "duplicate" of events no state held. */
static void restored(void *ud, eddy_err err, uint32_t p, uint64_t next_seq)
{
    (void)p;
    uint64_t *out = ud;
    *out = err == EDDY_OK ? next_seq : UINT64_MAX;
}

/* 'dump' (a dump_filtered result, freed) without the stage-2 tables, which --dev's other
 * partitions write into too (their events' products, and the marks of what of theirs
 * was applied): what partition p's log alone determines. */
static char *stage1_of(char *dump)
{
    char *res = NULL;
    size_t rlen = 0;
    FILE *r = open_memstream(&res, &rlen);
    char *save = NULL;
    for (char *line = strtok_r(dump, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char hex[3] = {line[4], line[5], 0};
        long t = strtol(hex, NULL, 16);
        if (t != T_PRODUCT && t != T_PROD_WIN && t != T_CAT_POP && t != T_COOC && t != T_S2_HW)
            fprintf(r, "%s\n", line);
    }
    fclose(r);
    free(dump);
    return res;
}

static void test_restore_applies_the_log_tail(void **state)
{
    char *dir = tmpdir_for("ckp");
    char *adir = subdir(dir, "a"), *bdir = subdir(dir, "b");
    struct engine_opts oa = opts(adir), ob = opts(bdir);
    engine *a = NULL, *b = NULL;
    char err[256];
    assert_int_equal(engine_open(&oa, &a, err, sizeof(err)), EDDY_OK);
    assert_int_equal(engine_open(&ob, &b, err, sizeof(err)), EDDY_OK);
    ingest_range(a, 0, 200);
    uint32_t p = partition_of_user("u0", NPARTS);
    struct part_meta before;
    assert_int_equal(apply_meta_load(engine_store(a), p, &before), EDDY_OK);
    engine_hold_apply(a, true);
    ingest_events(a, 200, 40, false); /* acknowledged: its log is durable; not applied */
    char path[512];
    snprintf(path, sizeof(path), "%s/held.ckp", dir);
    struct checkpoint_info info;
    assert_int_equal(checkpoint_write(NULL, engine_store(a), p, path, &info), EDDY_OK);
    assert_int_equal(info.seq, before.next_seq); /* META: what was applied */
    engine_hold_apply(a, false);
    engine_flush(a);
    struct engine_partition_view va;
    engine_partition(a, p, &va);
    assert_true(va.next_seq > info.seq); /* the file holds log records past its META */

    uint64_t got = 0;
    assert_int_equal(engine_restore(b, p, path, restored, &got), EDDY_OK);
    engine_flush(b);
    assert_int_equal(got, va.next_seq);
    char *da = stage1_of(dump_filtered(engine_store(a), (int)p));
    char *db = stage1_of(dump_filtered(engine_store(b), (int)p));
    assert_string_equal(da, db);
    free(da);
    free(db);
    engine_close(a);
    engine_close(b);
    rmrf(dir);
    free(adir);
    free(bdir);
    free(dir);
}

static store *small_store(const char *path)
{
    store *s = open_store(path);
    struct store_key k;
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "user-%d", i);
        key_init(&k, 3, T_USER);
        key_str(&k, id);
        put_raw(s, &k, i % 2 ? "some value bytes" : "");
        key_init(&k, 2, T_USER);
        key_str(&k, id);
        put_raw(s, &k, "other partition");
    }
    key_init(&k, 3, T_LOG);
    key_u64(&k, 41);
    put_raw(s, &k, "log record");
    put_meta(s, 3, 42);
    return s;
}

/* A store whose partition 3 holds one user, "resident": a refused load must leave it. */
static store *resident_store(const char *path)
{
    store *dst = open_store(path);
    struct store_key k;
    key_init(&k, 3, T_USER);
    key_str(&k, "resident");
    put_raw(dst, &k, "still here");
    return dst;
}

static void test_corruption_detected(void **state)
{
    char *dir = tmpdir_for("ckp");
    char *sdir = subdir(dir, "db"), *ddir = subdir(dir, "dst");
    store *s = small_store(sdir);
    char path[512];
    snprintf(path, sizeof(path), "%s/p3.ckp", dir);
    struct checkpoint_info info;
    assert_int_equal(checkpoint_write(NULL, s, 3, path, &info), EDDY_OK);
    assert_int_equal(info.seq, 42);
    assert_int_equal(info.records, 7); /* 5 users, 1 log, 1 meta */
    size_t n;
    unsigned char *good = read_all(path, &n);
    assert_int_equal(n, info.bytes);
    assert_memory_equal(good, CHECKPOINT_MAGIC, 8);

    /* the loaded target must not change when a load is refused */
    store *dst = resident_store(ddir);
    char *dst_before = dump_filtered(dst, 3);

    /* every single flipped byte: header, records, footer */
    for (size_t off = 0; off < n; off++) {
        unsigned char *bad = malloc(n);
        memcpy(bad, good, n);
        bad[off] ^= (unsigned char)(off % 7 == 3 ? 0x80 : 0x01);
        write_all(path, bad, n);
        free(bad);
        if (checkpoint_verify(NULL, path, NULL) != EDDY_ERR_CORRUPT)
            fail_msg("flipped byte at offset %zu of %zu not detected", off, n);
        if (off == 0 || off == 40 || off == n - 1)
            assert_int_equal(checkpoint_load(NULL, dst, 3, path, NULL), EDDY_ERR_CORRUPT);
    }
    /* every truncation, down to an empty file */
    for (size_t len = 0; len < n; len++) {
        write_all(path, good, len);
        if (checkpoint_verify(NULL, path, NULL) != EDDY_ERR_CORRUPT)
            fail_msg("truncation to %zu of %zu bytes not detected", len, n);
    }
    assert_int_equal(checkpoint_load(NULL, dst, 3, path, NULL), EDDY_ERR_CORRUPT);
    char *dst_after = dump_filtered(dst, 3);
    assert_string_equal(dst_after, dst_before);

    /* trailing garbage */
    unsigned char *longer = calloc(1, n + 3);
    memcpy(longer, good, n);
    write_all(path, longer, n + 3);
    assert_int_equal(checkpoint_verify(NULL, path, NULL), EDDY_ERR_CORRUPT);
    free(longer);

    /* huge length fields are refused before any allocation or read */
    unsigned char crafted[CHECKPOINT_HEADER_LEN + 64];
    memset(crafted, 0, sizeof(crafted));
    memcpy(crafted, good, CHECKPOINT_HEADER_LEN);
    memset(crafted + CHECKPOINT_HEADER_LEN, 0xff, 4); /* klen = 4 GiB - 1 */
    write_all(path, crafted, sizeof(crafted));
    assert_int_equal(checkpoint_verify(NULL, path, NULL), EDDY_ERR_CORRUPT);
    unsigned char *c2 = crafted + CHECKPOINT_HEADER_LEN;
    c2[0] = 3; c2[1] = 0; c2[2] = 0; c2[3] = 0;      /* klen 3 */
    c2[4] = 0; c2[5] = 3; c2[6] = T_USER;             /* key of partition 3 */
    c2[7] = 0xf0; c2[8] = 0xff; c2[9] = 0xff; c2[10] = 0x7f; /* vlen ~ 2 GiB */
    write_all(path, crafted, sizeof(crafted));
    assert_int_equal(checkpoint_verify(NULL, path, NULL), EDDY_ERR_CORRUPT);
    /* random garbage of several sizes */
    uint32_t x = 7;
    for (size_t len = 1; len < 400; len += 37) {
        unsigned char g[400];
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            g[i] = (unsigned char)(x >> 16);
        }
        if (len > 12)
            memcpy(g, good, 12); /* magic and version right, the rest garbage */
        write_all(path, g, len);
        assert_int_equal(checkpoint_verify(NULL, path, NULL), EDDY_ERR_CORRUPT);
    }

    /* the intact file is fine again; a missing one is NOT_FOUND */
    write_all(path, good, n);
    assert_int_equal(checkpoint_verify(NULL, path, NULL), EDDY_OK);
    assert_int_equal(checkpoint_load(NULL, dst, 3, path, NULL), EDDY_OK);
    assert_int_equal(count_table(dst, 3, T_USER), 5); /* "resident" replaced */
    unlink(path);
    assert_int_equal(checkpoint_verify(NULL, path, NULL), EDDY_ERR_NOT_FOUND);

    free(dst_before);
    free(dst_after);
    free(good);
    store_close(dst);
    store_close(s);
    rmrf(dir);
    free(sdir);
    free(ddir);
    free(dir);
}

static void test_replace_range_contract(void **state)
{
    char *dir = tmpdir_for("ckp");
    store *s = open_store(dir);
    struct store_key start, end, k;
    start.len = 0;
    key_u16(&start, 4);
    key_prefix_end(&start, &end);
    store_batch *b = store_batch_new();
    key_init(&k, 4, T_USER);
    key_str(&k, "in");
    assert_int_equal(store_batch_put(b, k.buf, k.len, "v", 1), EDDY_OK);
    key_init(&k, 5, T_USER);
    key_str(&k, "out");
    assert_int_equal(store_batch_put(b, k.buf, k.len, "v", 1), EDDY_OK);
    assert_int_equal(store_batch_put(b, k.buf, 0, "v", 1), EDDY_ERR_INVALID);
    assert_int_equal(store_batch_count(b), 2);
    uint64_t deleted = 7;
    assert_int_equal(store_replace_range(s, &start, &end, b, &deleted), EDDY_ERR_INVALID);
    assert_int_equal(count_table(s, 4, T_USER), 0); /* nothing written */
    store_batch_free(b);
    store_batch_free(NULL);
    store_snapshot_free(NULL);
    store_close(s);
    rmrf(dir);
    free(dir);
}

/* A snapshot does not see what is committed after it: the META it reads and the records it
 * scans are of one moment (checkpoint_write reads both through one snapshot). Note that a
 * LevelDB iterator alone is already a point-in-time view; the snapshot is what ties the
 * separate META read to the scan. */
static int collect_seq(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    size_t off = 3;
    uint64_t seq = 0;
    assert_true(key_get_u64(k, klen, &off, &seq));
    *(uint64_t *)ud = seq;
    return 0;
}

static void test_snapshot_isolated(void **state)
{
    char *dir = tmpdir_for("ckp");
    store *s = open_store(dir);
    struct store_key k, start, end;
    put_meta(s, 1, 1);
    key_init(&k, 1, T_LOG);
    key_u64(&k, 0);
    put_raw(s, &k, "r0");

    store_snapshot *snap = store_snapshot_new(s);
    assert_non_null(snap);
    put_meta(s, 1, 2); /* committed after the snapshot */
    key_init(&k, 1, T_LOG);
    key_u64(&k, 1);
    put_raw(s, &k, "r1");

    key_init(&k, 1, T_META);
    Eddy__Store__V1__PartitionMeta *pm = NULL;
    assert_int_equal(store_snapshot_get_msg(snap, &k, &eddy__store__v1__partition_meta__descriptor,
                                            (ProtobufCMessage **)&pm),
                     EDDY_OK);
    assert_non_null(pm);
    assert_int_equal(pm->next_seq, 1);
    protobuf_c_message_free_unpacked(&pm->base, NULL);
    key_init(&start, 1, T_LOG);
    key_prefix_end(&start, &end);
    uint64_t last = 99;
    assert_int_equal(store_snapshot_scan(snap, &start, &end, collect_seq, &last), EDDY_OK);
    assert_int_equal(last, 0);
    assert_int_equal(store_scan(s, &start, &end, collect_seq, &last), EDDY_OK);
    assert_int_equal(last, 1); /* the live view has it */
    key_init(&k, 1, T_USER);
    key_str(&k, "absent");
    assert_int_equal(store_snapshot_get_msg(snap, &k, &eddy__store__v1__user_model__descriptor,
                                            (ProtobufCMessage **)&pm),
                     EDDY_OK);
    assert_null(pm);
    store_snapshot_free(snap);
    store_close(s);
    rmrf(dir);
    free(dir);
}

/* A snapshot of one partition's range (what a checkpoint takes) with rows still behind in
 * the dirty set: it answers from the dirty set's values as of its start, deletes
 * included, merged with LevelDB's, writes nothing, and holds its view across later
 * writes and flushes; keys outside its range are refused. */
static int collect_vals(void *ud, const unsigned char *k, size_t klen, const char *v,
                        size_t vlen)
{
    (void)k;
    (void)klen;
    FILE *f = ud;
    fprintf(f, "%.*s;", (int)vlen, v);
    return 0;
}

static char *scan_vals(store_snapshot *snap, store *s, const struct store_key *start,
                       const struct store_key *end)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(snap ? store_snapshot_scan(snap, start, end, collect_vals, f)
                          : store_scan(s, start, end, collect_vals, f),
                     EDDY_OK);
    fclose(f);
    return buf;
}

static void user_key(struct store_key *k, uint32_t p, const char *id)
{
    key_init(k, p, T_USER);
    key_str(k, id);
}

static void test_range_snapshot_of_rows_behind(void **state)
{
    char *dir = tmpdir_for("ckp");
    store *s = open_store(dir);
    struct store_key a, b, c, other, start, end;
    user_key(&a, 1, "a");
    user_key(&b, 1, "b");
    user_key(&c, 1, "c");
    user_key(&other, 2, "x");
    put_raw(s, &a, "a0"); /* in LevelDB */
    put_raw(s, &b, "b0");
    store_set_behind(s, UINT32_C(1) << T_USER);
    put_raw(s, &a, "a1"); /* behind, in the dirty set */
    put_raw(s, &c, "c1");
    store_txn *t = store_txn_new(s);
    assert_int_equal(store_txn_del(t, &b), EDDY_OK);
    assert_int_equal(store_txn_commit(t, false), EDDY_OK);
    store_txn_free(t);
    assert_true(store_dirty_bytes(s) > 0);
    uint64_t flushes = store_flush_count(s);

    key_init(&start, 1, T_USER);
    key_prefix_end(&start, &end);
    struct store_key pstart = {0}, pend;
    key_u16(&pstart, 1);
    key_prefix_end(&pstart, &pend);
    store_snapshot *snap = store_snapshot_new_range(s, &pstart, &pend);
    assert_non_null(snap);
    assert_int_equal(store_flush_count(s), flushes); /* nothing written for it */

    put_raw(s, &a, "a2"); /* after the snapshot: behind, then flushed */
    put_raw(s, &b, "b2");
    assert_int_equal(store_flush(s), EDDY_OK);
    put_raw(s, &c, "c3");

    char *got = scan_vals(snap, s, &start, &end);
    assert_string_equal(got, "a1;c1;");
    free(got);
    got = scan_vals(NULL, s, &start, &end);
    assert_string_equal(got, "a2;b2;c3;"); /* the live view */
    free(got);
    Eddy__Store__V1__UserModel *um = NULL;
    assert_int_equal(store_snapshot_get_msg(snap, &b, &eddy__store__v1__user_model__descriptor,
                                            (ProtobufCMessage **)&um),
                     EDDY_OK);
    assert_null(um); /* deleted behind, before the snapshot */
    assert_int_equal(store_snapshot_get_msg(snap, &other, &eddy__store__v1__user_model__descriptor,
                                            (ProtobufCMessage **)&um),
                     EDDY_ERR_INVALID);
    struct store_key ostart, oend;
    key_init(&ostart, 2, T_USER);
    key_prefix_end(&ostart, &oend);
    assert_int_equal(store_snapshot_scan(snap, &ostart, &oend, collect_vals, NULL),
                     EDDY_ERR_INVALID);
    store_snapshot_free(snap);
    store_close(s);
    rmrf(dir);
    free(dir);
}

/* A checkpoint of a partition whose rows are still behind (write-behind, never flushed by
 * time) writes nothing to LevelDB and holds the partition as flushed: loaded into a fresh
 * store, it dumps byte for byte what the source holds once flushed. */
static void test_checkpoint_of_rows_behind(void **state)
{
    char *dir = tmpdir_for("ckp");
    char *edir = subdir(dir, "engine"), *fdir = subdir(dir, "fresh"), *cdir = subdir(dir, "ckp");
    struct engine_opts o = opts(edir);
    o.flush_interval_ms = 3600000;
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    ingest_range(e, 0, 400);

    uint32_t p = partition_of_user("u0", NPARTS);
    store *src = engine_store(e);
    assert_true(store_dirty_bytes(src) > 0);
    uint64_t flushes = store_flush_count(src);
    struct checkpoint_info info;
    assert_int_equal(checkpoint_write_dir(NULL, src, p, cdir, &info), EDDY_OK);
    assert_int_equal(store_flush_count(src), flushes);
    assert_true(store_dirty_bytes(src) > 0);

    store *dst = open_store(fdir);
    assert_int_equal(checkpoint_load(NULL, dst, p, info.path, NULL), EDDY_OK);
    struct part_meta m;
    assert_int_equal(apply_meta_load(dst, p, &m), EDDY_OK);
    assert_int_equal(m.next_seq, info.seq);
    assert_true(info.seq > 10);
    char *want = dump_filtered(src, (int)p); /* flushes the source first */
    char *got = dump_filtered(dst, (int)p);
    assert_string_equal(got, want);
    free(want);
    free(got);

    store_close(dst);
    engine_close(e);
    rmrf(dir);
    free(edir);
    free(fdir);
    free(cdir);
    free(dir);
}

/* ---- directories: list, latest_valid, prune -------------------------------------------- */

static void flip(const char *path, size_t off)
{
    size_t n;
    unsigned char *b = read_all(path, &n);
    assert_true(off < n);
    b[off] ^= 0x20;
    write_all(path, b, n);
    free(b);
}

static void touch(const char *path)
{
    write_all(path, (const unsigned char *)"x", 1);
}

static void test_latest_valid_and_prune(void **state)
{
    char *dir = tmpdir_for("ckp");
    char *sdir = subdir(dir, "db"), *cdir = subdir(dir, "ckp");
    store *s = small_store(sdir);
    struct checkpoint_info info;
    struct checkpoint_file *files = NULL;
    size_t n = 0;

    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 3, &info), EDDY_ERR_NOT_FOUND); /* no dir */
    assert_int_equal(checkpoint_list(cdir, 3, &files, &n), EDDY_OK);
    assert_int_equal(n, 0);

    for (uint64_t seq = 10; seq <= 40; seq += 10) {
        put_meta(s, 3, seq);
        assert_int_equal(checkpoint_write_dir(NULL, s, 3, cdir, &info), EDDY_OK);
        assert_int_equal(info.seq, seq);
    }
    put_meta(s, 2, 5);
    assert_int_equal(checkpoint_write_dir(NULL, s, 2, cdir, &info), EDDY_OK); /* another partition */
    char other[CHECKPOINT_PATH_MAX], stray[CHECKPOINT_PATH_MAX], tmp[CHECKPOINT_PATH_MAX];
    snprintf(other, sizeof(other), "%s", info.path);
    snprintf(stray, sizeof(stray), "%s/notes.txt", cdir);
    touch(stray);
    assert_int_equal(checkpoint_path(tmp, sizeof(tmp), cdir, 3, 50), EDDY_OK);
    size_t tl = strlen(tmp);
    snprintf(tmp + tl, sizeof(tmp) - tl, ".tmp"); /* an interrupted write */
    touch(tmp);

    assert_int_equal(checkpoint_list(cdir, 3, &files, &n), EDDY_OK);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(files[i].seq, 40 - 10 * i);
    char p40[CHECKPOINT_PATH_MAX], p30[CHECKPOINT_PATH_MAX], p20[CHECKPOINT_PATH_MAX],
        p10[CHECKPOINT_PATH_MAX];
    snprintf(p40, sizeof(p40), "%s", files[0].path);
    snprintf(p30, sizeof(p30), "%s", files[1].path);
    snprintf(p20, sizeof(p20), "%s", files[2].path);
    snprintf(p10, sizeof(p10), "%s", files[3].path);
    free(files);

    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 3, &info), EDDY_OK);
    assert_int_equal(info.seq, 40);
    assert_string_equal(info.path, p40);

    /* the newest is corrupt: the previous one is used; then the one before */
    flip(p40, 50);
    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 3, &info), EDDY_OK);
    assert_int_equal(info.seq, 30);
    assert_string_equal(info.path, p30);
    flip(p30, 10);
    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 3, &info), EDDY_OK);
    assert_int_equal(info.seq, 20);

    /* prune keep 2 with both kept files corrupt: the newest valid one (20) survives too */
    size_t removed = 99;
    assert_int_equal(checkpoint_prune(NULL, cdir, 3, 2, &removed), EDDY_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(access(p10, F_OK), -1);
    assert_int_equal(access(p20, F_OK), 0);
    assert_int_equal(access(tmp, F_OK), -1);   /* leftover removed */
    assert_int_equal(access(other, F_OK), 0);  /* other partitions untouched */
    assert_int_equal(access(stray, F_OK), 0);

    /* a new valid checkpoint: prune keep 2 keeps 50 and 40 only */
    put_meta(s, 3, 50);
    assert_int_equal(checkpoint_write_dir(NULL, s, 3, cdir, &info), EDDY_OK);
    assert_int_equal(checkpoint_prune(NULL, cdir, 3, 2, &removed), EDDY_OK);
    assert_int_equal(removed, 2);
    assert_int_equal(checkpoint_list(cdir, 3, &files, &n), EDDY_OK);
    assert_int_equal(n, 2);
    assert_int_equal(files[0].seq, 50);
    assert_int_equal(files[1].seq, 40);
    free(files);
    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 3, &info), EDDY_OK);
    assert_int_equal(info.seq, 50);

    /* keep 1 after more checkpoints; keep 0 removes everything; bad keep refused */
    for (uint64_t seq = 60; seq <= 80; seq += 10) {
        put_meta(s, 3, seq);
        assert_int_equal(checkpoint_write_dir(NULL, s, 3, cdir, NULL), EDDY_OK);
    }
    assert_int_equal(checkpoint_prune(NULL, cdir, 3, 1, &removed), EDDY_OK);
    assert_int_equal(removed, 4);
    assert_int_equal(checkpoint_list(cdir, 3, &files, &n), EDDY_OK);
    assert_int_equal(n, 1);
    assert_int_equal(files[0].seq, 80);
    free(files);
    assert_int_equal(checkpoint_prune(NULL, cdir, 3, -1, NULL), EDDY_ERR_INVALID);
    assert_int_equal(checkpoint_prune(NULL, cdir, 3, 0, &removed), EDDY_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 3, &info), EDDY_ERR_NOT_FOUND);
    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 2, &info), EDDY_OK);
    assert_int_equal(info.seq, 5);

    store_close(s);
    rmrf(dir);
    free(sdir);
    free(cdir);
    free(dir);
}

/* checkpoint_stream: a move's source. */
struct membuf {
    unsigned char *b;
    size_t n, cap, calls;
};

static eddy_err to_mem(void *ud, const void *buf, size_t n)
{
    struct membuf *m = ud;
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->b = realloc(m->b, m->cap);
    }
    memcpy(m->b + m->n, buf, n);
    m->n += n;
    m->calls++;
    return EDDY_OK;
}

/* What a reader handed out: the records and a CRC-32C over their keys and values (the
 * same whether a field arrived whole in one piece and was handed out in place, or was
 * gathered from several). */
struct rec_digest {
    uint64_t records;
    uint32_t crc;
};

static eddy_err digest_rec(void *ud, const unsigned char *key, size_t klen,
                           const unsigned char *val, size_t vlen)
{
    struct rec_digest *d = ud;
    d->records++;
    d->crc = crc32c_update(d->crc, key, klen);
    d->crc = crc32c_update(d->crc, val, vlen);
    return EDDY_OK;
}

/* Feed 'b' to a fresh reader in pieces of 'step' bytes; the result of finish. */
static eddy_err read_in_pieces_with(const struct ckptkey *key, const unsigned char *b, size_t n,
                                    size_t step, struct rec_digest *d,
                                    struct checkpoint_info *out)
{
    *d = (struct rec_digest){0, 0};
    checkpoint_reader *r = checkpoint_reader_new(key, "test", digest_rec, d);
    assert_non_null(r);
    eddy_err err = EDDY_OK;
    for (size_t off = 0; off < n && err == EDDY_OK; off += step) {
        /* each piece is borrowed for the call only: scribbled over and freed after it */
        size_t len = n - off < step ? n - off : step;
        unsigned char *piece = malloc(len);
        assert_non_null(piece);
        memcpy(piece, b + off, len);
        err = checkpoint_reader_feed(r, piece, len);
        memset(piece, 0xa5, len);
        free(piece);
    }
    if (err == EDDY_OK)
        err = checkpoint_reader_finish(r, out);
    checkpoint_reader_free(r);
    return err;
}

static eddy_err read_in_pieces(const unsigned char *b, size_t n, size_t step,
                               struct rec_digest *d, struct checkpoint_info *out)
{
    return read_in_pieces_with(NULL, b, n, step, d, out);
}

/* The stream is the file's format byte for byte (created_ms aside), and the incremental
 * reader accepts it in any pieces and refuses every flipped byte and every truncation. */
static void test_stream_and_incremental_reader(void **state)
{
    (void)state;
    char *dir = tmpdir_for("ckp");
    char *sdir = subdir(dir, "db");
    store *s = small_store(sdir);
    char path[512];
    snprintf(path, sizeof(path), "%s/p3.ckp", dir);
    struct checkpoint_info fi, si, ri;
    assert_int_equal(checkpoint_write(NULL, s, 3, path, &fi), EDDY_OK);
    struct membuf m = {0};
    assert_int_equal(checkpoint_stream(NULL, s, 3, to_mem, &m, &si), EDDY_OK);
    assert_int_equal(si.bytes, m.n);
    assert_int_equal(si.bytes, fi.bytes);
    assert_int_equal(si.records, fi.records);
    assert_int_equal(si.seq, fi.seq);
    size_t fn;
    unsigned char *file = read_all(path, &fn);
    assert_int_equal(fn, m.n);
    /* equal but for the creation time in the header (and so the CRC) */
    assert_memory_equal(file, m.b, 16);
    assert_memory_equal(file + 24, m.b + 24, m.n - 24 - 4);

    struct rec_digest whole, recs;
    assert_int_equal(read_in_pieces(m.b, m.n, m.n, &whole, &ri), EDDY_OK);
    assert_int_equal(whole.records, si.records);
    for (size_t step = 1; step <= m.n; step = step * 3 + 1) {
        assert_int_equal(read_in_pieces(m.b, m.n, step, &recs, &ri), EDDY_OK);
        assert_int_equal(recs.records, si.records);
        assert_int_equal(recs.crc, whole.crc);
        assert_int_equal(ri.records, si.records);
        assert_int_equal(ri.crc, si.crc);
        assert_int_equal(ri.seq, 42);
        assert_int_equal(ri.bytes, m.n);
    }
    /* in small pieces (fields gathered) and in one (fields used where they lie) */
    for (size_t off = 0; off < m.n; off++) {
        m.b[off] ^= 0x10;
        if (read_in_pieces(m.b, m.n, 5, &recs, NULL) != EDDY_ERR_CORRUPT ||
            read_in_pieces(m.b, m.n, m.n, &recs, NULL) != EDDY_ERR_CORRUPT)
            fail_msg("flipped byte at offset %zu of %zu not detected", off, m.n);
        m.b[off] ^= 0x10;
    }
    for (size_t len = 0; len < m.n; len++) {
        if (read_in_pieces(m.b, len, 7, &recs, NULL) != EDDY_ERR_CORRUPT ||
            read_in_pieces(m.b, len, len ? len : 1, &recs, NULL) != EDDY_ERR_CORRUPT)
            fail_msg("truncation to %zu of %zu bytes not detected", len, m.n);
    }
    /* and bytes after the footer */
    unsigned char *longer = malloc(m.n + 1);
    memcpy(longer, m.b, m.n);
    longer[m.n] = 0;
    assert_int_equal(read_in_pieces(longer, m.n + 1, 64, &recs, NULL), EDDY_ERR_CORRUPT);
    assert_int_equal(read_in_pieces(longer, m.n + 1, m.n + 1, &recs, NULL), EDDY_ERR_CORRUPT);
    free(longer);
    free(file);
    free(m.b);
    store_close(s);
    rmrf(dir);
    free(sdir);
    free(dir);
}

/* ---- encryption ---------------------------------------------------------------------- */

#define SECRET_USER "user-secret-4711-zq"

static void key_of(unsigned char fill, struct ckptkey *k)
{
    unsigned char raw[CKPTKEY_LEN];
    char why[128];
    memset(raw, fill, sizeof(raw));
    assert_int_equal(ckptkey_parse(raw, sizeof(raw), k, why, sizeof(why)), EDDY_OK);
}

/* small_store, and in partition 3 the secret user and enough bytes for several chunks */
static store *secret_store(const char *path)
{
    store *s = small_store(path);
    struct store_key k;
    key_init(&k, 3, T_USER);
    key_str(&k, SECRET_USER);
    put_raw(s, &k, "bought p42 for " SECRET_USER);
    char val[1001];
    memset(val, 'v', 1000);
    val[1000] = '\0';
    store_txn *t = store_txn_new(s);
    for (int i = 0; i < 900; i++) { /* ~0.9 MB: 4 chunks of up to 256 KiB */
        key_init(&k, 3, T_USER_LOG);
        key_u64(&k, (uint64_t)i);
        assert_int_equal(store_txn_put(t, &k, val, 1000), EDDY_OK);
    }
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    store_txn_free(t);
    return s;
}

/* checkpoint_verify, and whether its log lines (stderr) contain 'reason': a reordered or
 * transplanted chunk must fail its own tag, not only a later check of the plain bytes. */
static eddy_err verify_logs(const struct ckptkey *key, const char *path, const char *dir,
                            const char *reason, bool *found)
{
    char logpath[512];
    snprintf(logpath, sizeof(logpath), "%s/stderr.log", dir);
    fflush(stderr);
    int saved = dup(2);
    int fd = open(logpath, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    eddy_err err = checkpoint_verify(key, path, NULL);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    size_t n;
    unsigned char *text = read_all(logpath, &n);
    *found = memmem(text, n, reason, strlen(reason)) != NULL;
    free(text);
    return err;
}

/* Where each chunk of an encrypted file starts (after the 32-byte header); their count. */
static size_t chunk_offsets(const unsigned char *b, size_t n, size_t *offs, size_t max)
{
    size_t c = 0, off = CHECKPOINT_HEADER_LEN;
    while (off + 4 <= n && c < max) {
        uint32_t lenf = (uint32_t)b[off] | (uint32_t)b[off + 1] << 8 |
                        (uint32_t)b[off + 2] << 16 | (uint32_t)b[off + 3] << 24;
        offs[c++] = off;
        off += 4 + CKPTKEY_NONCE_LEN + (lenf & 0x7fffffffu) + CKPTKEY_TAG_LEN;
        if (lenf & 0x80000000u)
            break;
    }
    assert_int_equal(off, n);
    return c;
}

/* An encrypted checkpoint holds no plain byte of the partition, loads only with its key,
 * and any other key, a missing key, a plain file read with a key, a changed, cut, reordered
 * or transplanted chunk is an error: never a load. */
static void test_encrypted(void **state)
{
    (void)state;
    char *dir = tmpdir_for("ckp");
    char *sdir = subdir(dir, "db"), *ddir = subdir(dir, "dst"), *cdir = subdir(dir, "ckp");
    char *pdir = subdir(dir, "plain");
    struct ckptkey ka, kb;
    key_of(0x11, &ka);
    key_of(0x22, &kb);
    store *s = secret_store(sdir);
    char *src_dump = dump_filtered(s, 3);

    /* the plain file holds the user id (so the scan below can find one) */
    assert_int_equal(mkdir(pdir, 0755), 0);
    struct checkpoint_info pi, ei, vi;
    assert_int_equal(checkpoint_write_dir(NULL, s, 3, pdir, &pi), EDDY_OK);
    assert_false(pi.encrypted);
    size_t pn, n;
    unsigned char *plain = read_all(pi.path, &pn);
    assert_non_null(memmem(plain, pn, SECRET_USER, strlen(SECRET_USER)));

    assert_int_equal(checkpoint_write_dir(&ka, s, 3, cdir, &ei), EDDY_OK);
    assert_true(ei.encrypted);
    assert_int_equal(ei.records, pi.records);
    assert_int_equal(ei.seq, 42);
    unsigned char *enc = read_all(ei.path, &n);
    assert_int_equal(ei.bytes, n);
    assert_memory_equal(enc, CHECKPOINT_MAGIC_ENCRYPTED, 8);
    assert_memory_equal(enc + 16, ka.id, CKPTKEY_ID_LEN);
    /* the byte scan: no user id, no value, no key prefix of the records in the clear */
    assert_null(memmem(enc, n, SECRET_USER, strlen(SECRET_USER)));
    assert_null(memmem(enc, n, "user-1", 6));
    assert_null(memmem(enc, n, "bought", 6));
    assert_null(memmem(enc, n, "vvvvvvvv", 8));
    size_t offs[16];
    size_t chunks = chunk_offsets(enc, n, offs, 16);
    assert_true(chunks >= 4);

    /* round trip: verify and load with the key */
    assert_int_equal(checkpoint_verify(&ka, ei.path, &vi), EDDY_OK);
    assert_true(vi.encrypted);
    assert_int_equal(vi.records, ei.records);
    assert_int_equal(vi.bytes, n);
    assert_int_equal(vi.crc, ei.crc);
    store *dst = resident_store(ddir);
    char *dst_before = dump_filtered(dst, 3);
    assert_int_equal(checkpoint_load(&ka, dst, 3, ei.path, NULL), EDDY_OK);
    char *dst_dump = dump_filtered(dst, 3);
    assert_string_equal(dst_dump, src_dump);
    free(dst_dump);

    /* key mismatches are EDDY_ERR_KEY, and nothing is loaded */
    struct store_key k;
    key_init(&k, 3, T_USER);
    key_str(&k, "resident");
    put_raw(dst, &k, "still here");
    char *dst_mid = dump_filtered(dst, 3);
    assert_int_equal(checkpoint_verify(&kb, ei.path, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_verify(NULL, ei.path, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_verify(&ka, pi.path, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_load(&kb, dst, 3, ei.path, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_load(NULL, dst, 3, ei.path, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_load(&ka, dst, 3, pi.path, NULL), EDDY_ERR_KEY);
    dst_dump = dump_filtered(dst, 3);
    assert_string_equal(dst_dump, dst_mid);
    free(dst_dump);
    /* ... and the newest checkpoint of another key stops latest_valid: no silent fallback
     * to "none", which would restore an empty partition */
    assert_int_equal(checkpoint_latest_valid(&kb, cdir, 3, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_latest_valid(NULL, cdir, 3, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_latest_valid(&ka, pdir, 3, NULL), EDDY_ERR_KEY);
    assert_int_equal(checkpoint_latest_valid(&ka, cdir, 3, &vi), EDDY_OK);
    assert_string_equal(vi.path, ei.path);
    /* a node's start-up check names the file and both keys */
    char why[512], ida[CKPTKEY_ID_TEXT], idb[CKPTKEY_ID_TEXT], want[128];
    ckptkey_id_text(ka.id, ida);
    ckptkey_id_text(kb.id, idb);
    assert_int_equal(checkpoint_check_dir(&ka, cdir, why, sizeof(why)), EDDY_OK);
    assert_int_equal(checkpoint_check_dir(NULL, pdir, why, sizeof(why)), EDDY_OK);
    assert_int_equal(checkpoint_check_dir(&kb, cdir, why, sizeof(why)), EDDY_ERR_KEY);
    snprintf(want, sizeof(want), "encrypted with key %s, this node has %s", ida, idb);
    assert_non_null(strstr(why, want));
    assert_non_null(strstr(why, ei.path));
    assert_int_equal(checkpoint_check_dir(NULL, cdir, why, sizeof(why)), EDDY_ERR_KEY);
    snprintf(want, sizeof(want), "encrypted with key %s, this node has none", ida);
    assert_non_null(strstr(why, want));
    assert_int_equal(checkpoint_check_dir(&ka, pdir, why, sizeof(why)), EDDY_ERR_KEY);
    assert_non_null(strstr(why, "not encrypted"));
    char *missing = subdir(dir, "none");
    assert_int_equal(checkpoint_check_dir(&ka, missing, why, sizeof(why)), EDDY_OK);
    free(missing);

    /* changed bytes: the header's key id names another key; every other header byte, each
     * chunk's head, and bytes spread through the data and tags fail authentication */
    char path[CHECKPOINT_PATH_MAX];
    snprintf(path, sizeof(path), "%s/bad.ckp", dir);
    unsigned char *bad = malloc(n);
    assert_non_null(bad);
    for (size_t off = 0; off < n; off += off < 4096 ? 1 : 4093) {
        memcpy(bad, enc, n);
        bad[off] ^= 0x04;
        write_all(path, bad, n);
        eddy_err want_err = off >= 16 && off < 24 ? EDDY_ERR_KEY : EDDY_ERR_CORRUPT;
        if (checkpoint_verify(&ka, path, NULL) != want_err)
            fail_msg("changed byte at offset %zu of %zu not refused", off, n);
    }
    for (size_t c = 0; c < chunks; c++) {
        for (size_t i = 0; i < 4 + CKPTKEY_NONCE_LEN; i++) {
            memcpy(bad, enc, n);
            bad[offs[c] + i] ^= 0x01;
            write_all(path, bad, n);
            if (checkpoint_verify(&ka, path, NULL) != EDDY_ERR_CORRUPT)
                fail_msg("changed byte %zu of chunk %zu's head not refused", i, c);
        }
    }
    memcpy(bad, enc, n);
    bad[n - 1] ^= 0x80; /* the last tag */
    write_all(path, bad, n);
    assert_int_equal(checkpoint_load(&ka, dst, 3, path, NULL), EDDY_ERR_CORRUPT);

    /* cut: at each chunk boundary (the chunks before are whole and authentic) and inside */
    for (size_t c = 0; c < chunks; c++) {
        write_all(path, enc, offs[c]);
        assert_int_equal(checkpoint_verify(&ka, path, NULL), EDDY_ERR_CORRUPT);
        write_all(path, enc, offs[c] + 100);
        assert_int_equal(checkpoint_verify(&ka, path, NULL), EDDY_ERR_CORRUPT);
    }
    for (size_t len = 0; len < 64; len++) {
        write_all(path, enc, len);
        assert_int_equal(checkpoint_verify(&ka, path, NULL), EDDY_ERR_CORRUPT);
    }
    /* trailing bytes after the last chunk */
    memcpy(bad, enc, n);
    write_all(path, bad, n);
    FILE *f = fopen(path, "ab");
    fputc(0, f);
    fclose(f);
    assert_int_equal(checkpoint_verify(&ka, path, NULL), EDDY_ERR_CORRUPT);

    /* reordered: the two middle chunks (both full, so the lengths still line up) */
    size_t clen = offs[2] - offs[1];
    assert_int_equal(offs[3] - offs[2], clen);
    memcpy(bad, enc, n);
    memcpy(bad + offs[1], enc + offs[2], clen);
    memcpy(bad + offs[2], enc + offs[1], clen);
    write_all(path, bad, n);
    bool found = false;
    const char *auth = "chunk fails authentication";
    assert_int_equal(verify_logs(&ka, path, dir, auth, &found), EDDY_ERR_CORRUPT);
    assert_true(found);
    /* transplanted: chunk 1 of another file of the same key and content */
    struct checkpoint_info ei2;
    char path2[CHECKPOINT_PATH_MAX];
    snprintf(path2, sizeof(path2), "%s/other.ckp", dir);
    assert_int_equal(checkpoint_write(&ka, s, 3, path2, &ei2), EDDY_OK);
    size_t n2;
    unsigned char *enc2 = read_all(path2, &n2);
    assert_int_equal(n2, n);
    memcpy(bad, enc, n);
    memcpy(bad + offs[1], enc2 + offs[1], clen);
    write_all(path, bad, n);
    assert_int_equal(verify_logs(&ka, path, dir, auth, &found), EDDY_ERR_CORRUPT);
    assert_true(found);
    dst_dump = dump_filtered(dst, 3);
    assert_string_equal(dst_dump, dst_mid); /* no refused file changed the target */

    /* a move's stream: the same format, in any pieces, and no piece over a chunk */
    struct membuf m = {0};
    struct checkpoint_info si, ri;
    assert_int_equal(checkpoint_stream(&ka, s, 3, to_mem, &m, &si), EDDY_OK);
    assert_true(si.encrypted);
    assert_int_equal(si.bytes, m.n);
    assert_null(memmem(m.b, m.n, SECRET_USER, strlen(SECRET_USER)));
    struct rec_digest whole, recs;
    assert_int_equal(read_in_pieces(plain, pn, pn, &whole, NULL), EDDY_OK);
    for (size_t step = 1; step <= m.n; step = step * 7 + 3) {
        assert_int_equal(read_in_pieces_with(&ka, m.b, m.n, step, &recs, &ri), EDDY_OK);
        assert_int_equal(recs.records, whole.records);
        assert_int_equal(recs.crc, whole.crc);
        assert_int_equal(ri.bytes, m.n);
    }
    assert_int_equal(read_in_pieces_with(&kb, m.b, m.n, 4096, &recs, NULL), EDDY_ERR_KEY);
    assert_int_equal(read_in_pieces_with(NULL, m.b, m.n, 4096, &recs, NULL), EDDY_ERR_KEY);
    assert_int_equal(recs.records, 0);

    free(m.b);
    free(enc2);
    free(bad);
    free(dst_before);
    free(dst_mid);
    free(dst_dump);
    free(src_dump);
    free(plain);
    free(enc);
    store_close(dst);
    store_close(s);
    rmrf(dir);
    free(sdir);
    free(ddir);
    free(cdir);
    free(pdir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_load_roundtrip),
        cmocka_unit_test(test_consistent_while_writing),
        cmocka_unit_test(test_restore_applies_the_log_tail),
        cmocka_unit_test(test_corruption_detected),
        cmocka_unit_test(test_replace_range_contract),
        cmocka_unit_test(test_snapshot_isolated),
        cmocka_unit_test(test_range_snapshot_of_rows_behind),
        cmocka_unit_test(test_checkpoint_of_rows_behind),
        cmocka_unit_test(test_latest_valid_and_prune),
        cmocka_unit_test(test_stream_and_incremental_reader),
        cmocka_unit_test(test_encrypted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
