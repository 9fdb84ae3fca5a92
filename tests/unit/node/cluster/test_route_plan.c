/* node/cluster/route_plan.c: the routing plan of an Ingest batch and the order of a stale
 * read's copies, as pure functions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/partition.h"
#include "node/cluster/route_plan.h"

#define N 500
#define P 16

static Eddy__V1__Event ev[N];
static Eddy__V1__Event *evp[N];
static char users[N][16];

static void fill(void)
{
    for (size_t i = 0; i < N; i++) {
        eddy__v1__event__init(&ev[i]);
        snprintf(users[i], sizeof(users[i]), "u-%zu", (i * 7) % 61);
        ev[i].user_id = users[i];
        evp[i] = &ev[i];
    }
}

static void test_buckets_every_event_once_in_batch_order(void **state)
{
    fill();
    struct route_plan pl;
    assert_int_equal(route_plan_init(&pl, evp, N, P), EDDY_OK);
    assert_int_equal(pl.start[0], 0);
    assert_int_equal(pl.start[P], N);
    size_t seen = 0;
    for (uint32_t p = 0; p < P; p++) {
        for (size_t k = pl.start[p]; k < pl.start[p + 1]; k++) {
            Eddy__V1__Event *e = pl.order[k];
            assert_int_equal(partition_of_user(e->user_id, P), p);
            if (k > pl.start[p]) /* batch order kept within the partition */
                assert_true(pl.order[k - 1] < e);
            seen++;
        }
    }
    assert_int_equal(seen, N);
    route_plan_release(&pl);

    assert_int_equal(route_plan_init(&pl, evp, 0, P), EDDY_OK); /* an empty batch */
    for (uint32_t p = 0; p < P; p++)
        assert_int_equal(route_plan_count(&pl, p), 0);
    route_plan_release(&pl);
}

static void test_groups_pending_partitions_by_owner(void **state)
{
    fill();
    struct route_plan pl;
    assert_int_equal(route_plan_init(&pl, evp, N, P), EDDY_OK);
    bool pending[P];
    char owner[P][CLUSTER_ADDR_MAX];
    for (uint32_t p = 0; p < P; p++) {
        pending[p] = route_plan_count(&pl, p) > 0;
        snprintf(owner[p], sizeof(owner[p]), "10.0.0.%u:7070", p % 3);
    }
    uint32_t parts[P];
    struct route_group g[4];
    size_t ng = route_plan_group(&pl, pending, (const char(*)[CLUSTER_ADDR_MAX])owner, parts, g, 4);
    assert_int_equal(ng, 3);
    size_t total = 0;
    for (size_t k = 0; k < ng; k++) {
        for (size_t i = 0; i < g[k].nparts; i++) {
            uint32_t p = g[k].parts[i];
            assert_string_equal(owner[p], g[k].addr);
            assert_true(pending[p]);
            if (i > 0)
                assert_true(g[k].parts[i - 1] < p);
            total++;
        }
    }
    size_t want = 0;
    for (uint32_t p = 0; p < P; p++)
        want += pending[p];
    assert_int_equal(total, want);

    /* acknowledged partitions, partitions without a live owner and owners beyond the
     * limit are left out (the router retries them) */
    pending[0] = false;
    owner[1][0] = '\0';
    ng = route_plan_group(&pl, pending, (const char(*)[CLUSTER_ADDR_MAX])owner, parts, g, 1);
    assert_int_equal(ng, 1);
    for (size_t i = 0; i < g[0].nparts; i++) {
        assert_int_not_equal(g[0].parts[i], 0);
        assert_int_not_equal(g[0].parts[i], 1);
        assert_string_equal(owner[g[0].parts[i]], g[0].addr);
    }
    route_plan_release(&pl);
}

static void part_of(struct cluster_part *cp, uint32_t n)
{
    memset(cp, 0, sizeof(*cp));
    cp->nreplicas = n;
    for (uint32_t i = 0; i < n; i++)
        snprintf(cp->replicas[i], sizeof(cp->replicas[i]), "n%u", i);
    snprintf(cp->owner, sizeof(cp->owner), "%s", n ? cp->replicas[0] : "");
}

/* A stale-allowed read: this node's copy first, then the followers round-robin, the
 * leader last; every copy exactly once. */
static void test_read_order(void **state)
{
    (void)state;
    struct cluster_part cp;
    uint32_t o[CLUSTER_REPLICAS_MAX];

    part_of(&cp, 3); /* an ingest node (no copy): followers by turn, then the leader */
    assert_int_equal(route_plan_read_order(&cp, "ingest-1", 0, o), 3);
    assert_int_equal(o[0], 1);
    assert_int_equal(o[1], 2);
    assert_int_equal(o[2], 0);
    assert_int_equal(route_plan_read_order(&cp, "ingest-1", 1, o), 3);
    assert_int_equal(o[0], 2);
    assert_int_equal(o[1], 1);
    assert_int_equal(o[2], 0);

    /* a follower's own copy comes first whatever the turn */
    for (uint32_t turn = 0; turn < 4; turn++) {
        assert_int_equal(route_plan_read_order(&cp, "n2", turn, o), 3);
        assert_int_equal(o[0], 2);
        assert_int_equal(o[1], 1);
        assert_int_equal(o[2], 0);
    }
    /* the leader's own node reads locally: the leader first, no follower asked before */
    assert_int_equal(route_plan_read_order(&cp, "n0", 5, o), 3);
    assert_int_equal(o[0], 0);

    /* R = 1: only the leader; unassigned: nothing */
    part_of(&cp, 1);
    assert_int_equal(route_plan_read_order(&cp, "x", 7, o), 1);
    assert_int_equal(o[0], 0);
    part_of(&cp, 0);
    assert_int_equal(route_plan_read_order(&cp, "x", 7, o), 0);

    /* spreads the reads: over R - 1 turns each follower comes first once */
    part_of(&cp, CLUSTER_REPLICAS_MAX);
    uint32_t first[CLUSTER_REPLICAS_MAX] = {0};
    for (uint32_t turn = 0; turn < CLUSTER_REPLICAS_MAX - 1; turn++) {
        size_t n = route_plan_read_order(&cp, "", turn, o);
        assert_int_equal(n, CLUSTER_REPLICAS_MAX);
        assert_int_equal(o[n - 1], 0);
        first[o[0]]++;
        bool seen[CLUSTER_REPLICAS_MAX] = {false};
        for (size_t k = 0; k < n; k++) {
            assert_false(seen[o[k]]);
            seen[o[k]] = true;
        }
    }
    assert_int_equal(first[0], 0);
    for (uint32_t i = 1; i < CLUSTER_REPLICAS_MAX; i++)
        assert_int_equal(first[i], 1);
}

/* A try written but not acknowledged (110 new events, 5 of them late, 3 duplicates of
 * earlier batches), then its retry, which finds all 113 recorded: the batch answers 110
 * accepted, 5 late, 3 duplicates, as one acknowledged try would have. */
static void test_tally_counts_an_unacknowledged_try_once(void **state)
{
    (void)state;
    struct route_tally t = {0};
    route_tally_unacked(&t, 110, 5);
    uint32_t accepted = 0, duplicates = 113, late = 0;
    route_tally_acked(&t, &accepted, &duplicates, &late);
    assert_int_equal(accepted, 110);
    assert_int_equal(duplicates, 3);
    assert_int_equal(late, 5);

    /* two unacknowledged tries: the second found the first's events recorded */
    struct route_tally two = {0};
    route_tally_unacked(&two, 40, 0);
    route_tally_unacked(&two, 0, 0);
    accepted = 2, duplicates = 40, late = 1; /* 2 more events came in with the retry */
    route_tally_acked(&two, &accepted, &duplicates, &late);
    assert_int_equal(accepted, 42);
    assert_int_equal(duplicates, 0);
    assert_int_equal(late, 1);

    /* nothing written before: the acknowledged try's counts as they are */
    struct route_tally none = {0};
    accepted = 7, duplicates = 9, late = 2;
    route_tally_acked(&none, &accepted, &duplicates, &late);
    assert_int_equal(accepted, 7);
    assert_int_equal(duplicates, 9);
    assert_int_equal(late, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_every_event_once_in_batch_order),
        cmocka_unit_test(test_groups_pending_partitions_by_owner),
        cmocka_unit_test(test_read_order),
        cmocka_unit_test(test_tally_counts_an_unacknowledged_try_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
