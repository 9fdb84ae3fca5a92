/* The product half of a cluster-wide rebuild on real engines in temp dirs: the swap makes
 * the live product tables exactly the side store's (what the same stage-2 batches give a
 * fresh engine) with every partition's exactly-once marks at the cuts, publishes the new
 * half-lives and unfreezes; the freeze conflicts with another rebuild, lapses unrenewed
 * (and a lapsed rebuild cannot swap), and a swap without every cut changes nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "common/clock.h"
#include "node/state/stage2_side.h"
#include "node/state/store.h"
#include "node/state/store_key.h"

#include "engine_fixture.h"

#define HOUR 3600000LL
#define NBATCHES 40

static bool owns_all(void *ud, uint32_t q)
{
    (void)ud;
    return q < FIXTURE_PARTITIONS;
}

static stage2_side *new_side(engine *e, const char *dir, int64_t freeze_ms)
{
    char work[256];
    snprintf(work, sizeof(work), "%s/side.tmp", dir);
    struct stage2_side_opts o = {e, work, owns_all, NULL, freeze_ms};
    stage2_side *s = stage2_side_new(&o);
    assert_non_null(s);
    return s;
}

/* The text dump of the tables 'mask'. */
static char *dump(engine *e, uint32_t mask)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(engine_store(e), mask, f), EDDY_OK);
    fclose(f);
    return buf;
}

/* Stage-2 batches from source partitions 0..3: views of products q-0..q-9 and pairs. */
struct batches {
    Eddy__Store__V1__Stage2Batch b[NBATCHES], *ptr[NBATCHES];
    Eddy__Store__V1__ProductUpdate u[NBATCHES], *uptr[NBATCHES];
    Eddy__Store__V1__CoOccurrence c[NBATCHES], *cptr[NBATCHES];
    char pid[NBATCHES][8], next[NBATCHES][8];
};

static void make_batches(struct batches *s)
{
    for (int i = 0; i < NBATCHES; i++) {
        snprintf(s->pid[i], sizeof(s->pid[i]), "q-%d", i % 10);
        snprintf(s->next[i], sizeof(s->next[i]), "q-%d", (i + 3) % 10);
        eddy__store__v1__product_update__init(&s->u[i]);
        s->u[i].product_id = s->pid[i];
        s->u[i].category = "books";
        s->u[i].event_type = VIEW;
        s->u[i].ts = T0 + (int64_t)i * 60000;
        s->u[i].window_start = s->u[i].ts;
        s->uptr[i] = &s->u[i];
        eddy__store__v1__co_occurrence__init(&s->c[i]);
        s->c[i].from_product = s->pid[i];
        s->c[i].to_product = s->next[i];
        s->c[i].ts = s->u[i].ts;
        s->c[i].weight = 1;
        s->cptr[i] = &s->c[i];
        eddy__store__v1__stage2_batch__init(&s->b[i]);
        s->b[i].source_partition = (uint32_t)(i % 4);
        s->b[i].source_seq = (uint64_t)(i / 4);
        s->b[i].updates = &s->uptr[i];
        s->b[i].n_updates = 1;
        s->b[i].pairs = &s->cptr[i];
        s->b[i].n_pairs = 1;
        s->ptr[i] = &s->b[i];
    }
}

struct fwd {
    eddy_err err;
    int calls;
};

static void on_forward(void *ud, eddy_err err, size_t applied)
{
    struct fwd *f = ud;
    (void)applied;
    f->err = err;
    f->calls++;
}

static void test_swap_makes_the_side_state_live(void **state)
{
    (void)state;
    char *dir = tmpdir_for("s2side"), *fresh_dir = tmpdir_for("s2side-fresh");
    engine *e = open_test_engine(dir);
    /* live product state of other products, which the swap must remove */
    Eddy__V1__Event *ev[20];
    char ids[20][8];
    for (int i = 0; i < 20; i++) {
        snprintf(ids[i], sizeof(ids[i]), "e-%d", i);
        ev[i] = mk(ids[i], i % 2 ? "u-1" : "u-2", T0 + i * 1000, VIEW, i % 3 ? "old-1" : "old-2",
                   "toys");
    }
    ingest(e, ev, 20);
    for (int i = 0; i < 20; i++)
        free(ev[i]);

    struct batches *b = calloc(1, sizeof(*b));
    make_batches(b);
    /* a node that stopped mid-rebuild left its side store: a product the batches lack */
    char side_dir[256];
    snprintf(side_dir, sizeof(side_dir), "%s/side.tmp", dir);
    struct store_key ghost;
    key_init(&ghost, 0, T_PRODUCT);
    key_str(&ghost, "old-3");
    leave_store_row(side_dir, &ghost, "", 0);
    stage2_side *s = new_side(e, dir, 60000);
    char err[512] = "";
    int64_t set[RP_PARAMS] = {0, HOUR, 2 * HOUR};
    assert_int_equal(stage2_side_prepare(s, 42, set, err, sizeof(err)), EDDY_OK);
    struct stat st;
    assert_int_equal(stat(side_dir, &st), 0);
    assert_true(stage2_side_frozen(s));
    assert_true(stage2_side_busy(s));
    assert_int_equal(stage2_side_apply(s, 42, b->ptr, NBATCHES / 2, err, sizeof(err)), EDDY_OK);
    assert_int_equal(stage2_side_apply(s, 42, b->ptr + NBATCHES / 2, NBATCHES / 2, err,
                                       sizeof(err)),
                     EDDY_OK);
    /* a retry of the same batches is a no-op (exactly once per source seq) */
    assert_int_equal(stage2_side_apply(s, 42, b->ptr, NBATCHES, err, sizeof(err)), EDDY_OK);

    struct stage2_cut cuts[FIXTURE_PARTITIONS];
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        cuts[p] = (struct stage2_cut){p, 100 + p};
    uint32_t swapped[FIXTURE_PARTITIONS];
    size_t nswapped = 0;
    uint64_t applied = 0;
    assert_int_equal(stage2_side_swap(s, 42, cuts, FIXTURE_PARTITIONS, swapped, &nswapped,
                                      &applied, err, sizeof(err)),
                     EDDY_OK);
    assert_int_equal(nswapped, FIXTURE_PARTITIONS);
    assert_int_equal(applied, 2 * NBATCHES);
    assert_false(stage2_side_frozen(s));
    assert_false(stage2_side_busy(s));
    assert_int_equal(stat(side_dir, &st), -1); /* the side store is removed */
    assert_int_equal(engine_options(e)->product.popularity.half_life_ms, HOUR);
    assert_int_equal(engine_options(e)->product.neighbours.half_life_ms, 2 * HOUR);

    /* the same batches into a fresh engine with those half-lives */
    struct engine_opts fo = opts(fresh_dir);
    fo.product.popularity.half_life_ms = HOUR;
    fo.product.neighbours.half_life_ms = 2 * HOUR;
    engine *fresh = NULL;
    assert_int_equal(engine_open(&fo, &fresh, err, sizeof(err)), EDDY_OK);
    struct fwd f = {0};
    assert_int_equal(engine_forward(fresh, b->ptr, NBATCHES, on_forward, &f), EDDY_OK);
    engine_flush(fresh);
    assert_int_equal(f.calls, 1);
    assert_int_equal(f.err, EDDY_OK);
    uint32_t tables = (1u << T_PRODUCT) | (1u << T_PROD_WIN) | (1u << T_CAT_POP);
    char *got = dump(e, tables), *want = dump(fresh, tables);
    assert_non_null(strstr(want, "0a0b")); /* not trivially equal: rows exist */
    assert_string_equal(got, want);
    assert_null(strstr(got, "6f6c642d")); /* "old-": the old products are gone */

    /* the marks: one row per partition, its mark of every source p the cut 100 + p */
    char *hw = dump(e, 1u << T_S2_HW);
    size_t lines = 0;
    for (char *l = hw; (l = strchr(l, '\n')) != NULL; l++)
        lines++;
    assert_int_equal(lines, FIXTURE_PARTITIONS);
    char row[64];
    snprintf(row, sizeof(row), "0003%02x 0a08%s\n", T_S2_HW, "6465666768696a6b");
    assert_non_null(strstr(hw, row));
    free(hw);
    free(got);
    free(want);
    stage2_side_free(s);
    engine_close(fresh);
    engine_close(e);
    free(b);
    rmrf(dir);
    rmrf(fresh_dir);
    free(dir);
    free(fresh_dir);
}

static void test_freeze_conflicts_and_lapses(void **state)
{
    (void)state;
    char *dir = tmpdir_for("s2side-lapse");
    engine *e = open_test_engine(dir);
    stage2_side *s = new_side(e, dir, 60000);
    char err[512] = "";
    int64_t none[RP_PARAMS] = {0};
    assert_int_equal(stage2_side_prepare(s, 0, none, err, sizeof(err)), EDDY_ERR_INVALID);
    assert_int_equal(stage2_side_prepare(s, 1, none, err, sizeof(err)), EDDY_OK);
    assert_int_equal(stage2_side_prepare(s, 1, none, err, sizeof(err)), EDDY_OK); /* a retry */
    assert_int_equal(stage2_side_prepare(s, 2, none, err, sizeof(err)), EDDY_ERR_CONFLICT);
    assert_non_null(strstr(err, "another stage-2 rebuild (1)"));
    assert_int_equal(stage2_side_renew(s, 2, err, sizeof(err)), EDDY_ERR_NOT_FOUND);
    stage2_side_abort(s, 2); /* not the open one: nothing happens */
    assert_true(stage2_side_frozen(s));
    stage2_side_abort(s, 1);
    assert_false(stage2_side_frozen(s));
    stage2_side_free(s);

    /* unrenewed, the freeze lapses; the rebuild can then neither renew nor swap */
    s = new_side(e, dir, 20);
    assert_int_equal(stage2_side_prepare(s, 3, none, err, sizeof(err)), EDDY_OK);
    int64_t until = clock_mono_ms() + 10000;
    while (stage2_side_frozen(s) && clock_mono_ms() < until)
        ;
    assert_false(stage2_side_frozen(s));
    assert_false(stage2_side_busy(s));
    assert_int_equal(stage2_side_renew(s, 3, err, sizeof(err)), EDDY_ERR_NOT_FOUND);
    assert_non_null(strstr(err, "the freeze lapsed"));
    struct stage2_cut cuts[FIXTURE_PARTITIONS];
    for (uint32_t p = 0; p < FIXTURE_PARTITIONS; p++)
        cuts[p] = (struct stage2_cut){p, 1};
    uint32_t swapped[FIXTURE_PARTITIONS];
    size_t n;
    uint64_t batches;
    assert_int_equal(stage2_side_swap(s, 3, cuts, FIXTURE_PARTITIONS, swapped, &n, &batches, err,
                                      sizeof(err)),
                     EDDY_ERR_NOT_FOUND);
    assert_int_equal(n, 0);
    stage2_side_free(s);

    /* a swap without a cut for every partition changes nothing and closes the rebuild */
    s = new_side(e, dir, 60000);
    assert_int_equal(stage2_side_prepare(s, 4, none, err, sizeof(err)), EDDY_OK);
    char *before = dump(e, 1u << T_S2_HW);
    assert_int_equal(stage2_side_swap(s, 4, cuts, FIXTURE_PARTITIONS - 1, swapped, &n, &batches,
                                      err, sizeof(err)),
                     EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "each of the 8 user partitions"));
    cuts[1].partition = 0; /* a duplicate */
    assert_int_equal(stage2_side_prepare(s, 5, none, err, sizeof(err)), EDDY_OK);
    assert_int_equal(stage2_side_swap(s, 5, cuts, FIXTURE_PARTITIONS, swapped, &n, &batches, err,
                                      sizeof(err)),
                     EDDY_ERR_INVALID);
    assert_false(stage2_side_frozen(s));
    char *after = dump(e, 1u << T_S2_HW);
    assert_string_equal(before, after);
    free(before);
    free(after);
    stage2_side_free(s);
    engine_close(e);
    rmrf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swap_makes_the_side_state_live),
        cmocka_unit_test(test_freeze_conflicts_and_lapses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
