/* Reprocessing on real engines in temp dirs: a rebuild of every partition with new
 * half-lives dumps byte for byte like a fresh engine fed the same events with those
 * half-lives, and the engine uses them afterwards; a one-partition rebuild leaves every
 * other key of the store alone; a cancelled rebuild changes nothing; parameters and
 * requests are checked with clear messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "common/partition.h"
#include "eddy/v1/store.pb-c.h"
#include "node/state/reprocess.h"
#include "node/state/store.h"
#include "node/state/store_key.h"

#include "engine_fixture.h"

#define HOUR 3600000LL
#define NEVENTS 400

/* Every key/value of the tables 'mask', for partition 'only' (-1: all), as text. */
static char *dump(engine *e, uint32_t mask, int only)
{
    char *buf = NULL, *res = NULL;
    size_t len = 0, rlen = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(store_dump(engine_store(e), mask, f), EDDY_OK);
    fclose(f);
    FILE *r = open_memstream(&res, &rlen);
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char hex[5] = {line[0], line[1], line[2], line[3], 0};
        if (only < 0 || strtol(hex, NULL, 16) == only)
            fprintf(r, "%s\n", line);
    }
    fclose(r);
    free(buf);
    return res;
}

/* Derived tables compared with a fresh ingest: all but LOG (the events as sent); PRODUCT
 * and COOC too, since co-occurrence pairs no longer depend on arrival order. */
#define COMPARED (~(1u << T_LOG))

struct events {
    Eddy__V1__Event *ev[NEVENTS];
    char ids[NEVENTS][16], users[NEVENTS][16], products[NEVENTS][16];
};

/* 20 users, 12 products in 3 categories, over ~7 hours of event time. */
static void make_events(struct events *s)
{
    static const char *const cats[] = {"books", "toys", "garden"};
    for (int i = 0; i < NEVENTS; i++) {
        snprintf(s->ids[i], sizeof(s->ids[i]), "e-%d", i);
        snprintf(s->users[i], sizeof(s->users[i]), "u-%d", (i * 7) % 20);
        snprintf(s->products[i], sizeof(s->products[i]), "p-%d", (i * 5) % 12);
        s->ev[i] = mk(s->ids[i], s->users[i], T0 + (int64_t)i * 60000,
                      i % 9 == 0 ? BUY : i % 4 == 0 ? CART : VIEW, s->products[i],
                      cats[((i * 5) % 12) % 3]);
    }
}

static void free_events(struct events *s)
{
    for (int i = 0; i < NEVENTS; i++)
        free(s->ev[i]);
}

static engine *open_engine(const char *dir, int64_t half_life)
{
    struct engine_opts o = opts(dir);
    if (half_life > 0) {
        o.apply.model.affinity.half_life_ms = half_life;
        o.product.popularity.half_life_ms = half_life;
        o.product.neighbours.half_life_ms = half_life;
    }
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_open(&o, &e, err, sizeof(err)), EDDY_OK);
    return e;
}

static void feed(engine *e, struct events *s)
{
    for (int i = 0; i < NEVENTS; i += 50)
        ingest(e, s->ev + i, 50);
}

static struct reprocess_opts ropts(engine *e, const char *dir, const _Atomic bool *cancel)
{
    static char work[256];
    snprintf(work, sizeof(work), "%s/reprocess.tmp", dir);
    return (struct reprocess_opts){e, work, NULL, NULL, NULL, cancel, NULL, NULL};
}

static void test_new_half_life_equals_fresh_ingest(void **state)
{
    char *d1 = tmpdir_for("reproc-live"), *d2 = tmpdir_for("reproc-fresh");
    struct events s;
    make_events(&s);
    engine *live = open_engine(d1, 0), *fresh = open_engine(d2, HOUR);
    feed(live, &s);
    feed(fresh, &s);
    char *before = dump(live, COMPARED, -1), *want = dump(fresh, COMPARED, -1);
    assert_string_not_equal(before, want); /* the half-lives matter */

    struct reprocess_request rq = {.all = true};
    char err[512] = "";
    assert_int_equal(reprocess_set_param(&rq, "half-life", "1h", err, sizeof(err)), EDDY_OK);
    struct reprocess_opts o = ropts(live, d1, NULL);
    struct reprocess_result res;
    assert_int_equal(reprocess_run(&o, &rq, &res, err, sizeof(err)), EDDY_OK);
    assert_int_equal(res.n, FIXTURE_PARTITIONS);
    assert_int_equal(res.records, NEVENTS);
    assert_int_equal(res.first_seq, 0);
    assert_true(res.stage2);
    for (int i = 0; i < RP_PARAMS; i++)
        assert_int_equal(res.params[i], HOUR);
    char *after = dump(live, COMPARED, -1);
    assert_string_equal(after, want);

    /* the engine applies with the new half-life from now on */
    const struct engine_opts *eo = engine_options(live);
    assert_int_equal(eo->apply.model.affinity.half_life_ms, HOUR);
    assert_int_equal(eo->product.popularity.half_life_ms, HOUR);
    Eddy__V1__Event *more = mk("late-1", "u-3", T0 + 500 * 60000LL, VIEW, "p-1", "toys");
    ingest(live, &more, 1);
    ingest(fresh, &more, 1);
    char *after2 = dump(live, COMPARED, -1), *want2 = dump(fresh, COMPARED, -1);
    assert_string_equal(after2, want2);

    reprocess_result_release(&res);
    free(more);
    free(before);
    free(want);
    free(after);
    free(after2);
    free(want2);
    engine_close(live);
    engine_close(fresh);
    free_events(&s);
    rmrf(d1);
    rmrf(d2);
    free(d1);
    free(d2);
}

/* The side store of an interrupted run, left in 'dir': partition 'p' replayed far past its
 * log (the run must start from an empty side store, from seq 0, not resume this one). */
static void leave_side_store(const char *dir, uint32_t p)
{
    struct store_key k;
    key_init(&k, p, T_META);
    Eddy__Store__V1__PartitionMeta m = EDDY__STORE__V1__PARTITION_META__INIT;
    m.next_seq = 1000000;
    uint8_t buf[64];
    leave_store_row(dir, &k, buf, eddy__store__v1__partition_meta__pack(&m, buf));
}

/* A rebuild of one partition, over leftovers of an interrupted run. */
static void test_one_partition_leaves_the_rest(void **state)
{
    char *d = tmpdir_for("reproc-one");
    struct events s;
    make_events(&s);
    engine *e = open_engine(d, 0);
    feed(e, &s);
    uint32_t p = partition_of_user("u-3", FIXTURE_PARTITIONS);
    char *all_before = dump(e, 0xffffffffu, -1);

    struct reprocess_request rq = {.partition = p};
    struct reprocess_opts o = ropts(e, d, NULL);
    leave_side_store(o.work_dir, p);
    struct reprocess_result res;
    char err[512] = "";
    assert_int_equal(reprocess_run(&o, &rq, &res, err, sizeof(err)), EDDY_OK);
    struct stat st;
    assert_int_equal(stat(o.work_dir, &st), -1); /* the side store is removed */
    assert_int_equal(res.n, 1);
    assert_int_equal(res.parts[0].partition, p);
    assert_false(res.stage2);
    assert_true(res.records > 0);
    struct engine_partition_view v;
    engine_partition(e, p, &v);
    assert_int_equal(res.parts[0].next_seq, v.next_seq);
    assert_int_equal(res.parts[0].records, v.next_seq); /* the whole log, from seq 0 */
    /* same code, same parameters: the rebuild is the state it replaced, byte for byte */
    char *all_after = dump(e, 0xffffffffu, -1);
    assert_string_equal(all_after, all_before);

    reprocess_result_release(&res);
    free(all_before);
    free(all_after);
    engine_close(e);
    free_events(&s);
    rmrf(d);
    free(d);
}

static void test_cancel_changes_nothing(void **state)
{
    char *d = tmpdir_for("reproc-cancel");
    struct events s;
    make_events(&s);
    engine *e = open_engine(d, 0);
    feed(e, &s);
    char *before = dump(e, 0xffffffffu, -1);
    _Atomic bool cancel = true;
    struct reprocess_request rq = {.all = true};
    char err[512] = "";
    assert_int_equal(reprocess_set_param(&rq, "affinity-half-life", "2h", err, sizeof(err)), EDDY_OK);
    struct reprocess_opts o = ropts(e, d, &cancel);
    struct reprocess_result res;
    assert_int_equal(reprocess_run(&o, &rq, &res, err, sizeof(err)), EDDY_ERR_UNAVAILABLE);
    assert_non_null(strstr(err, "reprocess failed"));
    char *after = dump(e, 0xffffffffu, -1);
    assert_string_equal(after, before);
    assert_int_equal(engine_options(e)->apply.model.affinity.half_life_ms, 7 * 86400000LL);
    free(before);
    free(after);
    engine_close(e);
    free_events(&s);
    rmrf(d);
    free(d);
}

static void test_parameters_and_requests(void **state)
{
    struct reprocess_request rq = {.all = true};
    char err[512] = "";
    assert_int_equal(reprocess_set_param(&rq, "neighbour-half-life", "90m", err, sizeof(err)), EDDY_OK);
    assert_int_equal(rq.set[RP_NEIGHBOURS], 90 * 60000LL);
    assert_int_equal(rq.set[RP_AFFINITY], 0);
    assert_int_equal(reprocess_set_param(&rq, "half-life", "2d", err, sizeof(err)), EDDY_OK);
    for (int i = 0; i < RP_PARAMS; i++)
        assert_int_equal(rq.set[i], 2 * 86400000LL);
    assert_int_equal(reprocess_set_param(&rq, "decay", "1d", err, sizeof(err)), EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "unknown parameter \"decay\""));
    static const char *const bad[] = {"", "0", "-5s", "3 days", "1y", "3651d"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(reprocess_set_param(&rq, "half-life", bad[i], err, sizeof(err)),
                         EDDY_ERR_INVALID);
        assert_non_null(strstr(err, "bad duration"));
    }

    struct reprocess_request one = {.partition = 8};
    assert_int_equal(reprocess_check_request(&one, 8, err, sizeof(err)), EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "partition 8 is out of range (0 .. 7)"));
    one.partition = 7;
    assert_int_equal(reprocess_check_request(&one, 8, err, sizeof(err)), EDDY_OK);
    one.set[RP_AFFINITY] = HOUR;
    assert_int_equal(reprocess_check_request(&one, 8, err, sizeof(err)), EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "needs --all"));

    struct reprocess_request all = {.all = true};
    all.set[RP_AFFINITY] = HOUR;
    assert_int_equal(reprocess_check_request(&all, 8, err, sizeof(err)), EDDY_OK);
    all.set[RP_POPULARITY] = HOUR;
    assert_int_equal(reprocess_check_request(&all, 8, err, sizeof(err)), EDDY_OK);
    assert_true(reprocess_rebuilds_stage2(&all));
    assert_false(reprocess_rebuilds_stage2(&one));
    snprintf(all.checkpoint, sizeof(all.checkpoint), "latest");
    assert_false(reprocess_rebuilds_stage2(&all));
    assert_int_equal(reprocess_check_request(&all, 8, err, sizeof(err)), EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "cannot be combined with --set"));
    memset(all.set, 0, sizeof(all.set));
    assert_int_equal(reprocess_check_request(&all, 8, err, sizeof(err)), EDDY_OK);
    snprintf(all.checkpoint, sizeof(all.checkpoint), "12");
    assert_int_equal(reprocess_check_request(&all, 8, err, sizeof(err)), EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "takes \"latest\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_half_life_equals_fresh_ingest),
        cmocka_unit_test(test_one_partition_leaves_the_rest),
        cmocka_unit_test(test_cancel_changes_nothing),
        cmocka_unit_test(test_parameters_and_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
