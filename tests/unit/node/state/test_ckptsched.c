/* The checkpoint scheduler: the pure schedule (stagger, due times, min pause, skipping
 * unchanged partitions, failures), and on a real engine the log floor (the log sweep stops
 * at the oldest retained checkpoint), one scheduled checkpoint with prune and metrics, the
 * thread writing only partitions that have events, and a restart that does not rewrite
 * unchanged partitions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/metrics.h"
#include "common/partition.h"
#include "node/state/checkpoint.h"
#include "node/state/ckptsched.h"
#include "node/state/engine.h"

#include "engine_fixture.h"

#define NPARTS FIXTURE_PARTITIONS
#define HOUR 3600000LL

/* ---- the pure schedule ------------------------------------------------------------------ */

static void test_stagger(void **state)
{
    struct ckptsched_params pp = {1000, 0};
    struct ckptsched_slot s[4];
    for (uint32_t p = 0; p < 4; p++)
        ckptsched_slot_init(&s[p], &pp, p, 4, 10000);
    assert_int_equal(s[0].due_ms, 10000);
    assert_int_equal(s[1].due_ms, 10250);
    assert_int_equal(s[2].due_ms, 10500);
    assert_int_equal(s[3].due_ms, 10750);
    /* 256 partitions over 60 s: all within one interval, never two at the same time */
    struct ckptsched_params big = {60000, 30000};
    int64_t prev = -1;
    for (uint32_t p = 0; p < 256; p++) {
        struct ckptsched_slot x;
        ckptsched_slot_init(&x, &big, p, 256, 0);
        assert_true(x.due_ms >= 0 && x.due_ms < 60000);
        assert_true(x.due_ms > prev);
        prev = x.due_ms;
        assert_false(x.have_last);
    }
    /* deterministic: the same start gives the same plan */
    struct ckptsched_slot a, b;
    ckptsched_slot_init(&a, &big, 77, 256, 5);
    ckptsched_slot_init(&b, &big, 77, 256, 5);
    assert_memory_equal(&a, &b, sizeof(a));
}

static void test_due_and_skip_unchanged(void **state)
{
    struct ckptsched_params pp = {1000, 0};
    struct ckptsched_slot s;
    ckptsched_slot_init(&s, &pp, 1, 4, 0); /* phase 250 */
    assert_int_equal(ckptsched_decide(&s, 249, 10), CKPTSCHED_WAIT);
    /* no log record yet: nothing to save */
    assert_int_equal(ckptsched_decide(&s, 250, 0), CKPTSCHED_SKIP);
    ckptsched_skipped(&s, &pp, 250);
    assert_int_equal(s.due_ms, 1250);
    assert_int_equal(ckptsched_decide(&s, 1000, 10), CKPTSCHED_WAIT);
    assert_int_equal(ckptsched_decide(&s, 1250, 10), CKPTSCHED_WRITE);
    ckptsched_finished(&s, &pp, 1300, true, 10);
    assert_int_equal(s.due_ms, 2250); /* stays in phase */
    assert_int_equal(s.last_seq, 10);
    /* unchanged: skipped, next point of the phase */
    assert_int_equal(ckptsched_decide(&s, 2250, 10), CKPTSCHED_SKIP);
    ckptsched_skipped(&s, &pp, 2260);
    assert_int_equal(s.due_ms, 3250);
    /* a late wake-up skips the missed points instead of catching up on them */
    assert_int_equal(ckptsched_decide(&s, 7000, 11), CKPTSCHED_WRITE);
    ckptsched_finished(&s, &pp, 7010, true, 11);
    assert_int_equal(s.due_ms, 7250);
}

static void test_min_pause_and_failure(void **state)
{
    struct ckptsched_params pp = {1000, 800};
    struct ckptsched_slot s;
    ckptsched_slot_init(&s, &pp, 0, 1, 0);
    assert_int_equal(ckptsched_decide(&s, 0, 5), CKPTSCHED_WRITE);
    /* finished at 950: the next point (1000) is within the pause -> 1750 */
    ckptsched_finished(&s, &pp, 950, true, 5);
    assert_int_equal(s.due_ms, 1750);
    assert_int_equal(ckptsched_decide(&s, 1749, 6), CKPTSCHED_WAIT);
    assert_int_equal(ckptsched_decide(&s, 1750, 6), CKPTSCHED_WRITE);
    /* a slow one finishing at 3500: next point 4000, pause until 4300 */
    ckptsched_finished(&s, &pp, 3500, true, 6);
    assert_int_equal(s.due_ms, 4300);
    /* a failure keeps the last good seq (so the same state is tried again) */
    ckptsched_finished(&s, &pp, 4400, false, 0);
    assert_int_equal(s.last_seq, 6);
    assert_int_equal(s.last_end_ms, 4400);
    assert_int_equal(s.due_ms, 5200);
    assert_int_equal(ckptsched_decide(&s, 5200, 7), CKPTSCHED_WRITE);
    /* min pause 0: exactly the phase */
    struct ckptsched_params np = {1000, 0};
    ckptsched_finished(&s, &np, 5210, true, 7);
    assert_int_equal(s.due_ms, 6000);
}

/* ---- on a real engine ----------------------------------------------------------------- */

/* The fixture's engine, with log retention so that the log floor matters. */
static struct engine_opts ckpt_opts(const char *dir)
{
    struct engine_opts o = opts(dir);
    o.apply.sweep_interval_ms = HOUR;
    o.apply.log_retention_ms = 2 * HOUR;
    o.apply.dedup_window_ms = HOUR; /* shorter: the log is kept for the dedup window too */
    return o;
}

/* What the tests on a real engine share: an engine in a fresh directory (DIR/engine), the
 * checkpoint directory DIR/ckp and the scheduler's metrics. */
struct sched_env {
    char *dir;
    char cdir[600];
    engine *e;
    metrics *reg;
    struct ckptsched_metrics m;
};

static void env_open(struct sched_env *v)
{
    static const double bounds[] = {0.1, 1, 10};
    char edir[600], err[256];
    v->dir = tmpdir_for("cks");
    snprintf(edir, sizeof(edir), "%s/engine", v->dir);
    snprintf(v->cdir, sizeof(v->cdir), "%s/ckp", v->dir);
    struct engine_opts o = ckpt_opts(edir);
    v->e = NULL;
    assert_int_equal(engine_open(&o, &v->e, err, sizeof(err)), EDDY_OK);
    v->reg = metrics_new();
    v->m = (struct ckptsched_metrics){
        metrics_histogram(v->reg, "d_seconds", "d", bounds, 3), metrics_gauge(v->reg, "b", "b"),
        metrics_counter(v->reg, "f_total", "f"), metrics_gauge(v->reg, "t", "t")};
}

static void env_close(struct sched_env *v)
{
    metrics_free(v->reg);
    engine_close(v->e);
    rmrf(v->dir);
    free(v->dir);
}

/* Ingest 'n' view events of 'user', numbered from 'first', one per 'step_ms' of event time. */
static void ingest_user(engine *e, const char *user, int first, int n, int64_t step_ms)
{
    Eddy__V1__Event *ev = calloc((size_t)n, sizeof(*ev));
    Eddy__V1__Event **evs = calloc((size_t)n, sizeof(*evs));
    char (*ids)[160] = calloc((size_t)n, sizeof(*ids));
    assert_true(ev && evs && ids);
    for (int i = 0; i < n; i++) {
        int k = first + i;
        snprintf(ids[i], sizeof(ids[i]), "%s-e%d", user, k);
        eddy__v1__event__init(&ev[i]);
        ev[i].event_id = ids[i];
        ev[i].user_id = (char *)user;
        ev[i].timestamp_ms = T0 + (int64_t)k * step_ms;
        ev[i].event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
        ev[i].product_id = "p1";
        ev[i].category = "books";
        ev[i].price = 5;
        evs[i] = &ev[i];
    }
    struct done d = {0};
    assert_int_equal(engine_ingest(e, evs, (size_t)n, on_done, &d), EDDY_OK);
    engine_flush(e);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.err, EDDY_OK);
    free(ev);
    free(evs);
    free(ids);
}

static uint64_t log_first(engine *e, uint32_t p)
{
    struct engine_partition_view v;
    engine_partition(e, p, &v);
    return v.log_first_seq;
}

/* The log sweep removes what --log-retention allows, but never at or past the floor. */
static void test_log_floor(void **state)
{
    char *dir = tmpdir_for("cks");
    char a[600], b[600];
    snprintf(a, sizeof(a), "%s/a", dir);
    snprintf(b, sizeof(b), "%s/b", dir);
    struct engine_opts oa = ckpt_opts(a), ob = ckpt_opts(b);
    engine *ea = NULL, *eb = NULL;
    char err[256];
    assert_int_equal(engine_open(&oa, &ea, err, sizeof(err)), EDDY_OK);
    assert_int_equal(engine_open(&ob, &eb, err, sizeof(err)), EDDY_OK);
    uint32_t p = partition_of_user("floor-user", NPARTS);
    engine_set_log_floor(eb, p, 30); /* as if the oldest kept checkpoint were at seq 30 */
    /* 10 hours of event time, one event per 5 minutes: 120 records, 2 h retention */
    for (int i = 0; i < 120; i += 10) {
        ingest_user(ea, "floor-user", i, 10, 300000);
        ingest_user(eb, "floor-user", i, 10, 300000);
    }
    uint64_t fa = log_first(ea, p), fb = log_first(eb, p);
    assert_true(fa > 30); /* without a floor the retention moved far past 30 */
    assert_int_equal(fb, 30); /* with one, the log reaches back exactly to it */
    /* the derived state does not depend on the floor: same user model */
    struct engine_partition_view va, vb;
    engine_partition(ea, p, &va);
    engine_partition(eb, p, &vb);
    assert_int_equal(va.next_seq, vb.next_seq);
    assert_int_equal(va.watermark, vb.watermark);
    /* raising the floor lets the next sweep continue */
    engine_set_log_floor(eb, p, UINT64_MAX);
    ingest_user(eb, "floor-user", 120, 24, 300000);
    ingest_user(ea, "floor-user", 120, 24, 300000);
    assert_int_equal(log_first(eb, p), log_first(ea, p));
    engine_close(ea);
    engine_close(eb);
    rmrf(dir);
    free(dir);
}

/* run_one: write, prune to 'keep', floor = oldest kept, metrics; a corrupt newest file is
 * skipped by latest_valid and the floor still covers the older valid one. */
static void test_run_one_prune_floor_metrics(void **state)
{
    struct sched_env env;
    env_open(&env);
    engine *e = env.e;
    const char *cdir = env.cdir;
    struct ckptsched_metrics m = env.m;
    struct ckptsched_opts co = {.dir = cdir, .interval_ms = 1000, .min_pause_ms = 0,
                                .timeout_ms = 60000, .keep = 2, .metrics = m};
    ckptsched *cs = NULL;
    assert_int_equal(ckptsched_new(e, &co, &cs), EDDY_OK);
    uint32_t p = partition_of_user("ck-user", NPARTS);

    uint64_t seqs[3];
    for (int r = 0; r < 3; r++) {
        ingest_user(e, "ck-user", r * 5, 5, 60000);
        struct checkpoint_info ci;
        assert_int_equal(ckptsched_run_one(cs, p, &ci), EDDY_OK);
        seqs[r] = ci.seq;
        assert_int_equal(ci.seq, (uint64_t)(r + 1) * 5);
        assert_int_equal(metric_gauge_value(m.bytes), (double)ci.bytes);
    }
    assert_int_equal(metric_histogram_count(m.duration), 3);
    assert_int_equal(metric_counter_value(m.failures), 0);
    assert_true(metric_gauge_value(m.last_success) > 1.6e9);
    struct checkpoint_file *v = NULL;
    size_t n = 0;
    assert_int_equal(checkpoint_list(cdir, p, &v, &n), EDDY_OK);
    assert_int_equal(n, 2); /* keep 2 */
    assert_int_equal(v[0].seq, seqs[2]);
    assert_int_equal(v[1].seq, seqs[1]);

    /* flip a byte of the newest: latest_valid falls back to the previous one, which the
     * floor (the oldest kept) still covers */
    FILE *f = fopen(v[0].path, "r+b");
    assert_non_null(f);
    fseek(f, 40, SEEK_SET);
    int c = fgetc(f);
    fseek(f, 40, SEEK_SET);
    fputc(c ^ 0x5a, f);
    fclose(f);
    struct checkpoint_info lv;
    assert_int_equal(checkpoint_latest_valid(NULL, cdir, p, &lv), EDDY_OK);
    assert_int_equal(lv.seq, seqs[1]);
    free(v);

    /* a new scheduler over the same directory restores the floor from the files */
    ckptsched_free(cs);
    engine_set_log_floor(e, p, UINT64_MAX);
    assert_int_equal(ckptsched_new(e, &co, &cs), EDDY_OK);
    ingest_user(e, "ck-user", 15, 200, 60000); /* > 2 h: the sweep runs */
    assert_int_equal(log_first(e, p), seqs[1]);

    /* a deadline already passed: EDDY_ERR_TIMEOUT and nothing published */
    assert_int_equal(checkpoint_write_dir_until(NULL, engine_store(e), p, cdir, 1, NULL),
                     EDDY_ERR_TIMEOUT);
    assert_int_equal(checkpoint_list(cdir, p, &v, &n), EDDY_OK);
    assert_int_equal(n, 2);
    assert_int_equal(v[0].seq, seqs[2]);
    free(v);
    /* a failed attempt is counted, and changes neither the files nor the floor */
    char cmd[2000];
    snprintf(cmd, sizeof(cmd), "mv '%s' '%s.away' && touch '%s'", cdir, cdir, cdir);
    assert_int_equal(system(cmd), 0);
    assert_int_not_equal(ckptsched_run_one(cs, p, NULL), EDDY_OK);
    assert_int_equal(metric_counter_value(m.failures), 1);
    assert_int_equal(metric_histogram_count(m.duration), 3);
    ckptsched_free(cs);
    env_close(&env);
}

/* The thread checkpoints the partitions with events, only those, keeps 'keep', and a
 * restart does not rewrite a partition that did not change. */
static void test_thread(void **state)
{
    struct sched_env env;
    env_open(&env);
    engine *e = env.e;
    const char *cdir = env.cdir;
    struct ckptsched_metrics m = env.m;
    struct ckptsched_opts co = {.dir = cdir, .interval_ms = 100, .min_pause_ms = 50,
                                .timeout_ms = 60000, .keep = 2, .metrics = m};
    ckptsched *cs = NULL;
    assert_int_equal(ckptsched_new(e, &co, &cs), EDDY_OK);
    assert_int_equal(ckptsched_start(cs), EDDY_OK);
    uint32_t p = partition_of_user("t-user", NPARTS);
    for (int r = 0; r < 6; r++) {
        ingest_user(e, "t-user", r * 3, 3, 60000);
        usleep(150000);
    }
    uint64_t seq_now;
    {
        struct engine_partition_view v;
        engine_partition(e, p, &v);
        seq_now = v.next_seq;
    }
    /* wait for the checkpoint of the final state */
    struct checkpoint_info lv = {0};
    for (int i = 0; i < 100 && lv.seq != seq_now; i++) {
        usleep(50000);
        if (checkpoint_latest_valid(NULL, cdir, p, &lv) != EDDY_OK)
            lv.seq = 0;
    }
    assert_int_equal(lv.seq, seq_now);
    ckptsched_free(cs);
    uint64_t written = metric_histogram_count(m.duration);
    assert_true(written >= 2);
    assert_int_equal(metric_counter_value(m.failures), 0);
    for (uint32_t q = 0; q < NPARTS; q++) {
        struct checkpoint_file *v = NULL;
        size_t n = 0;
        assert_int_equal(checkpoint_list(cdir, q, &v, &n), EDDY_OK);
        if (q == p) {
            assert_true(n >= 1 && n <= 2);
        } else {
            assert_int_equal(n, 0); /* no events: no checkpoint */
        }
        free(v);
    }
    /* restart: nothing changed, nothing written */
    assert_int_equal(ckptsched_new(e, &co, &cs), EDDY_OK);
    assert_int_equal(ckptsched_start(cs), EDDY_OK);
    usleep(400000);
    ckptsched_free(cs);
    assert_int_equal(metric_histogram_count(m.duration), written);
    env_close(&env);
}

/* With several threads every partition that has events is checkpointed by the thread of
 * its stripe (p % threads), up to its current seq; the others are not written. */
static void test_threads(void **state)
{
    (void)state;
    struct sched_env env;
    env_open(&env);
    engine *e = env.e;
    const char *cdir = env.cdir;
    struct ckptsched_metrics m = env.m;
    bool touched[NPARTS] = {false};
    for (int u = 0; u < 12; u++) {
        char user[32];
        snprintf(user, sizeof(user), "threads-user-%d", u);
        ingest_user(e, user, 0, 2, 60000);
        touched[partition_of_user(user, NPARTS)] = true;
    }
    engine_flush(e);
    struct ckptsched_opts co = {.dir = cdir, .interval_ms = 100, .min_pause_ms = 50,
                                .timeout_ms = 60000, .keep = 2, .threads = 3, .metrics = m};
    ckptsched *cs = NULL;
    assert_int_equal(ckptsched_new(e, &co, &cs), EDDY_OK);
    assert_int_equal(ckptsched_start(cs), EDDY_OK);
    for (uint32_t q = 0; q < NPARTS; q++) {
        if (!touched[q])
            continue;
        struct engine_partition_view v;
        engine_partition(e, q, &v);
        struct checkpoint_info lv = {0};
        for (int i = 0; i < 200 && lv.seq != v.next_seq; i++) {
            usleep(20000);
            if (checkpoint_latest_valid(NULL, cdir, q, &lv) != EDDY_OK)
                lv.seq = 0;
        }
        assert_int_equal(lv.seq, v.next_seq);
    }
    ckptsched_free(cs);
    assert_int_equal(metric_counter_value(m.failures), 0);
    for (uint32_t q = 0; q < NPARTS; q++) {
        struct checkpoint_file *v = NULL;
        size_t n = 0;
        assert_int_equal(checkpoint_list(cdir, q, &v, &n), EDDY_OK);
        assert_int_equal(n > 0, touched[q]);
        free(v);
    }
    env_close(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stagger),
        cmocka_unit_test(test_due_and_skip_unchanged),
        cmocka_unit_test(test_min_pause_and_failure),
        cmocka_unit_test(test_log_floor),
        cmocka_unit_test(test_run_one_prune_floor_metrics),
        cmocka_unit_test(test_thread),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
