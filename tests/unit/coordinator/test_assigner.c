/* The assigner: balance of leaders and followers, minimal movement, determinism, epochs,
 * draining, no nodes, zones, promotion of in-sync followers, R = 1 as before replicas. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "coordinator/assigner.h"

#define P 256

static struct cluster_map empty_map(void)
{
    struct cluster_map a = {P, 0, calloc(P, sizeof(struct cluster_part))};
    return a;
}

static struct assign_node node(const char *id)
{
    struct assign_node n = {{0}, true, false, ""};
    snprintf(n.id, sizeof(n.id), "%s", id);
    return n;
}

static void assert_balanced(const struct cluster_map *a, const struct assign_node *nodes,
                            size_t n)
{
    size_t eligible = 0, total = 0;
    for (size_t i = 0; i < n; i++)
        eligible += nodes[i].state && !nodes[i].draining;
    for (size_t i = 0; i < n; i++) {
        size_t c = assigner_count(a, nodes[i].id);
        if (!nodes[i].state || nodes[i].draining) {
            assert_int_equal(c, 0);
            continue;
        }
        assert_true(c == P / eligible || c == P / eligible + 1);
        total += c;
    }
    assert_int_equal(total, P);
}

static void test_initial_and_balanced(void **state)
{
    struct assign_node nodes[] = {node("b"), node("a"), node("c")};
    struct cluster_map cur = empty_map(), next = empty_map();
    size_t moved = assigner_compute(nodes, 3, &cur, &next);
    assert_int_equal(moved, P);
    assert_balanced(&next, nodes, 3);
    for (uint32_t p = 0; p < P; p++)
        assert_int_equal(next.parts[p].epoch, 1);
    free(cur.parts);
    free(next.parts);
}

static void test_stable_and_deterministic(void **state)
{
    struct assign_node n1[] = {node("a"), node("b"), node("c")};
    struct assign_node n2[] = {node("c"), node("a"), node("b")};
    struct cluster_map cur = empty_map(), x = empty_map(), y = empty_map(), z = empty_map();
    assigner_compute(n1, 3, &cur, &x);
    assigner_compute(n2, 3, &cur, &y);
    assert_memory_equal(x.parts, y.parts, P * sizeof(struct cluster_part));
    /* recomputing on a balanced map moves nothing */
    assert_int_equal(assigner_compute(n1, 3, &x, &z), 0);
    assert_memory_equal(x.parts, z.parts, P * sizeof(struct cluster_part));
    free(cur.parts);
    free(x.parts);
    free(y.parts);
    free(z.parts);
}

static void test_scale_out_minimal(void **state)
{
    struct assign_node three[] = {node("a"), node("b"), node("c")};
    struct assign_node four[] = {node("a"), node("b"), node("c"), node("d")};
    struct cluster_map cur = empty_map(), a = empty_map(), b = empty_map();
    assigner_compute(three, 3, &cur, &a);
    size_t moved = assigner_compute(four, 4, &a, &b);
    assert_int_equal(moved, P / 4); /* only the new node's share moves */
    assert_balanced(&b, four, 4);
    for (uint32_t p = 0; p < P; p++) {
        if (strcmp(a.parts[p].owner, b.parts[p].owner) != 0) {
            assert_string_equal(b.parts[p].owner, "d"); /* moves go only to the new node */
            assert_int_equal(b.parts[p].epoch, a.parts[p].epoch + 1);
        } else {
            assert_int_equal(b.parts[p].epoch, a.parts[p].epoch);
        }
    }
    free(cur.parts);
    free(a.parts);
    free(b.parts);
}

static void test_node_lost_and_drain(void **state)
{
    struct assign_node three[] = {node("a"), node("b"), node("c")};
    struct assign_node two[] = {node("a"), node("c")};
    struct cluster_map cur = empty_map(), a = empty_map(), b = empty_map(), c = empty_map();
    assigner_compute(three, 3, &cur, &a);
    size_t owned_b = assigner_count(&a, "b");
    assert_int_equal(assigner_compute(two, 2, &a, &b), owned_b); /* only b's partitions move */
    assert_balanced(&b, two, 2);
    /* draining: c gives everything away, while still alive */
    struct assign_node drain[] = {node("a"), node("c")};
    drain[1].draining = true;
    size_t owned_c = assigner_count(&b, "c");
    assert_int_equal(assigner_compute(drain, 2, &b, &c), owned_c);
    assert_int_equal(assigner_count(&c, "c"), 0);
    assert_int_equal(assigner_count(&c, "a"), P);
    free(cur.parts);
    free(a.parts);
    free(b.parts);
    free(c.parts);
}

static void test_no_eligible_nodes(void **state)
{
    struct assign_node ingest_only[] = {node("i1")};
    ingest_only[0].state = false;
    struct cluster_map cur = empty_map(), next = empty_map();
    snprintf(cur.parts[5].owner, CLUSTER_ID_MAX, "gone");
    cur.parts[5].epoch = 7;
    assert_int_equal(assigner_compute(ingest_only, 1, &cur, &next), 0);
    assert_string_equal(next.parts[5].owner, "gone");
    assert_int_equal(next.parts[5].epoch, 7);
    assert_int_equal(assigner_compute(NULL, 0, &cur, &next), 0);
    free(cur.parts);
    free(next.parts);
}

/* --- replicas ---------------------------------------------------------------------------- */

static struct cluster_map map_of(uint32_t np)
{
    struct cluster_map a = {0};
    assert_int_equal(cluster_map_init(&a, np), EDDY_OK);
    return a;
}

static size_t eligible_of(const struct assign_node *nodes, size_t n)
{
    size_t e = 0;
    for (size_t i = 0; i < n; i++)
        e += nodes[i].state && !nodes[i].draining;
    return e;
}

/* Every partition has min(R, eligible) distinct eligible replicas, the owner first; leaders
 * and followers each within floor/ceil of their share. */
static void assert_replicas(const struct cluster_map *a, const struct assign_node *nodes,
                            size_t n, uint32_t R)
{
    size_t e = eligible_of(nodes, n);
    uint32_t r_eff = R < e ? R : (uint32_t)e;
    size_t fol = (size_t)a->nparts * (r_eff - 1);
    for (uint32_t p = 0; p < a->nparts; p++) {
        const struct cluster_part *c = &a->parts[p];
        assert_int_equal(c->nreplicas, r_eff);
        assert_string_equal(c->replicas[0], c->owner);
        for (uint32_t i = 0; i < c->nreplicas; i++) {
            bool ok = false;
            for (size_t k = 0; k < n; k++)
                ok |= nodes[k].state && !nodes[k].draining && strcmp(nodes[k].id, c->replicas[i]) == 0;
            assert_true(ok);
            for (uint32_t j = 0; j < i; j++)
                assert_string_not_equal(c->replicas[i], c->replicas[j]);
        }
    }
    size_t lt = 0, ft = 0;
    for (size_t k = 0; k < n; k++) {
        size_t l = assigner_count(a, nodes[k].id), f = assigner_count_followers(a, nodes[k].id);
        if (!nodes[k].state || nodes[k].draining) {
            assert_int_equal(l + f, 0);
            continue;
        }
        if (!(l == a->nparts / e || l == a->nparts / e + 1) ||
            !(f == fol / e || f == fol / e + 1))
            fail_msg("unbalanced: node %s leads %zu follows %zu (P=%u N=%zu R=%u)", nodes[k].id,
                     l, f, a->nparts, e, R);
        lt += l;
        ft += f;
    }
    assert_int_equal(lt, a->nparts);
    assert_int_equal(ft, fol);
}

static void make_nodes(struct assign_node *nodes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "s%zu", i);
        nodes[i] = node(id);
    }
}

static void test_replicas_balanced(void **state)
{
    (void)state;
    const uint32_t parts[] = {1, 7, 8, 13, 64, 256};
    for (size_t n = 1; n <= 7; n++) {
        struct assign_node nodes[7];
        make_nodes(nodes, n);
        for (uint32_t R = 1; R <= 4; R++) {
            for (size_t pi = 0; pi < sizeof(parts) / sizeof(parts[0]); pi++) {
                struct cluster_map cur = map_of(parts[pi]), a = map_of(parts[pi]),
                                   b = map_of(parts[pi]);
                struct assign_params ap = {.replication_factor = R};
                assert_int_equal(assigner_assign(nodes, n, &cur, &ap, &a), parts[pi]);
                assert_replicas(&a, nodes, n, R);
                /* stable: a balanced map gives itself */
                assert_int_equal(assigner_assign(nodes, n, &a, &ap, &b), 0);
                assert_memory_equal(a.parts, b.parts, parts[pi] * sizeof(*a.parts));
                cluster_map_release(&cur);
                cluster_map_release(&a);
                cluster_map_release(&b);
            }
        }
    }
}

static void test_replicas_deterministic(void **state)
{
    (void)state;
    struct assign_node n1[5], n2[5], n3[5];
    make_nodes(n1, 5);
    const char *zones[] = {"z1", "z2", "z1", "z3", "z2"};
    for (size_t i = 0; i < 5; i++)
        snprintf(n1[i].zone, sizeof(n1[i].zone), "%s", zones[i]);
    for (size_t i = 0; i < 5; i++) {
        n2[i] = n1[4 - i];
        n3[i] = n1[(i + 2) % 5];
    }
    struct cluster_map cur = map_of(P), x = map_of(P), y = map_of(P), z = map_of(P);
    struct assign_params ap = {.replication_factor = 3};
    assigner_assign(n1, 5, &cur, &ap, &x);
    assigner_assign(n2, 5, &cur, &ap, &y);
    assigner_assign(n3, 5, &cur, &ap, &z);
    assert_memory_equal(x.parts, y.parts, P * sizeof(struct cluster_part));
    assert_memory_equal(x.parts, z.parts, P * sizeof(struct cluster_part));
    /* and from a map that is not balanced (b and d gone, then back) */
    struct assign_node three[] = {n1[0], n1[2], n1[4]}, three_rev[] = {n1[4], n1[0], n1[2]};
    assigner_assign(three, 3, &x, &ap, &y);
    assigner_assign(three_rev, 3, &x, &ap, &z);
    assert_memory_equal(y.parts, z.parts, P * sizeof(struct cluster_part));
    assigner_assign(n2, 5, &y, &ap, &x);
    assigner_assign(n3, 5, &y, &ap, &z);
    assert_memory_equal(x.parts, z.parts, P * sizeof(struct cluster_part));
    cluster_map_release(&cur);
    cluster_map_release(&x);
    cluster_map_release(&y);
    cluster_map_release(&z);
}

/* Replicas (node, partition) in 'b' and not in 'a'. */
static size_t added(const struct cluster_map *a, const struct cluster_map *b, const char *only)
{
    size_t k = 0;
    for (uint32_t p = 0; p < a->nparts; p++) {
        for (uint32_t r = 0; r < b->parts[p].nreplicas; r++) {
            if (cluster_part_has(&a->parts[p], b->parts[p].replicas[r]))
                continue;
            k++;
            if (only)
                assert_string_equal(b->parts[p].replicas[r], only);
        }
    }
    return k;
}

static void test_replicas_minimal_movement(void **state)
{
    (void)state;
    struct assign_node four[4];
    make_nodes(four, 4);
    struct cluster_map cur = map_of(P), a = map_of(P), b = map_of(P), c = map_of(P);
    struct assign_params ap = {.replication_factor = 2};
    assigner_assign(four, 3, &cur, &ap, &a);
    /* a node joins: every new replica is on it, and it gets exactly its shares */
    size_t moved = assigner_assign(four, 4, &a, &ap, &b);
    assert_replicas(&b, four, 4, 2);
    assert_int_equal(moved, assigner_count(&b, "s3"));
    assert_int_equal(added(&a, &b, "s3"),
                     assigner_count(&b, "s3") + assigner_count_followers(&b, "s3"));
    assert_int_equal(assigner_count(&b, "s3"), P / 4);
    assert_int_equal(assigner_count_followers(&b, "s3"), P / 4);
    /* a node leaves: only its replicas are replaced, each once */
    struct assign_node rest[] = {four[0], four[2], four[3]};
    size_t had = assigner_count(&b, "s1") + assigner_count_followers(&b, "s1");
    assigner_assign(rest, 3, &b, &ap, &c);
    assert_replicas(&c, rest, 3, 2);
    assert_int_equal(added(&b, &c, NULL), had);
    for (uint32_t p = 0; p < P; p++) {
        for (uint32_t r = 0; r < b.parts[p].nreplicas; r++) {
            if (strcmp(b.parts[p].replicas[r], "s1") != 0)
                assert_true(cluster_part_has(&c.parts[p], b.parts[p].replicas[r]));
        }
    }
    cluster_map_release(&cur);
    cluster_map_release(&a);
    cluster_map_release(&b);
    cluster_map_release(&c);
}

static void test_zones(void **state)
{
    (void)state;
    struct assign_node n[6];
    make_nodes(n, 6);
    const char *zones[] = {"z1", "z1", "z2", "z2", "z3", "z3"};
    for (size_t i = 0; i < 6; i++)
        snprintf(n[i].zone, sizeof(n[i].zone), "%s", zones[i]);
    struct cluster_map cur = map_of(P), a = map_of(P), b = map_of(P);
    struct assign_params ap = {.replication_factor = 3};
    assigner_assign(n, 6, &cur, &ap, &a);
    assert_replicas(&a, n, 6, 3);
    for (uint32_t p = 0; p < P; p++) { /* three zones, three replicas: one each */
        bool seen[3] = {false, false, false};
        for (uint32_t r = 0; r < 3; r++) {
            int i = a.parts[p].replicas[r][1] - '0';
            assert_false(seen[i / 2]);
            seen[i / 2] = true;
        }
    }
    /* two zones for three replicas: no zone holds all three */
    struct assign_node two[] = {n[0], n[1], n[2], n[3]};
    assigner_assign(two, 4, &a, &ap, &b);
    for (uint32_t p = 0; p < P; p++) {
        int z1 = 0;
        for (uint32_t r = 0; r < 3; r++)
            z1 += b.parts[p].replicas[r][1] < '2';
        assert_true(z1 == 1 || z1 == 2);
    }
    /* a map with two replicas in one zone spreads them once a zone is free */
    struct cluster_map c = map_of(2), d = map_of(2);
    for (uint32_t p = 0; p < 2; p++) {
        cluster_part_set_single(&c.parts[p], p % 2 ? "s1" : "s0");
        snprintf(c.parts[p].replicas[1], CLUSTER_ID_MAX, "%s", p % 2 ? "s0" : "s1");
        c.parts[p].nreplicas = 2;
    }
    struct assign_node z[] = {n[0], n[1], n[2], n[3]}; /* z1: s0 s1, z2: s2 s3 */
    ap.replication_factor = 2;
    assigner_assign(z, 4, &c, &ap, &d);
    for (uint32_t p = 0; p < 2; p++) {
        assert_string_equal(d.parts[p].owner, c.parts[p].owner);
        assert_true(d.parts[p].replicas[1][1] >= '2');
    }
    cluster_map_release(&cur);
    cluster_map_release(&a);
    cluster_map_release(&b);
    cluster_map_release(&c);
    cluster_map_release(&d);
}

static void set3(struct cluster_part *c, const char *a, const char *b, const char *d,
                 uint64_t epoch)
{
    cluster_part_set_single(c, a);
    snprintf(c->replicas[1], CLUSTER_ID_MAX, "%s", b);
    snprintf(c->replicas[2], CLUSTER_ID_MAX, "%s", d);
    c->nreplicas = 3;
    c->epoch = epoch;
}

static void test_promotion(void **state)
{
    (void)state;
    struct assign_node n[4];
    make_nodes(n, 4);
    struct cluster_map cur = map_of(P), a = map_of(P), b = map_of(P);
    struct assign_params ap = {.replication_factor = 2};
    assigner_assign(n, 4, &cur, &ap, &a);
    /* s0 dies: each of its partitions is led by its follower, epoch + 1 */
    struct assign_node rest[] = {n[1], n[2], n[3]};
    assigner_assign(rest, 3, &a, &ap, &b);
    size_t promoted = 0;
    for (uint32_t p = 0; p < P; p++) {
        if (strcmp(a.parts[p].owner, "s0") != 0)
            continue;
        assert_string_equal(b.parts[p].owner, a.parts[p].replicas[1]);
        assert_int_equal(b.parts[p].epoch, a.parts[p].epoch + 1);
        promoted++;
    }
    assert_int_equal(promoted, P / 4);
    /* a draining leader's partitions go to their follower when its share allows: the
     * live move then has a target that already follows */
    struct cluster_map g = map_of(4), h = map_of(4);
    const char *pairs[4][2] = {{"s0", "s2"}, {"s0", "s1"}, {"s1", "s2"}, {"s2", "s1"}};
    for (uint32_t p = 0; p < 4; p++) {
        cluster_part_set_single(&g.parts[p], pairs[p][0]);
        snprintf(g.parts[p].replicas[1], CLUSTER_ID_MAX, "%s", pairs[p][1]);
        g.parts[p].nreplicas = 2;
    }
    struct assign_node drain[] = {n[0], n[1], n[2]};
    drain[0].draining = true;
    assigner_assign(drain, 3, &g, &ap, &h);
    assert_string_equal(h.parts[0].owner, "s2");
    assert_string_equal(h.parts[1].owner, "s1");
    cluster_map_release(&g);
    cluster_map_release(&h);

    /* in-sync sets and durable seqs choose among three replicas */
    struct cluster_map c = map_of(4), d = map_of(4);
    set3(&c.parts[0], "s0", "s1", "s2", 5); /* no record: the first follower */
    set3(&c.parts[1], "s0", "s1", "s2", 5); /* isr [s0, s2]: s2 */
    set3(&c.parts[2], "s0", "s1", "s2", 5); /* durable s1 = 5, s2 = 9: s2 */
    set3(&c.parts[3], "s0", "s1", "s2", 5); /* isr [s0]: nobody in sync, no promotion */
    struct cluster_isr isr[4] = {{0}};
    isr[1] = (struct cluster_isr){.epoch = 5, .nisr = 2};
    snprintf(isr[1].isr[0], CLUSTER_ID_MAX, "s0");
    snprintf(isr[1].isr[1], CLUSTER_ID_MAX, "s2");
    isr[3] = (struct cluster_isr){.epoch = 5, .nisr = 1};
    snprintf(isr[3].isr[0], CLUSTER_ID_MAX, "s0");
    uint64_t durable[4 * CLUSTER_REPLICAS_MAX] = {0};
    durable[2 * CLUSTER_REPLICAS_MAX + 1] = 5;
    durable[2 * CLUSTER_REPLICAS_MAX + 2] = 9;
    struct assign_params ap3 = {.replication_factor = 3, .isr = isr, .durable = durable};
    struct assign_node alive[] = {n[1], n[2], n[3]};
    assigner_assign(alive, 3, &c, &ap3, &d);
    assert_string_equal(d.parts[0].owner, "s1");
    assert_string_equal(d.parts[1].owner, "s2");
    assert_string_equal(d.parts[2].owner, "s2");
    for (uint32_t p = 0; p < 3; p++)
        assert_int_equal(d.parts[p].epoch, 6);
    /* s3 is no replica of partition 3: with no follower in sync (nothing acknowledged
     * with more copies than the leader's) it is chosen by the shares like an unreplicated
     * failover (s3 leads nothing else) */
    assert_string_equal(d.parts[3].owner, "s3");
    assert_int_equal(d.parts[3].epoch, 6);
    /* a leader and its in-sync follower both gone: the events they acknowledged are
     * nowhere else, so the partition stays as it is, offline, until one returns ... */
    struct cluster_map o1 = map_of(1), o2 = map_of(1);
    set3(&o1.parts[0], "s0", "s1", "s2", 5);
    struct cluster_isr isr01 = {.epoch = 5, .nisr = 2};
    snprintf(isr01.isr[0], CLUSTER_ID_MAX, "s0");
    snprintf(isr01.isr[1], CLUSTER_ID_MAX, "s1");
    struct assign_params apo = {.replication_factor = 3, .isr = &isr01};
    struct assign_node n23[] = {n[2], n[3]};
    assigner_assign(n23, 2, &o1, &apo, &o2);
    assert_string_equal(o2.parts[0].owner, "s0");
    assert_int_equal(o2.parts[0].epoch, 5);
    assert_int_equal(o2.parts[0].nreplicas, 3);
    assert_string_equal(o2.parts[0].replicas[1], "s1");
    /* ... so does one of an older epoch (the leader has not recorded its own yet) ... */
    isr01.epoch = 4;
    assigner_assign(n23, 2, &o1, &apo, &o2);
    assert_string_equal(o2.parts[0].owner, "s0");
    assert_int_equal(o2.parts[0].epoch, 5);
    /* ... and unclean leader election gives it away (s2, a replica, by the shares) */
    isr01.epoch = 5;
    apo.unclean = true;
    assigner_assign(n23, 2, &o1, &apo, &o2);
    assert_string_not_equal(o2.parts[0].owner, "s0");
    assert_int_equal(o2.parts[0].epoch, 6);
    cluster_map_release(&o1);
    cluster_map_release(&o2);
    /* a promotion stands even over the share: s1 follows everything, s0 dies */
    struct cluster_map e = map_of(3), f = map_of(3);
    set3(&e.parts[0], "s0", "s1", "s2", 1);
    set3(&e.parts[1], "s0", "s1", "s2", 1);
    set3(&e.parts[2], "s0", "s1", "s2", 1);
    struct assign_node n12[] = {n[1], n[2]};
    struct assign_params plain3 = {.replication_factor = 3};
    assigner_assign(n12, 2, &e, &plain3, &f);
    for (uint32_t p = 0; p < 3; p++)
        assert_string_equal(f.parts[p].owner, "s1");
    cluster_map_release(&cur);
    cluster_map_release(&a);
    cluster_map_release(&b);
    cluster_map_release(&c);
    cluster_map_release(&d);
    cluster_map_release(&e);
    cluster_map_release(&f);
}

/* Promotion by the followers' published durable seqs: the highest in-sync one; ties, and
 * any candidate whose seq is unknown, by replica order; followers gone or out of sync do
 * not count whatever their seq. */
static void test_promotion_by_durable_seq(void **state)
{
    (void)state;
    struct assign_node n[5];
    make_nodes(n, 5);
    struct cluster_map c = map_of(6), d = map_of(6);
    for (uint32_t p = 0; p < 6; p++)
        set3(&c.parts[p], "s0", "s1", "s2", 3);
    set3(&c.parts[4], "s0", "s4", "s2", 3);
    uint64_t durable[6 * CLUSTER_REPLICAS_MAX];
    for (size_t i = 0; i < 6 * CLUSTER_REPLICAS_MAX; i++)
        durable[i] = ASSIGNER_SEQ_UNKNOWN;
#define DUR(p, r) durable[(p) * CLUSTER_REPLICAS_MAX + (r)]
    DUR(0, 1) = 7, DUR(0, 2) = 7;                   /* tie: s1 */
    DUR(1, 1) = 3;                                  /* s2 unknown: replica order, s1 */
    DUR(2, 2) = 9;                                  /* s1 unknown: replica order, s1 */
    DUR(3, 1) = 100, DUR(3, 2) = 5;                 /* s1 out of sync: s2 */
    DUR(4, 1) = 100, DUR(4, 2) = 1;                 /* s4 gone: s2 */
    DUR(5, 1) = 4, DUR(5, 2) = 12;                  /* the highest: s2 */
#undef DUR
    struct cluster_isr isr[6] = {{0}};
    isr[3] = (struct cluster_isr){.epoch = 3, .nisr = 2};
    snprintf(isr[3].isr[0], CLUSTER_ID_MAX, "s0");
    snprintf(isr[3].isr[1], CLUSTER_ID_MAX, "s2");
    struct assign_params ap = {.replication_factor = 3, .isr = isr, .durable = durable};
    struct assign_node alive[] = {n[1], n[2], n[3]};
    assigner_assign(alive, 3, &c, &ap, &d);
    const char *want[6] = {"s1", "s1", "s1", "s2", "s2", "s2"};
    for (uint32_t p = 0; p < 6; p++) {
        assert_string_equal(d.parts[p].owner, want[p]);
        assert_int_equal(d.parts[p].epoch, 4);
    }
    /* the same input in another node order: the same choice */
    struct assign_node shuffled[] = {n[3], n[2], n[1]};
    struct cluster_map e = map_of(6);
    assigner_assign(shuffled, 3, &c, &ap, &e);
    for (uint32_t p = 0; p < 6; p++)
        assert_string_equal(e.parts[p].owner, want[p]);
    /* no durable seqs at all: replica order everywhere s1 is in sync */
    ap.durable = NULL;
    assigner_assign(alive, 3, &c, &ap, &e);
    for (uint32_t p = 0; p < 6; p++)
        assert_string_equal(e.parts[p].owner, p == 3 || p == 4 ? "s2" : "s1");
    cluster_map_release(&c);
    cluster_map_release(&d);
    cluster_map_release(&e);
}

/* Two losses in successive maps (R = 2): s0 leads, s1 follows, both recorded in sync at
 * epoch 5. s0 is lost: s1 is promoted at epoch 6 with s2, a new and empty follower. s1 is
 * lost before s2 is recorded in sync: every copy that held the acknowledged events is
 * gone, so the partition is offline (its entry kept: s1 wrote no record of its own yet,
 * the record is epoch 5's); it is never given to s2. */
static void test_successive_losses(void **state)
{
    (void)state;
    struct assign_node n[4];
    make_nodes(n, 4);
    struct cluster_map a = map_of(1), b = map_of(1), c = map_of(1);
    cluster_part_set_single(&a.parts[0], "s0");
    snprintf(a.parts[0].replicas[1], CLUSTER_ID_MAX, "s1");
    a.parts[0].nreplicas = 2;
    a.parts[0].epoch = 5;
    struct cluster_isr rec = {.epoch = 5, .nisr = 2};
    snprintf(rec.isr[0], CLUSTER_ID_MAX, "s0");
    snprintf(rec.isr[1], CLUSTER_ID_MAX, "s1");
    struct assign_params ap = {.replication_factor = 2, .isr = &rec};
    struct assign_node n12[] = {n[1], n[2]};
    assigner_assign(n12, 2, &a, &ap, &b);
    assert_string_equal(b.parts[0].owner, "s1");
    assert_int_equal(b.parts[0].epoch, 6);
    assert_int_equal(b.parts[0].nreplicas, 2);
    assert_string_equal(b.parts[0].replicas[1], "s2");
    /* s1 lost too, its own record not written yet: epoch 5's names s0 and s1 only */
    struct assign_node n2[] = {n[2]};
    assigner_assign(n2, 1, &b, &ap, &c);
    assert_string_equal(c.parts[0].owner, "s1");
    assert_int_equal(c.parts[0].epoch, 6);
    assert_int_equal(c.parts[0].nreplicas, 2);
    assert_string_equal(c.parts[0].replicas[1], "s2");
    /* ... until s1 returns: it leads again, no epoch change */
    assigner_assign(n12, 2, &b, &ap, &c);
    assert_string_equal(c.parts[0].owner, "s1");
    assert_int_equal(c.parts[0].epoch, 6);
    /* ... or s0 does: no replica any more, but it holds every acknowledged event */
    struct assign_node n02[] = {n[0], n[2]};
    assigner_assign(n02, 2, &b, &ap, &c);
    assert_string_equal(c.parts[0].owner, "s0");
    assert_int_equal(c.parts[0].epoch, 7);
    /* unclean leader election gives it to s2 */
    ap.unclean = true;
    assigner_assign(n2, 1, &b, &ap, &c);
    assert_string_equal(c.parts[0].owner, "s2");
    assert_int_equal(c.parts[0].epoch, 7);
    /* R = 3: a copy the older record names survives: it is promoted, not the new s3 */
    struct cluster_map d = map_of(1), e = map_of(1);
    set3(&d.parts[0], "s1", "s2", "s3", 6); /* s1 promoted at 6 over s0, s3 added */
    struct cluster_isr rec3 = {.epoch = 5, .nisr = 3};
    snprintf(rec3.isr[0], CLUSTER_ID_MAX, "s0");
    snprintf(rec3.isr[1], CLUSTER_ID_MAX, "s1");
    snprintf(rec3.isr[2], CLUSTER_ID_MAX, "s2");
    uint64_t durable[CLUSTER_REPLICAS_MAX] = {0, 10, 99}; /* s3 says it has more: no matter */
    struct assign_params ap3 = {.replication_factor = 3, .isr = &rec3, .durable = durable};
    struct assign_node n23[] = {n[2], n[3]};
    assigner_assign(n23, 2, &d, &ap3, &e);
    assert_string_equal(e.parts[0].owner, "s2");
    assert_int_equal(e.parts[0].epoch, 7);
    cluster_map_release(&a);
    cluster_map_release(&b);
    cluster_map_release(&c);
    cluster_map_release(&d);
    cluster_map_release(&e);
}

/* Partition 0 of the map assigned from 'cur' with 'nodes' is led by 'owner' at 'epoch'. */
static void assert_led(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                       const struct assign_params *ap, const char *owner, uint64_t epoch)
{
    struct cluster_map next = map_of(cur->nparts);
    assigner_assign(nodes, n, cur, ap, &next);
    assert_string_equal(next.parts[0].owner, owner);
    assert_int_equal(next.parts[0].epoch, epoch);
    cluster_map_release(&next);
}

/* The same two losses after s1 recorded itself alone at epoch 6 (s2 not caught up): its
 * record keeps the set it was promoted from, so the partition waits offline for s0 or
 * s1 rather than go to s2; whichever returns leads with every acknowledged event. */
static void test_promoted_leader_alone(void **state)
{
    (void)state;
    struct assign_node n[5];
    make_nodes(n, 5);
    struct cluster_map b = map_of(1), c = map_of(1);
    cluster_part_set_single(&b.parts[0], "s1"); /* promoted at 6 over s0, s2 added */
    snprintf(b.parts[0].replicas[1], CLUSTER_ID_MAX, "s2");
    b.parts[0].nreplicas = 2;
    b.parts[0].epoch = 6;
    struct cluster_isr own = {.epoch = 6, .nisr = 1, .npromoted = 2};
    snprintf(own.leader, CLUSTER_ID_MAX, "s1");
    snprintf(own.isr[0], CLUSTER_ID_MAX, "s1");
    snprintf(own.promoted_from[0], CLUSTER_ID_MAX, "s0");
    snprintf(own.promoted_from[1], CLUSTER_ID_MAX, "s1");
    struct assign_params ap = {.replication_factor = 2, .isr = &own};
    /* s0 and s1 both lost: offline, the entry kept, never given to s2 */
    struct assign_node n2[] = {n[2]};
    assert_int_equal(assigner_assign(n2, 1, &b, &ap, &c), 0);
    assert_string_equal(c.parts[0].owner, "s1");
    assert_int_equal(c.parts[0].epoch, 6);
    assert_int_equal(c.parts[0].nreplicas, 2);
    assert_string_equal(c.parts[0].replicas[1], "s2");
    /* s0 returns (no replica any more): it leads at epoch 7, s2 follows it */
    struct assign_node n02[] = {n[0], n[2]};
    assert_int_equal(assigner_assign(n02, 2, &b, &ap, &c), 1);
    assert_string_equal(c.parts[0].owner, "s0");
    assert_int_equal(c.parts[0].epoch, 7);
    assert_int_equal(c.parts[0].nreplicas, 2);
    assert_string_equal(c.parts[0].replicas[1], "s2");
    /* ... and so it does with more nodes around, whatever the shares */
    struct assign_node n0234[] = {n[0], n[2], n[3], n[4]};
    assert_led(n0234, 4, &b, &ap, "s0", 7);
    /* s1 returns instead: it leads on, no epoch change */
    struct assign_node n12[] = {n[1], n[2]};
    assert_led(n12, 2, &b, &ap, "s1", 6);
    /* s1 was moving live to s2 (its entry lists s1 alone until the flip: s2's follower
     * would be s1): offline all the same */
    struct cluster_map mv = map_of(1);
    cluster_part_set_single(&mv.parts[0], "s1");
    mv.parts[0].epoch = 6;
    assert_led(n2, 1, &mv, &ap, "s1", 6);
    /* a cluster of R = 1 with a record of its R = 2 days moves on */
    struct assign_params ap1 = {.replication_factor = 1, .isr = &own};
    assert_led(n2, 1, &mv, &ap1, "s2", 7);
    cluster_map_release(&mv);
    /* R = 3: s1 was promoted from [s0, s1, s2] with s3 added; the kept follower s2 is
     * named, so it is promoted when s1 is lost, not the new s3 (whatever its seq) */
    struct cluster_map d = map_of(1);
    set3(&d.parts[0], "s1", "s2", "s3", 6);
    struct cluster_isr own3 = own;
    own3.npromoted = 3;
    snprintf(own3.promoted_from[2], CLUSTER_ID_MAX, "s2");
    uint64_t durable[CLUSTER_REPLICAS_MAX] = {0, 10, 99};
    struct assign_params ap3 = {.replication_factor = 3, .isr = &own3, .durable = durable};
    struct assign_node n23[] = {n[2], n[3]};
    assert_led(n23, 2, &d, &ap3, "s2", 7);
    cluster_map_release(&d);
    /* unclean leader election gives it to s2 */
    ap.unclean = true;
    assert_led(n2, 1, &b, &ap, "s2", 7);
    /* a lone leader's record without promoted_from still moves on (a SIGTERM'd leader:
     * the successor restores its last checkpoint) */
    own.npromoted = 0;
    ap.unclean = false;
    assert_led(n2, 1, &b, &ap, "s2", 7);
    cluster_map_release(&b);
    cluster_map_release(&c);
}

static void test_r_capped(void **state)
{
    (void)state;
    struct assign_node n[2];
    make_nodes(n, 2);
    struct cluster_map cur = map_of(16), a = map_of(16);
    struct assign_params ap = {.replication_factor = 3};
    assigner_assign(n, 2, &cur, &ap, &a);
    assert_replicas(&a, n, 2, 3);
    assert_int_equal(a.parts[0].nreplicas, 2);
    cluster_map_release(&cur);
    cluster_map_release(&a);
}

/* Nodes come and go at random: once a round with the same nodes has run after each
 * change (a promotion may leave a surplus of leaders for one round), every share holds. */
static void test_churn(void **state)
{
    (void)state;
    struct assign_node all[8];
    make_nodes(all, 8);
    const uint32_t parts[] = {7, 64, 75};
    for (uint32_t R = 1; R <= 4; R++) {
        for (size_t pi = 0; pi < sizeof(parts) / sizeof(parts[0]); pi++) {
            struct cluster_map c = map_of(parts[pi]), d = map_of(parts[pi]);
            /* random subsets may lose every copy of a partition at once: placed anew here
             * (unclean), offline otherwise (test_promotion) */
            struct assign_params ap = {.replication_factor = R, .unclean = true};
            uint32_t seed = R * 1000 + parts[pi];
            for (int round = 0; round < 30; round++) {
                struct assign_node pick[8];
                size_t n = 0;
                for (size_t i = 0; i < 8; i++) {
                    seed = seed * 1103515245u + 12345u;
                    if ((seed >> 16) % 4)
                        pick[n++] = all[i];
                }
                if (n == 0)
                    continue;
                assigner_assign(pick, n, &c, &ap, &d);
                assigner_assign(pick, n, &d, &ap, &c);
                assert_replicas(&c, pick, n, R);
            }
            cluster_map_release(&c);
            cluster_map_release(&d);
        }
    }
}

/* The assigner as it was before replicas (owners only), to compare R = 1 against. */
struct old_slot {
    const char *id;
    size_t have, target;
};

static int old_cmp_id(const void *a, const void *b)
{
    return strcmp(((const struct old_slot *)a)->id, ((const struct old_slot *)b)->id);
}

static int old_cmp_have_desc(const void *a, const void *b)
{
    const struct old_slot *x = a, *y = b;
    if (x->have != y->have)
        return x->have < y->have ? 1 : -1;
    return strcmp(x->id, y->id);
}

static struct old_slot *old_find(struct old_slot *s, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s[i].id, id) == 0)
            return &s[i];
    return NULL;
}

static size_t old_compute(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                          struct cluster_map *next)
{
    uint32_t np = cur->nparts;
    memcpy(next->parts, cur->parts, np * sizeof(*cur->parts));
    struct old_slot s[16] = {{0}};
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!nodes[i].state || nodes[i].draining || !nodes[i].id[0] || old_find(s, m, nodes[i].id))
            continue;
        s[m++].id = nodes[i].id;
    }
    if (m == 0)
        return 0;
    qsort(s, m, sizeof(*s), old_cmp_id);
    for (uint32_t p = 0; p < np; p++) {
        struct old_slot *o = old_find(s, m, cur->parts[p].owner);
        if (o)
            o->have++;
    }
    qsort(s, m, sizeof(*s), old_cmp_have_desc);
    for (size_t i = 0; i < m; i++)
        s[i].target = np / m + (i < np % m ? 1 : 0);
    bool orphan[P] = {false};
    for (size_t i = 0; i < m; i++)
        s[i].have = 0;
    for (uint32_t p = 0; p < np; p++) {
        struct old_slot *o = old_find(s, m, cur->parts[p].owner);
        if (o && o->have < o->target)
            o->have++;
        else
            orphan[p] = true;
    }
    size_t moved = 0;
    qsort(s, m, sizeof(*s), old_cmp_id);
    for (uint32_t p = 0; p < np; p++) {
        if (!orphan[p])
            continue;
        struct old_slot *best = NULL;
        for (size_t i = 0; i < m; i++) {
            if (s[i].have >= s[i].target)
                continue;
            if (!best || s[i].target - s[i].have > best->target - best->have)
                best = &s[i];
        }
        best->have++;
        struct cluster_part *po = &next->parts[p];
        if (strcmp(po->owner, best->id) != 0) {
            snprintf(po->owner, sizeof(po->owner), "%s", best->id);
            po->epoch = cur->parts[p].epoch + 1;
            moved++;
        }
    }
    return moved;
}

static void test_r1_as_before(void **state)
{
    (void)state;
    struct assign_node all[8];
    make_nodes(all, 8);
    struct cluster_map cur = map_of(P), mine = map_of(P), old = map_of(P);
    uint32_t seed = 12345;
    for (int round = 0; round < 40; round++) {
        struct assign_node pick[8];
        size_t n = 0;
        for (size_t i = 0; i < 8; i++) {
            seed = seed * 1103515245u + 12345u;
            if ((seed >> 16) % 3 != 0) {
                pick[n] = all[i];
                pick[n].draining = (seed >> 20) % 7 == 0;
                n++;
            }
        }
        size_t a = assigner_compute(pick, n, &cur, &mine);
        size_t b = old_compute(pick, n, &cur, &old);
        assert_int_equal(a, b);
        for (uint32_t p = 0; p < P; p++) {
            assert_string_equal(mine.parts[p].owner, old.parts[p].owner);
            assert_int_equal(mine.parts[p].epoch, old.parts[p].epoch);
            assert_true(mine.parts[p].nreplicas == (mine.parts[p].owner[0] ? 1u : 0u));
        }
        struct cluster_map t = cur;
        cur = mine;
        mine = t;
    }
    cluster_map_release(&cur);
    cluster_map_release(&mine);
    cluster_map_release(&old);
}

/* A node that led partitions and is gone (the map is written without a settle); not a
 * node that only followed, one that was not there when the map was computed (a cluster
 * coming up), or one still there. */
static void test_leader_lost(void **state)
{
    (void)state;
    struct assign_node before[] = {node("a"), node("b"), node("c")};
    struct assign_node no_b[] = {node("a"), node("c")};
    struct assign_node no_c[] = {node("a"), node("b")};
    struct cluster_map cur = empty_map(), next = empty_map();
    struct assign_params ap = {.replication_factor = 2};
    assigner_assign(no_c, 2, &cur, &ap, &next); /* a and b lead, c neither leads nor follows */
    assert_true(assigner_count(&next, "b") > 0);
    assert_int_equal(assigner_count(&next, "c"), 0);
    assert_true(assigner_leader_lost(&next, before, 3, no_b, 2));
    assert_false(assigner_leader_lost(&next, before, 3, before, 3));
    assert_false(assigner_leader_lost(&next, before, 3, no_c, 2)); /* c led nothing */
    assert_false(assigner_leader_lost(&next, no_b, 2, no_b, 2));   /* b was gone already */
    struct assign_node b_ingest = node("b");
    b_ingest.state = false; /* b without the state role now: gone as a leader */
    struct assign_node b_role[] = {node("a"), b_ingest, node("c")};
    assert_true(assigner_leader_lost(&next, before, 3, b_role, 3));
    /* a node that only followed is gone: every partition keeps its leader */
    assigner_assign(before, 3, &cur, &ap, &next);
    struct cluster_map followers_only = empty_map();
    for (uint32_t p = 0; p < P; p++)
        followers_only.parts[p] = next.parts[p];
    for (uint32_t p = 0; p < P; p++)
        if (strcmp(followers_only.parts[p].owner, "c") == 0)
            snprintf(followers_only.parts[p].owner, sizeof(followers_only.parts[p].owner),
                     "a");
    assert_false(assigner_leader_lost(&followers_only, before, 3, no_c, 2));
    free(cur.parts);
    free(next.parts);
    free(followers_only.parts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initial_and_balanced),
        cmocka_unit_test(test_stable_and_deterministic),
        cmocka_unit_test(test_scale_out_minimal),
        cmocka_unit_test(test_node_lost_and_drain),
        cmocka_unit_test(test_no_eligible_nodes),
        cmocka_unit_test(test_replicas_balanced),
        cmocka_unit_test(test_replicas_deterministic),
        cmocka_unit_test(test_replicas_minimal_movement),
        cmocka_unit_test(test_zones),
        cmocka_unit_test(test_promotion),
        cmocka_unit_test(test_promotion_by_durable_seq),
        cmocka_unit_test(test_successive_losses),
        cmocka_unit_test(test_promoted_leader_alone),
        cmocka_unit_test(test_r_capped),
        cmocka_unit_test(test_churn),
        cmocka_unit_test(test_r1_as_before),
        cmocka_unit_test(test_leader_lost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
