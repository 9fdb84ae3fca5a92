/* The store on a real LevelDB in a temp dir: range replaces (synced or not) and the log
 * sync that makes unsynced ones durable, and the range loader's batches. The write
 * transactions are test_store_txn.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
                           const store_batch *b)
{
    struct ranges_seen *r = ud;
    assert_true(r->n < 64);
    r->start[r->n] = *start;
    r->end[r->n] = *end;
    r->count[r->n] = store_batch_count(b);
    r->n++;
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replace_range_nosync_then_sync_log, setup,
                                        teardown),
        cmocka_unit_test(test_range_loader_tiles_the_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
