/* The store on a real LevelDB in a temp dir: range replaces (synced or not) and the log
 * sync that makes unsynced ones durable, the range loader's batches, and removing a
 * database that is closed (store_destroy), and the hook told of a write LevelDB refused. The
 * write transactions are test_store_txn.c. */
#include <errno.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "node/state/store.h"

#include "store_fixture.h"

/* An unsynced range replace is a replace like the synced one (visible at once, the old
 * keys gone), it survives a reopen after store_sync_log, and store_sync_log fails when
 * the database's directory cannot be read. */
static void test_replace_range_nosync_then_sync_log(void **state)
{
    struct fx *f = *state;
    struct store_key start, end, k;
    key_init(&start, 6, T_LOG);
    key_init(&end, 7, T_LOG);
    store_batch *b = store_batch_new();
    for (uint64_t i = 0; i < 100; i++) {
        key_init(&k, 6, T_LOG);
        key_u64(&k, i);
        assert_int_equal(store_batch_put(b, k.buf, k.len, "v", 1), EDDY_OK);
    }
    assert_int_equal(store_replace_range_nosync(f->s, &start, &end, b, NULL), EDDY_OK);
    store_batch_free(b);
    b = store_batch_new();
    key_init(&k, 6, T_LOG);
    key_u64(&k, 1000);
    assert_int_equal(store_batch_put(b, k.buf, k.len, "w", 1), EDDY_OK);
    uint64_t deleted = 0;
    assert_int_equal(store_replace_range_nosync(f->s, &start, &end, b, &deleted), EDDY_OK);
    store_batch_free(b);
    assert_int_equal(deleted, 100);
    assert_int_equal(store_sync_log(f->s), EDDY_OK);

    store_close(f->s);
    struct store_opts so = {f->dir, 0, 0};
    char err[256];
    assert_int_equal(store_open(&so, &f->s, err, sizeof(err)), EDDY_OK);
    char *val = NULL;
    size_t vlen = 0;
    assert_int_equal(store_get(f->s, &k, &val, &vlen), EDDY_OK);
    assert_non_null(val);
    assert_memory_equal(val, "w", 1);
    free(val);
    key_init(&k, 6, T_LOG);
    key_u64(&k, 5);
    assert_int_equal(store_get(f->s, &k, &val, &vlen), EDDY_OK);
    assert_null(val);

    char moved[sizeof(f->dir) + 8];
    snprintf(moved, sizeof(moved), "%s.away", f->dir);
    assert_int_equal(rename(f->dir, moved), 0);
    assert_int_equal(store_sync_log(f->s), EDDY_ERR_IO);
    assert_int_equal(rename(moved, f->dir), 0);
}

/* The range loader cuts ascending puts into batches of about max_bytes, handed out as
 * ranges that tile [the first key, end) with no gap: each batch's range ends where the
 * next one's first key starts. */
struct ranges_seen {
    struct store_key start[64], end[64];
    size_t count[64], n;
};

static eddy_err note_range(void *ud, const struct store_key *start, const struct store_key *end,
                           store_batch *b)
{
    struct ranges_seen *r = ud;
    assert_true(r->n < 64);
    r->start[r->n] = *start;
    r->end[r->n] = *end;
    r->count[r->n] = store_batch_count(b);
    r->n++;
    store_batch_free(b);
    return EDDY_OK;
}

static void test_range_loader_tiles_the_range(void **state)
{
    (void)state;
    struct ranges_seen r = {.n = 0};
    struct store_range_loader rl;
    assert_int_equal(store_range_loader_init(&rl, 100, note_range, &r), EDDY_OK);
    struct store_key k, first, end;
    for (uint64_t i = 0; i < 50; i++) {
        key_init(&k, 2, T_LOG);
        key_u64(&k, i);
        if (i == 0)
            first = k;
        assert_int_equal(store_range_loader_put(&rl, k.buf, k.len, "0123456789", 10), EDDY_OK);
    }
    key_init(&end, 3, T_LOG);
    assert_int_equal(store_range_loader_finish(&rl, &end), EDDY_OK);
    store_range_loader_release(&rl);
    /* 21 bytes a put: a batch is cut after 5 puts (105 >= 100) */
    assert_int_equal(r.n, 10);
    assert_memory_equal(r.start[0].buf, first.buf, first.len);
    size_t total = 0;
    for (size_t i = 0; i < r.n; i++) {
        total += r.count[i];
        const struct store_key *next = i + 1 < r.n ? &r.start[i + 1] : &end;
        assert_int_equal(r.end[i].len, next->len);
        assert_memory_equal(r.end[i].buf, next->buf, next->len);
    }
    assert_int_equal(total, 50);
    assert_int_equal(store_range_loader_put(&rl, k.buf, 0, "x", 1), EDDY_ERR_INVALID);
}

/* ---- store_destroy ------------------------------------------------------------------- */

/* Put one LOG record of partition 1 through a range replace (the store's own write). */
static void put_one(store *s, struct store_key *k)
{
    struct store_key start, end;
    key_init(&start, 1, T_LOG);
    key_init(&end, 2, T_LOG);
    key_init(k, 1, T_LOG);
    key_u64(k, 7);
    store_batch *b = store_batch_new();
    assert_non_null(b);
    assert_int_equal(store_batch_put(b, k->buf, k->len, "v", 1), EDDY_OK);
    assert_int_equal(store_replace_range(s, &start, &end, b, NULL), EDDY_OK);
    store_batch_free(b);
}

/* put_one, then close the fixture's store (its teardown accepts that). */
static void put_one_and_close(struct fx *f, struct store_key *k)
{
    put_one(f->s, k);
    store_close(f->s);
    f->s = NULL;
}

/* Whether the store at 'dir' (opened, creating it if missing) holds 'k'. */
static bool reopened_holds(struct fx *f, const struct store_key *k)
{
    struct store_opts so = {f->dir, 0, 0};
    char err[256];
    assert_int_equal(store_open(&so, &f->s, err, sizeof(err)), EDDY_OK);
    char *val = NULL;
    size_t vlen = 0;
    assert_int_equal(store_get(f->s, k, &val, &vlen), EDDY_OK);
    free(val);
    return val != NULL;
}

/* A database written and closed is gone after store_destroy: its directory too, and a
 * store opened there again starts empty. */
static void test_destroy_removes_closed_database(void **state)
{
    struct fx *f = *state;
    struct store_key k;
    put_one_and_close(f, &k);
    char err[256] = "";
    assert_int_equal(store_destroy(f->dir, err, sizeof(err)), EDDY_OK);
    assert_string_equal(err, "");
    struct stat st;
    assert_int_equal(stat(f->dir, &st), -1);
    assert_int_equal(errno, ENOENT);
    assert_false(reopened_holds(f, &k));
}

/* Only LevelDB's files go: a foreign file stays, and with it the directory. */
static void test_destroy_keeps_foreign_files(void **state)
{
    struct fx *f = *state;
    struct store_key k;
    put_one_and_close(f, &k);
    char other[sizeof(f->dir) + 16], current[sizeof(f->dir) + 16];
    snprintf(other, sizeof(other), "%s/notes.txt", f->dir);
    snprintf(current, sizeof(current), "%s/CURRENT", f->dir);
    FILE *fp = fopen(other, "w");
    assert_non_null(fp);
    fclose(fp);
    struct stat st;
    assert_int_equal(stat(current, &st), 0);
    assert_int_equal(store_destroy(f->dir, NULL, 0), EDDY_OK);
    assert_int_equal(stat(other, &st), 0);
    assert_int_equal(stat(current, &st), -1);
    assert_false(reopened_holds(f, &k));
}

/* An open database is not removed: an error with LevelDB's message, the data intact. */
static void test_destroy_open_database_fails(void **state)
{
    struct fx *f = *state;
    struct store_key k;
    put_one(f->s, &k);
    char err[256] = "";
    assert_int_equal(store_destroy(f->dir, err, sizeof(err)), EDDY_ERR_IO);
    assert_true(strlen(err) > 0);
    char *val = NULL;
    size_t vlen = 0;
    assert_int_equal(store_get(f->s, &k, &val, &vlen), EDDY_OK);
    assert_non_null(val);
    free(val);
}

/* A directory that does not exist: nothing to remove, no error. */
static void test_destroy_missing_directory_is_ok(void **state)
{
    struct fx *f = *state;
    char missing[sizeof(f->dir) + 16];
    snprintf(missing, sizeof(missing), "%s/none", f->dir);
    char err[256] = "";
    assert_int_equal(store_destroy(missing, err, sizeof(err)), EDDY_OK);
    assert_string_equal(err, "");
    struct stat st;
    assert_int_equal(stat(missing, &st), -1);
}

struct refused {
    int calls;
    char why[256];
};

static void note_refused(void *ud, const char *why)
{
    struct refused *r = ud;
    r->calls++;
    snprintf(r->why, sizeof(r->why), "%s", why);
}

/* A write LevelDB cannot make (a real one: the file size limit makes its log append fail
 * with EFBIG, as a full disk fails it with ENOSPC) calls the store_on_write_failed hook once,
 * with LevelDB's message, and returns EDDY_ERR_IO; a write that succeeds calls nothing. */
static void test_refused_write_calls_the_hook(void **state)
{
    struct fx *f = *state;
    struct refused r = {0, ""};
    store_on_write_failed(f->s, note_refused, &r);

    struct store_key start, end, k;
    key_init(&start, 6, T_LOG);
    key_init(&end, 7, T_LOG);
    key_init(&k, 6, T_LOG);
    key_u64(&k, 1);
    static char big[256 << 10];
    memset(big, 'x', sizeof(big));
    store_batch *b = store_batch_new();
    assert_int_equal(store_batch_put(b, k.buf, k.len, "v", 1), EDDY_OK);
    assert_int_equal(store_replace_range(f->s, &start, &end, b, NULL), EDDY_OK);
    assert_int_equal(r.calls, 0);
    store_batch_free(b);

    b = store_batch_new();
    key_u64(&k, 2);
    assert_int_equal(store_batch_put(b, k.buf, k.len, big, sizeof(big)), EDDY_OK);
    struct rlimit was, small = {64 << 10, 0};
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &was), 0);
    small.rlim_max = was.rlim_max;
    void (*old)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    eddy_err e = store_replace_range(f->s, &start, &end, b, NULL);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &was), 0);
    signal(SIGXFSZ, old);
    store_batch_free(b);
    assert_int_equal(e, EDDY_ERR_IO);
    assert_int_equal(r.calls, 1);
    assert_true(strlen(r.why) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replace_range_nosync_then_sync_log, setup,
                                        teardown),
        cmocka_unit_test(test_range_loader_tiles_the_range),
        cmocka_unit_test_setup_teardown(test_refused_write_calls_the_hook, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_removes_closed_database, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_keeps_foreign_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_open_database_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_missing_directory_is_ok, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
