/* Balanced, minimal-movement, deterministic, zone-aware replica assignment. */
#include "coordinator/assigner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct slot {
    const char *id;
    const char *zname; /* its zone's name */
    size_t zone;     /* index of its zone among the eligible nodes' distinct zones */
    size_t have;     /* partitions it leads so far */
    size_t target;   /* floor or ceil of P/N */
    size_t fhave;    /* partitions it follows so far */
    size_t ftarget;  /* floor or ceil of P*(R-1)/N */
};

/* The replicas chosen for one partition, leader first. */
struct pick {
    struct slot *s[CLUSTER_REPLICAS_MAX];
    uint32_t n;
};

static int cmp_id(const void *a, const void *b)
{
    const struct slot *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : strcmp(x->zname, y->zname); /* an id listed twice: the same pick always */
}

/* Nodes that currently lead more come first, so they keep the ceil shares. */
static int cmp_have_desc(const void *a, const void *b)
{
    const struct slot *x = *(struct slot *const *)a, *y = *(struct slot *const *)b;
    if (x->have != y->have)
        return x->have < y->have ? 1 : -1;
    return strcmp(x->id, y->id);
}

/* Nodes that lead fewer come first for the ceil shares of followers (a node cannot follow
 * what it leads: with R = N that is the only way the shares add up), then those that
 * follow more now (they keep them). */
static int cmp_follow(const void *a, const void *b)
{
    const struct slot *x = *(struct slot *const *)a, *y = *(struct slot *const *)b;
    if (x->have != y->have)
        return x->have < y->have ? -1 : 1;
    if (x->fhave != y->fhave)
        return x->fhave < y->fhave ? 1 : -1;
    return strcmp(x->id, y->id);
}

/* The slot of 'id' in 's' sorted by id (binary search: P * R lookups), or NULL. */
static struct slot *find(struct slot *s, size_t n, const char *id)
{
    size_t lo = 0, hi = n;
    while (lo < hi && id[0]) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s[mid].id, id);
        if (c == 0)
            return &s[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool alive(const struct assign_node *nodes, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].state && strcmp(nodes[i].id, id) == 0)
            return true;
    }
    return false;
}

static bool pick_has(const struct pick *k, const struct slot *o)
{
    for (uint32_t i = 0; i < k->n; i++) {
        if (k->s[i] == o)
            return true;
    }
    return false;
}

/* Whether 'o' may join 'k' (in place of k->s[skip], or added when skip is out of range)
 * with no zone above 'cap' replicas of the partition. */
static bool zone_ok(const struct pick *k, const struct slot *o, size_t cap, uint32_t skip)
{
    size_t same = 0;
    for (uint32_t i = 0; i < k->n; i++)
        same += i != skip && k->s[i]->zone == o->zone;
    return same < cap;
}

static long deficit(const struct slot *o, bool follow)
{
    return follow ? (long)o->ftarget - (long)o->fhave : (long)o->target - (long)o->have;
}

/* Whether the record of partition p names 'id' as a copy with every acknowledged event
 * (in its in-sync set or the set its leader was promoted from); no record: every replica. */
static bool in_sync(const struct assign_params *ap, uint32_t p, const char *id)
{
    return !ap || !ap->isr || ap->isr[p].nisr == 0 || cluster_isr_holds(&ap->isr[p], id);
}

/* A live copy the record of partition p names that is no replica of 'c' any more (the
 * leader's predecessor, back after the copies promoted from it were lost): in sync, then
 * promoted_from order. NULL if none or no record. */
static struct slot *returned_holder(struct slot *s, size_t m, const struct cluster_part *c,
                                    uint32_t p, const struct assign_params *ap)
{
    const struct cluster_isr *x = ap && ap->isr ? &ap->isr[p] : NULL;
    for (uint32_t i = 0; x && i < x->nisr + x->npromoted && i < 2 * CLUSTER_REPLICAS_MAX; i++) {
        const char *id = i < x->nisr ? x->isr[i] : x->promoted_from[i - x->nisr];
        struct slot *o = find(s, m, id);
        if (o && cluster_part_index(c, id) < 0)
            return o;
    }
    return NULL;
}

/* The follower of 'c' to promote when its leader is gone: eligible, in sync, the highest
 * durable seq; ties, or any candidate's seq unknown, by replica order. With none, a copy
 * the record names that is no replica (returned_holder). NULL if none. */
static struct slot *promotion(struct slot *s, size_t m, const struct cluster_part *c,
                              uint32_t p, const struct assign_params *ap)
{
    struct slot *first = NULL, *best = NULL;
    uint64_t best_seq = 0;
    bool known = ap && ap->durable;
    for (uint32_t r = 1; r < c->nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
        struct slot *o = find(s, m, c->replicas[r]);
        if (!o || !in_sync(ap, p, o->id))
            continue;
        if (!first)
            first = o;
        uint64_t seq = known ? ap->durable[(size_t)p * CLUSTER_REPLICAS_MAX + r]
                             : ASSIGNER_SEQ_UNKNOWN;
        known = seq != ASSIGNER_SEQ_UNKNOWN;
        if (known && (!best || seq > best_seq)) {
            best = o;
            best_seq = seq;
        }
    }
    struct slot *o = known ? best : first;
    return o ? o : returned_holder(s, m, c, p, ap);
}

/* Shares: floor(total/m) each, one more for the first total % m in 'order'. */
static void shares(struct slot **order, size_t m, size_t total, bool follow)
{
    for (size_t i = 0; i < m; i++) {
        size_t t = total / m + (i < total % m ? 1 : 0);
        if (follow)
            order[i]->ftarget = t;
        else
            order[i]->target = t;
    }
}

/* Leaders: promotions, then current leaders up to their share, then the rest to the node
 * furthest below its share, an eligible follower of the partition first. */
static void place_leaders(struct slot *s, size_t m, struct slot **order,
                          const struct assign_node *nodes, size_t n,
                          const struct cluster_map *cur, const struct assign_params *ap,
                          struct pick *sets, bool *fixed, bool *offline)
{
    uint32_t P = cur->nparts;
    for (uint32_t p = 0; p < P; p++) {
        const struct cluster_part *c = &cur->parts[p];
        struct slot *o = find(s, m, c->owner);
        fixed[p] = false;
        offline[p] = false;
        if (!o && c->owner[0] && !alive(nodes, n, c->owner)) {
            o = promotion(s, m, c, p, ap);
            fixed[p] = o != NULL;
            /* an in-sync record naming two copies or more (its in-sync set, or the set a
             * leader in sync alone was promoted from) names those that held every
             * acknowledged event when it was written, whatever its epoch: one of an older
             * epoch is the set the leader was promoted from, and a follower added since is
             * in no record, so it holds nothing known. Every named copy gone: the events
             * are nowhere else, so wait for one of them (unless allowed not to). A record
             * of the leader alone with no promoted_from moves on as with one copy (from its
             * last checkpoint: a leader stopped with SIGTERM wrote it). The entry's own
             * replicas do not say: a cluster of R = 1 keeps records of its R = 2 days, of
             * copies that no longer follow */
            offline[p] = !o && ap && ap->replication_factor > 1 && !ap->unclean && ap->isr &&
                         cluster_isr_nholders(&ap->isr[p]) >= 2;
        }
        sets[p].n = o ? 1 : 0;
        sets[p].s[0] = o;
        if (o)
            o->have++;
    }
    qsort(order, m, sizeof(*order), cmp_have_desc);
    shares(order, m, P, false);
    for (size_t i = 0; i < m; i++)
        s[i].have = 0;
    /* a promotion stands whatever the shares: its data is there and nowhere else */
    for (uint32_t p = 0; p < P; p++) {
        if (fixed[p])
            sets[p].s[0]->have++;
    }
    /* keep up to the share, lowest partitions first: the surplus given away is the
     * highest-numbered */
    for (uint32_t p = 0; p < P; p++) {
        struct slot *o = sets[p].s[0];
        if (fixed[p] || !o)
            continue;
        if (o->have < o->target)
            o->have++;
        else
            sets[p].n = 0;
    }
    for (uint32_t p = 0; p < P; p++) {
        if (sets[p].n)
            continue;
        const struct cluster_part *c = &cur->parts[p];
        struct slot *best = NULL;
        for (uint32_t r = 1; r < c->nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
            struct slot *o = find(s, m, c->replicas[r]);
            if (o && deficit(o, false) > 0 && (!best || deficit(o, false) > deficit(best, false)))
                best = o;
        }
        bool best_follower = best != NULL;
        for (size_t i = 0; i < m && !best_follower; i++) { /* ties by id: 's' is by id */
            if (deficit(&s[i], false) > 0 && (!best || deficit(&s[i], false) > deficit(best, false)))
                best = &s[i];
        }
        if (!best)
            best = &s[0]; /* cannot happen: the shares add up to P */
        best->have++;
        sets[p].s[0] = best;
        sets[p].n = 1;
    }
}

/* The follower for one more slot of 'k': a zone within the cap first, then the node
 * furthest below its share, then the one that follows k's leader least (so that a dead
 * leader's partitions are promoted evenly across the others), ties by id. 'pairs' counts
 * [leader * m + follower]. */
static struct slot *choose_follower(struct slot *s, size_t m, const struct pick *k, size_t cap,
                                    const size_t *pairs)
{
    struct slot *best = NULL;
    bool best_zone = false;
    const size_t *row = pairs + (size_t)(k->s[0] - s) * m;
    for (size_t i = 0; i < m; i++) {
        if (pick_has(k, &s[i]))
            continue;
        bool z = zone_ok(k, &s[i], cap, CLUSTER_REPLICAS_MAX);
        long d = deficit(&s[i], true), bd = best ? deficit(best, true) : 0;
        if (!best || (z && !best_zone) ||
            (z == best_zone && (d > bd || (d == bd && row[i] < row[best - s])))) {
            best = &s[i];
            best_zone = z;
        }
    }
    return best;
}

/* Swap followers from nodes above their share to nodes below it, one partition at a time,
 * new followers before kept ones, zones within the cap. The greedy fill can end with the
 * only nodes left below their share already in the last partitions. */
static void rebalance_followers(struct slot *s, size_t m, const struct cluster_map *cur,
                                struct pick *sets, size_t cap, size_t *pairs)
{
    for (int pass = 0; pass < 2; pass++) {
        bool progress = true;
        while (progress) { /* sweeps, not a restart per swap: P can be 65535 */
            progress = false;
            for (uint32_t p = 0; p < cur->nparts; p++) {
                struct pick *k = &sets[p];
                for (uint32_t r = 1; r < k->n; r++) {
                    struct slot *u = k->s[r];
                    if (u->fhave <= u->ftarget ||
                        (pass == 0 && cluster_part_has(&cur->parts[p], u->id)))
                        continue;
                    for (size_t i = 0; i < m; i++) {
                        struct slot *v = &s[i];
                        if (v->fhave >= v->ftarget || pick_has(k, v) || !zone_ok(k, v, cap, r))
                            continue;
                        k->s[r] = v;
                        pairs[(size_t)(k->s[0] - s) * m + (size_t)(u - s)]--;
                        pairs[(size_t)(k->s[0] - s) * m + (size_t)(v - s)]++;
                        u->fhave--;
                        v->fhave++;
                        progress = true;
                        break;
                    }
                }
            }
        }
    }
}

/* Followers: current replicas (the old leader too) up to their share and within the zone
 * cap, in replica order, partitions with a new leader first; then fill each partition to
 * R; then even out the shares. */
static void place_followers(struct slot *s, size_t m, struct slot **order, uint32_t R,
                            size_t cap, const struct cluster_map *cur, struct pick *sets,
                            size_t *pairs)
{
    uint32_t P = cur->nparts;
    for (uint32_t p = 0; p < P; p++) {
        const struct cluster_part *c = &cur->parts[p];
        for (uint32_t r = 0; r < c->nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
            struct slot *o = find(s, m, c->replicas[r]);
            if (o && !pick_has(&sets[p], o))
                o->fhave++;
        }
    }
    qsort(order, m, sizeof(*order), cmp_follow);
    shares(order, m, (size_t)P * (R - 1), true);
    for (size_t i = 0; i < m; i++)
        s[i].fhave = 0;
    /* partitions with a new leader keep first: their one old replica left is where the
     * data is, while elsewhere a follower dropped for the shares is replaced by a node
     * that does not lead there (the new node) */
    for (uint32_t i = 0; i < 2 * P; i++) {
        uint32_t p = i % P;
        const struct cluster_part *c = &cur->parts[p];
        struct pick *k = &sets[p];
        if ((i < P) == (strcmp(c->owner, k->s[0]->id) == 0))
            continue;
        for (uint32_t r = 0; r < c->nreplicas && r < CLUSTER_REPLICAS_MAX && k->n < R; r++) {
            struct slot *o = find(s, m, c->replicas[r]);
            if (!o || pick_has(k, o) || o->fhave >= o->ftarget ||
                !zone_ok(k, o, cap, CLUSTER_REPLICAS_MAX))
                continue;
            k->s[k->n++] = o;
            o->fhave++;
            pairs[(size_t)(k->s[0] - s) * m + (size_t)(o - s)]++;
        }
    }
    for (uint32_t p = 0; p < P; p++) {
        struct pick *k = &sets[p];
        while (k->n < R) {
            struct slot *o = choose_follower(s, m, k, cap, pairs);
            k->s[k->n++] = o; /* never NULL: R <= m */
            o->fhave++;
            pairs[(size_t)(k->s[0] - s) * m + (size_t)(o - s)]++;
        }
    }
    rebalance_followers(s, m, cur, sets, cap, pairs);
}

size_t assigner_assign(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                       const struct assign_params *ap, struct cluster_map *next)
{
    uint32_t P = cur->nparts;
    memcpy(next->parts, cur->parts, P * sizeof(*cur->parts));
    next->nparts = P;
    next->version = cur->version;
    size_t moved = 0, m = 0;
    struct slot *s = calloc(n ? n : 1, sizeof(*s));
    struct slot **order = calloc(n ? n : 1, sizeof(*order));
    const char **zone_names = calloc(n ? n : 1, sizeof(*zone_names));
    struct pick *sets = calloc(P ? P : 1, sizeof(*sets));
    bool *fixed = calloc(P ? P : 1, sizeof(*fixed));
    bool *offline = calloc(P ? P : 1, sizeof(*offline));
    if (!s || !order || !zone_names || !sets || !fixed || !offline)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!nodes[i].state || nodes[i].draining || !nodes[i].id[0])
            continue;
        s[m].id = nodes[i].id;
        s[m++].zname = nodes[i].zone;
    }
    if (m == 0)
        goto out;
    qsort(s, m, sizeof(*s), cmp_id);
    size_t uniq = 1; /* an id listed twice counts once */
    for (size_t i = 1; i < m; i++) {
        if (strcmp(s[i].id, s[uniq - 1].id) != 0)
            s[uniq++] = s[i];
    }
    m = uniq;
    /* zones by first appearance in id order: the same whatever the input order */
    size_t zones = 0;
    for (size_t i = 0; i < m; i++) {
        const char *z = s[i].zname;
        size_t k = 0;
        while (k < zones && strcmp(zone_names[k], z) != 0)
            k++;
        if (k == zones)
            zone_names[zones++] = z;
        s[i].zone = k;
    }
    for (size_t i = 0; i < m; i++)
        order[i] = &s[i];
    uint32_t R = ap && ap->replication_factor > 1 ? ap->replication_factor : 1;
    if (R > m)
        R = (uint32_t)m;
    if (R > CLUSTER_REPLICAS_MAX)
        R = CLUSTER_REPLICAS_MAX;
    size_t cap = (R + zones - 1) / zones;

    place_leaders(s, m, order, nodes, n, cur, ap, sets, fixed, offline);
    if (R > 1) {
        size_t *pairs = calloc(m * m, sizeof(*pairs));
        if (!pairs) {
            memcpy(next->parts, cur->parts, P * sizeof(*cur->parts));
            goto out;
        }
        place_followers(s, m, order, R, cap, cur, sets, pairs);
        free(pairs);
    }

    for (uint32_t p = 0; p < P; p++) {
        const struct pick *k = &sets[p];
        struct cluster_part *po = &next->parts[p];
        if (offline[p])
            continue; /* kept as it is (the placement made for it is dropped) */
        if (strcmp(po->owner, k->s[0]->id) != 0) {
            po->epoch = cur->parts[p].epoch + 1;
            moved++;
        }
        cluster_part_set_single(po, k->s[0]->id);
        for (uint32_t r = 1; r < k->n; r++)
            snprintf(po->replicas[r], sizeof(po->replicas[r]), "%s", k->s[r]->id);
        po->nreplicas = k->n;
    }
out:
    free(offline);
    free(fixed);
    free(sets);
    free(zone_names);
    free(order);
    free(s);
    return moved;
}

size_t assigner_compute(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                        struct cluster_map *next)
{
    struct assign_params ap = {.replication_factor = 1, .isr = NULL, .durable = NULL};
    return assigner_assign(nodes, n, cur, &ap, next);
}

size_t assigner_count(const struct cluster_map *a, const char *id)
{
    size_t k = 0;
    for (uint32_t p = 0; p < a->nparts; p++)
        k += strcmp(a->parts[p].owner, id) == 0;
    return k;
}

size_t assigner_count_followers(const struct cluster_map *a, const char *id)
{
    size_t k = 0;
    for (uint32_t p = 0; p < a->nparts; p++)
        k += cluster_part_index(&a->parts[p], id) > 0;
    return k;
}

bool assigner_leader_lost(const struct cluster_map *map, const struct assign_node *before,
                          size_t nb, const struct assign_node *now, size_t nn)
{
    for (size_t i = 0; i < nb; i++) {
        if (!before[i].state || alive(now, nn, before[i].id))
            continue;
        for (uint32_t p = 0; p < map->nparts; p++)
            if (strcmp(map->parts[p].owner, before[i].id) == 0)
                return true;
    }
    return false;
}
