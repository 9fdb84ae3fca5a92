/* The apply's reads through the writer's txn: with key sets (apply_params.key_set_bytes),
 * the first read of a new user's model, of a new product's state and of the impressions of
 * a user who never had one is answered "absent" without a LevelDB read, and the state
 * written is the same as without them. */
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
#include "node/state/product.h"
#include "node/state/store_txn.h"
#include "tests/support/engine_opts.h"
#include "tests/unit/node/state/store_fixture.h"

#define T0 1800000000000LL

struct run {
    store_txn *t;
    struct engine_opts o;
};

/* --dev's stage 2: applied in the same txn. */
static eddy_err emit(void *ud, const Eddy__Store__V1__Stage2Batch *b)
{
    struct run *r = ud;
    return product_apply(r->t, &r->o.product, b, NULL, NULL);
}

static void apply1(struct run *r, struct part_meta *metas, const char *id, const char *user,
                   Eddy__V1__EventType type, const char *product, int64_t ts)
{
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = (char *)id;
    ev.user_id = (char *)user;
    ev.timestamp_ms = ts;
    ev.event_type = type;
    ev.product_id = (char *)product;
    ev.category = (char *)"books";
    uint32_t p = partition_of_user(user, r->o.apply.partitions);
    enum apply_outcome oc;
    assert_int_equal(apply_event(r->t, &r->o.apply, p, &metas[p], &ev, emit, r, &oc), EDDY_OK);
    assert_int_equal(oc, APPLY_ACCEPTED);
}

/* Three events, a commit after each; the stats of the txn's reads and the state, dumped. */
static char *run_events(store *s, size_t key_set_bytes, struct store_txn_stats *st)
{
    struct run r = {store_txn_new(s), test_engine_opts("")};
    struct part_meta metas[TEST_ENGINE_PARTITIONS];
    assert_non_null(r.t);
    r.o.apply.key_set_bytes = key_set_bytes;
    r.o.apply.product = &r.o.product;
    for (uint32_t p = 0; p < TEST_ENGINE_PARTITIONS; p++)
        assert_int_equal(apply_meta_load(s, p, &metas[p]), EDDY_OK);
    /* u1 and p1 new; then u1 clicks p2, new, and has no impression; then u2, new, clicks
     * p1 and has none: 6 first reads of rows that do not exist */
    apply1(&r, metas, "e1", "u1", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, "p1", T0);
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    apply1(&r, metas, "e2", "u1", EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK, "p2", T0 + 1000);
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    apply1(&r, metas, "e3", "u2", EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK, "p1", T0 + 2000);
    for (uint32_t p = 0; p < TEST_ENGINE_PARTITIONS; p++)
        assert_int_equal(apply_meta_save(r.t, p, &metas[p]), EDDY_OK);
    assert_int_equal(store_txn_commit(r.t, false), EDDY_OK);
    store_txn_stats(r.t, st);
    store_txn_free(r.t);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(store_dump(s, UINT32_MAX, f), EDDY_OK);
    fclose(f);
    return buf;
}

static void test_key_sets_spare_reads_of_new_rows(void **state)
{
    struct fx *f = *state;
    struct store_txn_stats without, with;
    char *a = run_events(f->s, 0, &without);
    /* the same events again on an empty store */
    store_close(f->s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    struct store_opts so = {f->dir, 0, 0};
    char err[256];
    assert_int_equal(store_open(&so, &f->s, err, sizeof(err)), EDDY_OK);
    char *b = run_events(f->s, APPLY_KEY_SET_DEFAULT, &with);

    assert_string_equal(a, b);
    assert_int_equal(with.absent, without.absent + 6);
    assert_int_equal(with.misses + 6, without.misses);
    assert_true(with.key_set_keys >= 4); /* u1, u2, p1, p2 */
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_sets_spare_reads_of_new_rows, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
