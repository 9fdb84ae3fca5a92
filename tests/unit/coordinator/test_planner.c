/* The move planner: live moves with at most K at once, flip on ready, delete on done,
 * cancels, revert after a dead target, failover of a dead owner, phase repair. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "coordinator/planner.h"

#define P 8

struct fx {
    struct assign_node nodes[4];
    size_t n;
    struct cluster_map cur, target, next;
    struct plan_rec recs[P];
    struct plan_action acts[2 * P];
    size_t nacts;
    struct plan_params pp;
};

static void set_owner(struct cluster_map *m, uint32_t p, const char *id, uint64_t epoch)
{
    snprintf(m->parts[p].owner, sizeof(m->parts[p].owner), "%s", id);
    m->parts[p].epoch = epoch;
}

static void add_node(struct fx *f, const char *id);

/* Nodes 'a' and 'x'; every partition owned by "a" at epoch 3; the assigner's target
 * gives the odd ones to "b" if 'spread', else keeps them all with "a". */
static struct fx *fx_new(const char *x, bool spread)
{
    struct fx *f = calloc(1, sizeof(*f));
    cluster_map_init(&f->cur, P);
    cluster_map_init(&f->target, P);
    cluster_map_init(&f->next, P);
    f->pp = (struct plan_params){.max_moves = 2, .move_timeout_ms = 60000, .now_ms = 1000000};
    add_node(f, "a");
    add_node(f, x);
    for (uint32_t p = 0; p < P; p++) {
        set_owner(&f->cur, p, "a", 3);
        set_owner(&f->target, p, spread && p % 2 ? "b" : "a", 3);
    }
    return f;
}

static void fx_free(struct fx *f)
{
    cluster_map_release(&f->cur);
    cluster_map_release(&f->target);
    cluster_map_release(&f->next);
    free(f);
}

static void add_node(struct fx *f, const char *id)
{
    struct assign_node *n = &f->nodes[f->n++];
    snprintf(n->id, sizeof(n->id), "%s", id);
    n->state = true;
}

static void set_rec(struct fx *f, uint32_t p, const char *from, const char *to, uint64_t epoch,
                    enum move_phase ph, int64_t started)
{
    struct plan_rec *r = &f->recs[p];
    r->present = true;
    r->mod = 100 + p;
    r->m = (struct cluster_move){.partition = p, .epoch = epoch, .phase = ph, .started_ms = started};
    snprintf(r->m.from, sizeof(r->m.from), "%s", from);
    snprintf(r->m.to, sizeof(r->m.to), "%s", to);
}

static size_t plan(struct fx *f)
{
    return planner_plan(f->nodes, f->n, &f->cur, &f->target, f->recs, &f->pp, &f->next, f->acts,
                        &f->nacts);
}

static size_t count_ops(const struct fx *f, enum plan_op op)
{
    size_t k = 0;
    for (size_t i = 0; i < f->nacts; i++)
        k += f->acts[i].op == op;
    return k;
}

/* A live owner's partitions move, never more than K at once, and keep their owner. */
static void test_live_owner_moves_at_most_k(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", true);
    assert_int_equal(plan(f), 0);
    assert_int_equal(f->nacts, 2);
    for (size_t i = 0; i < f->nacts; i++) {
        assert_int_equal(f->acts[i].op, PLAN_CREATE);
        assert_string_equal(f->acts[i].m.from, "a");
        assert_string_equal(f->acts[i].m.to, "b");
        assert_int_equal(f->acts[i].m.epoch, 3);
        assert_int_equal(f->acts[i].m.phase, MOVE_COPY);
        assert_int_equal(f->acts[i].m.started_ms, 1000000);
    }
    for (uint32_t p = 0; p < P; p++)
        assert_string_equal(f->next.parts[p].owner, "a");
    /* with the two running, nothing new starts */
    set_rec(f, 1, "a", "b", 3, MOVE_COPY, 1000000);
    set_rec(f, 3, "a", "b", 3, MOVE_COPY, 1000000);
    assert_int_equal(plan(f), 0);
    assert_int_equal(f->nacts, 0);
    fx_free(f);
}

/* With several targets, the moves at once go to different targets first (a target copies
 * one partition at a time). */
static void test_moves_spread_over_targets(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", false);
    add_node(f, "c");
    for (uint32_t p = 0; p < P; p++) /* b gets 0-2, c gets 3-5 */
        set_owner(&f->target, p, p < 3 ? "b" : p < 6 ? "c" : "a", 3);
    plan(f);
    assert_int_equal(f->nacts, 2);
    assert_string_equal(f->acts[0].m.to, "b");
    assert_int_equal(f->acts[0].m.partition, 0);
    assert_string_equal(f->acts[1].m.to, "c");
    assert_int_equal(f->acts[1].m.partition, 3);
    fx_free(f);
}

/* ready -> flip (epoch + 1, phase flipped); done -> delete; a new move takes the slot. */
static void test_ready_flips_done_deletes(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", true);
    set_owner(&f->cur, 7, "b", 4); /* 7 already moved: its record says done */
    set_rec(f, 7, "a", "b", 3, MOVE_DONE, 1);
    set_rec(f, 1, "a", "b", 3, MOVE_READY, 1);
    assert_int_equal(plan(f), 1);
    assert_string_equal(f->next.parts[1].owner, "b");
    assert_int_equal(f->next.parts[1].epoch, 4);
    assert_int_equal(count_ops(f, PLAN_FLIPPED), 1);
    assert_int_equal(count_ops(f, PLAN_DELETE), 1);
    assert_int_equal(count_ops(f, PLAN_CREATE), 1); /* the second slot: partition 3 */
    for (size_t i = 0; i < f->nacts; i++) {
        if (f->acts[i].op == PLAN_FLIPPED) {
            assert_int_equal(f->acts[i].m.partition, 1);
            assert_int_equal(f->acts[i].m.phase, MOVE_FLIPPED);
            assert_int_equal(f->acts[i].mod, 101);
        } else if (f->acts[i].op == PLAN_DELETE) {
            assert_int_equal(f->acts[i].m.partition, 7);
        } else {
            assert_int_equal(f->acts[i].m.partition, 3);
        }
    }
    fx_free(f);
}

/* Cancels: target gone, source gone (then failover at once), timeout; after the flip a
 * dead target gives the partition back to its live source. */
static void test_cancel_revert_failover(void **state)
{
    (void)state;
    struct fx *f = fx_new("c", false); /* "b" is gone */
    set_rec(f, 0, "a", "b", 3, MOVE_COPY, 1000000);      /* target gone: cancel */
    set_rec(f, 1, "a", "c", 3, MOVE_COPY, 1);            /* too old: cancel */
    set_owner(&f->cur, 2, "b", 4);                       /* flipped to b, b died */
    set_rec(f, 2, "a", "b", 3, MOVE_FLIPPED, 1000000);
    set_owner(&f->cur, 4, "d", 5);                       /* owner d is gone */
    set_owner(&f->target, 4, "c", 6);
    assert_int_equal(plan(f), 2);
    assert_string_equal(f->next.parts[2].owner, "a"); /* back to the source */
    assert_int_equal(f->next.parts[2].epoch, 5);
    assert_string_equal(f->next.parts[4].owner, "c"); /* failover, no move */
    assert_int_equal(f->next.parts[4].epoch, 6);
    assert_int_equal(count_ops(f, PLAN_DELETE), 3);
    assert_int_equal(count_ops(f, PLAN_CREATE), 0);
    fx_free(f);
}

/* A flip whose phase write was lost (map names the target, record says ready) is
 * repaired; nothing flips twice. */
static void test_phase_repair(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", false);
    set_owner(&f->cur, 5, "b", 4);
    set_owner(&f->target, 5, "b", 4);
    set_rec(f, 5, "a", "b", 3, MOVE_READY, 1000000);
    assert_int_equal(plan(f), 0);
    assert_int_equal(f->nacts, 1);
    assert_int_equal(f->acts[0].op, PLAN_FLIPPED);
    assert_int_equal(f->next.parts[5].epoch, 4);
    fx_free(f);
}

/* Load: a hot node gives its hottest partition to the quietest and takes a cold one back
 * (the shares of partitions stay); balanced, due-less, busy or small differences: nothing. */
static void test_load_swap(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", false);
    for (uint32_t p = 0; p < P; p++) { /* a: 0-3, b: 4-7 */
        set_owner(&f->cur, p, p < 4 ? "a" : "b", 3);
        set_owner(&f->target, p, p < 4 ? "a" : "b", 3);
    }
    double rates[P] = {900, 800, 10, 10, 50, 50, 5, 0};
    f->pp.rates = rates;
    f->pp.load_imbalance = 0.25;
    f->pp.load_min_eps = 100;
    f->pp.load_due = true;
    assert_int_equal(plan(f), 0);
    assert_int_equal(f->nacts, 2);
    /* a: 1720, b: 105. Best: 1 (800) to b, 7 (0) back: 920 / 905 */
    assert_int_equal(f->acts[0].op, PLAN_CREATE);
    assert_true(f->acts[0].load);
    assert_int_equal(f->acts[0].m.partition, 1);
    assert_string_equal(f->acts[0].m.from, "a");
    assert_string_equal(f->acts[0].m.to, "b");
    assert_int_equal(f->acts[1].m.partition, 7);
    assert_string_equal(f->acts[1].m.to, "a");
    /* not due, or a move running: nothing */
    f->pp.load_due = false;
    plan(f);
    assert_int_equal(f->nacts, 0);
    f->pp.load_due = true;
    set_rec(f, 2, "a", "b", 3, MOVE_COPY, 1000000);
    set_owner(&f->target, 2, "b", 4);
    plan(f);
    for (size_t i = 0; i < f->nacts; i++)
        assert_false(f->acts[i].load);
    f->recs[2].present = false;
    set_owner(&f->target, 2, "a", 3);
    /* balanced enough: nothing */
    double even[P] = {100, 100, 100, 100, 100, 100, 100, 90};
    f->pp.rates = even;
    plan(f);
    assert_int_equal(f->nacts, 0);
    fx_free(f);
}

static void set_pair(struct cluster_map *m, uint32_t p, const char *lead, const char *follow,
                     uint64_t epoch)
{
    cluster_part_set_single(&m->parts[p], lead);
    snprintf(m->parts[p].replicas[1], CLUSTER_ID_MAX, "%s", follow);
    m->parts[p].nreplicas = 2;
    m->parts[p].epoch = epoch;
}

/* The plan starts exactly one move, to 'to', and leaves partition p's entry [lead, follow]
 * at 'epoch' (so nothing to write). */
static void assert_move_started(struct fx *f, uint32_t p, const char *to, const char *lead,
                                const char *follow, uint64_t epoch)
{
    assert_int_equal(plan(f), 0);
    assert_int_equal(f->nacts, 1);
    assert_int_equal(f->acts[0].op, PLAN_CREATE);
    assert_string_equal(f->acts[0].m.to, to);
    assert_string_equal(f->next.parts[p].owner, lead);
    assert_int_equal(f->next.parts[p].epoch, epoch);
    assert_int_equal(f->next.parts[p].nreplicas, 2);
    assert_string_equal(f->next.parts[p].replicas[0], lead);
    assert_string_equal(f->next.parts[p].replicas[1], follow);
}

/* R = 2, the leader of every partition dies: the assigner promotes the follower and the
 * planner applies it at once, epoch + 1, with no move; the new follower needs none either. */
static void test_promotion_without_move(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", false);
    f->n = 0;
    add_node(f, "b");
    add_node(f, "c");
    for (uint32_t p = 0; p < P; p++)
        set_pair(&f->cur, p, "a", "b", 3);
    struct assign_params ap = {.replication_factor = 2};
    assigner_assign(f->nodes, f->n, &f->cur, &ap, &f->target);
    assert_int_equal(plan(f), P);
    assert_int_equal(f->nacts, 0);
    for (uint32_t p = 0; p < P; p++) {
        assert_string_equal(f->next.parts[p].owner, "b");
        assert_int_equal(f->next.parts[p].epoch, 4);
        assert_int_equal(f->next.parts[p].nreplicas, 2);
        assert_string_equal(f->next.parts[p].replicas[0], "b");
        assert_string_equal(f->next.parts[p].replicas[1], "c");
    }
    fx_free(f);
}

/* Followers change without a move or an epoch; a leader that changes while alive still
 * moves live, and until the flip its set is the old leader and the target's followers. */
static void test_followers_and_live_move(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", false);
    add_node(f, "c");
    set_pair(&f->cur, 0, "a", "b", 3);
    set_pair(&f->target, 0, "a", "c", 3); /* a follower replaced */
    set_pair(&f->cur, 1, "a", "c", 3);
    set_pair(&f->target, 1, "b", "c", 4); /* the leader moves to b */
    for (uint32_t p = 2; p < P; p++) {
        set_pair(&f->cur, p, "a", "c", 3);
        set_pair(&f->target, p, "a", "c", 3);
    }
    assert_int_equal(plan(f), 1);
    assert_int_equal(f->next.parts[0].epoch, 3);
    assert_string_equal(f->next.parts[0].replicas[1], "c");
    assert_int_equal(f->nacts, 1); /* once, though two moves may run */
    assert_int_equal(f->acts[0].op, PLAN_CREATE);
    assert_int_equal(f->acts[0].m.partition, 1);
    assert_string_equal(f->next.parts[1].owner, "a");
    assert_int_equal(f->next.parts[1].nreplicas, 2);
    assert_string_equal(f->next.parts[1].replicas[1], "c");
    /* ready: the flip gives the target's set */
    set_rec(f, 1, "a", "b", 3, MOVE_READY, 1000000);
    memcpy(&f->cur.parts[0], &f->next.parts[0], sizeof(f->cur.parts[0]));
    assert_int_equal(plan(f), 1);
    assert_string_equal(f->next.parts[1].owner, "b");
    assert_int_equal(f->next.parts[1].epoch, 4);
    assert_string_equal(f->next.parts[1].replicas[0], "b");
    assert_string_equal(f->next.parts[1].replicas[1], "c");
    fx_free(f);
}

/* A leader moving live to its own follower (the assigner's leader shares, or a move for
 * load) keeps that follower listed until the flip: its copy stays the replicated log's,
 * one the in-sync record names, and is never replaced by the move's checkpoint. */
static void test_move_to_follower_keeps_it_listed(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", false);
    add_node(f, "c");
    for (uint32_t p = 0; p < P; p++) {
        set_pair(&f->cur, p, "a", "c", 3);
        set_pair(&f->target, p, "a", "c", 3);
    }
    set_pair(&f->cur, 1, "b", "c", 3);
    set_pair(&f->target, 1, "c", "b", 4); /* the leadership goes to the follower */
    assert_move_started(f, 1, "c", "b", "c", 3);
    /* a move for load to the follower, the assigner's set unchanged: listed as well */
    set_pair(&f->target, 1, "b", "c", 3);
    set_rec(f, 1, "b", "c", 3, MOVE_COPY, 1000000);
    assert_int_equal(plan(f), 0);
    assert_int_equal(f->next.parts[1].nreplicas, 2);
    assert_string_equal(f->next.parts[1].replicas[1], "c");
    /* ready: the flip makes it the leader, the source its follower */
    set_pair(&f->target, 1, "c", "b", 4);
    set_rec(f, 1, "b", "c", 3, MOVE_READY, 1000000);
    assert_int_equal(plan(f), 1);
    assert_string_equal(f->next.parts[1].owner, "c");
    assert_int_equal(f->next.parts[1].epoch, 4);
    assert_string_equal(f->next.parts[1].replicas[0], "c");
    assert_string_equal(f->next.parts[1].replicas[1], "b");
    fx_free(f);
}

/* A leader moving live to a node that is no replica of the partition (a drain, a join, a
 * move for load) keeps the followers it has listed until the flip, in addition to the
 * target's: with R = 2 and the target's follower the leader itself, listing the target's
 * followers alone left the leader alone (one copy per acknowledgement, its in-sync record
 * naming a follower that no longer followed). A follower that dies meanwhile stays listed
 * (the leader's in-sync clock handles it); at the flip the target's set applies. */
static void test_move_keeps_source_followers(void **state)
{
    (void)state;
    struct fx *f = fx_new("b", false);
    add_node(f, "c");
    for (uint32_t p = 0; p < P; p++) {
        set_pair(&f->cur, p, "a", "b", 3);
        set_pair(&f->target, p, "a", "b", 3);
    }
    set_pair(&f->target, 2, "c", "a", 4); /* the leader moves to c, a follows it */
    assert_move_started(f, 2, "c", "a", "b", 3);
    /* copying, b dead: still listed (a refuses writes rather than acknowledge alone) */
    set_rec(f, 2, "a", "c", 3, MOVE_COPY, 1000000);
    f->nodes[1].state = false;
    assert_int_equal(plan(f), 0);
    assert_int_equal(f->next.parts[2].nreplicas, 2);
    assert_string_equal(f->next.parts[2].replicas[1], "b");
    f->nodes[1].state = true;
    /* a target with a follower of its own: added after the source's, c never listed */
    set_pair(&f->target, 2, "c", "d", 4);
    assert_int_equal(plan(f), 1);
    assert_int_equal(f->next.parts[2].nreplicas, 3);
    assert_string_equal(f->next.parts[2].replicas[1], "b");
    assert_string_equal(f->next.parts[2].replicas[2], "d");
    assert_false(cluster_part_has(&f->next.parts[2], "c"));
    /* at most CLUSTER_REPLICAS_MAX, the source's followers first */
    memcpy(&f->cur.parts[2], &f->next.parts[2], sizeof(f->cur.parts[2]));
    snprintf(f->cur.parts[2].replicas[3], CLUSTER_ID_MAX, "x");
    f->cur.parts[2].nreplicas = 4;
    cluster_part_set_single(&f->target.parts[2], "c");
    const char *tf[] = {"y", "z", "d"};
    for (uint32_t r = 0; r < 3; r++)
        snprintf(f->target.parts[2].replicas[r + 1], CLUSTER_ID_MAX, "%s", tf[r]);
    f->target.parts[2].nreplicas = 4;
    f->target.parts[2].epoch = 4;
    assert_int_equal(plan(f), 1);
    assert_int_equal(f->next.parts[2].nreplicas, CLUSTER_REPLICAS_MAX);
    const char *want[] = {"a", "b", "d", "x", "y"};
    for (uint32_t r = 0; r < CLUSTER_REPLICAS_MAX; r++)
        assert_string_equal(f->next.parts[2].replicas[r], want[r]);
    /* ready: the flip gives the target's set; b and x are no replicas any more */
    memcpy(&f->cur.parts[2], &f->next.parts[2], sizeof(f->cur.parts[2]));
    set_pair(&f->target, 2, "c", "a", 4);
    set_rec(f, 2, "a", "c", 3, MOVE_READY, 1000000);
    assert_int_equal(plan(f), 1);
    assert_int_equal(count_ops(f, PLAN_FLIPPED), 1);
    assert_string_equal(f->next.parts[2].owner, "c");
    assert_int_equal(f->next.parts[2].epoch, 4);
    assert_int_equal(f->next.parts[2].nreplicas, 2);
    assert_string_equal(f->next.parts[2].replicas[0], "c");
    assert_string_equal(f->next.parts[2].replicas[1], "a");
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_promotion_without_move),
        cmocka_unit_test(test_followers_and_live_move),
        cmocka_unit_test(test_move_to_follower_keeps_it_listed),
        cmocka_unit_test(test_move_keeps_source_followers),
        cmocka_unit_test(test_live_owner_moves_at_most_k),
        cmocka_unit_test(test_ready_flips_done_deletes),
        cmocka_unit_test(test_cancel_revert_failover),
        cmocka_unit_test(test_phase_repair),
        cmocka_unit_test(test_load_swap),
        cmocka_unit_test(test_moves_spread_over_targets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
