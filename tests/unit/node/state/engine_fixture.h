/* What the state-engine unit tests share: a small engine configuration (8 partitions,
 * 60 s windows), event construction, a synchronous ingest, temporary directories, and the
 * leftovers of an interrupted side store.
 * Header-only: include it after <cmocka.h> in one test file each. */
#ifndef EDDY_TEST_ENGINE_FIXTURE_H
#define EDDY_TEST_ENGINE_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/state/engine.h"
#include "node/state/store.h"
#include "tests/support/engine_opts.h"

#define T0 1800000000000LL /* a window boundary: divisible by 60000 */
#define FIXTURE_PARTITIONS TEST_ENGINE_PARTITIONS

#define VIEW EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW
#define BUY EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE
#define CART EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART

static inline struct engine_opts opts(const char *dir)
{
    return test_engine_opts(dir);
}

/* An engine of opts(dir); close with engine_close. */
static inline engine *open_test_engine(const char *dir)
{
    struct engine_opts o = opts(dir);
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    return e;
}

struct done {
    int calls;
    eddy_err err;
    struct engine_ingest_result r;
};

static inline void on_done(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    struct done *d = ud;
    d->calls++;
    d->err = err;
    d->r = *r;
}

/* An event with borrowed strings; free with free(). */
static inline Eddy__V1__Event *mk(const char *id, const char *user, int64_t ts,
                                  Eddy__V1__EventType type, const char *product,
                                  const char *cat)
{
    Eddy__V1__Event *e = calloc(1, sizeof(*e));
    eddy__v1__event__init(e);
    e->event_id = (char *)id;
    e->user_id = (char *)user;
    e->timestamp_ms = ts;
    e->event_type = type;
    e->product_id = (char *)product;
    e->category = (char *)cat;
    e->price = 10;
    return e;
}

/* Ingest and wait until the events are committed. */
static inline struct done ingest(engine *e, Eddy__V1__Event **evs, size_t n)
{
    struct done d = {0};
    assert_int_equal(engine_ingest(e, evs, n, on_done, &d), EDDY_OK);
    engine_flush(e);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.err, EDDY_OK);
    return d;
}

/* A new directory /tmp/eddy-test-<what>-XXXXXX; free the result. */
static inline char *tmpdir_for(const char *what)
{
    char tmpl[128];
    snprintf(tmpl, sizeof(tmpl), "/tmp/eddy-test-%s-XXXXXX", what);
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static inline void rmrf(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Leave a closed database at 'dir' (created if missing) holding the row k -> v: the
 * leftovers of a run that stopped before it removed its side store. */
static inline void leave_store_row(const char *dir, const struct store_key *k, const void *v,
                                   size_t vlen)
{
    struct store_opts so = {dir, 0, 0};
    store *s = NULL;
    char err[256];
    assert_int_equal(store_open(&so, &s, err, sizeof(err)), EDDY_OK);
    struct store_key end;
    key_prefix_end(k, &end);
    store_batch *b = store_batch_new();
    assert_non_null(b);
    assert_int_equal(store_batch_put(b, k->buf, k->len, v, vlen), EDDY_OK);
    assert_int_equal(store_replace_range(s, k, &end, b, NULL), EDDY_OK);
    store_batch_free(b);
    store_close(s);
}

#endif
