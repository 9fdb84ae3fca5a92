/* Live moves planned from the assigner's target (see planner.h). */
#include "coordinator/planner.h"

#include <stdio.h>
#include <string.h>

static bool alive(const struct assign_node *nodes, size_t n, const char *id)
{
    for (size_t i = 0; i < n && id[0]; i++) {
        if (nodes[i].state && strcmp(nodes[i].id, id) == 0)
            return true;
    }
    return false;
}

static void give(struct cluster_map *next, uint32_t p, const char *owner, size_t *changes)
{
    cluster_part_set_single(&next->parts[p], owner);
    next->parts[p].epoch++;
    (*changes)++;
}

/* One partition's replicas as a list: a part with an owner and no list (built by hand, or
 * by an older coordinator) counts as [owner]. */
static struct cluster_part normal(const struct cluster_part *c)
{
    struct cluster_part n = *c;
    if (n.nreplicas == 0 && n.owner[0])
        cluster_part_set_single(&n, n.owner);
    return n;
}

static bool same_part(const struct cluster_part *a, const struct cluster_part *b)
{
    struct cluster_part x = normal(a), y = normal(b);
    if (strcmp(x.owner, y.owner) != 0 || x.epoch != y.epoch || x.nreplicas != y.nreplicas)
        return false;
    for (uint32_t r = 0; r < x.nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
        if (strcmp(x.replicas[r], y.replicas[r]) != 0)
            return false;
    }
    return true;
}

/* Append follower 'id' to 'np' unless it is listed already or the list is full. */
static void add_follower(struct cluster_part *np, const char *id)
{
    if (id[0] && !cluster_part_has(np, id) && np->nreplicas < CLUSTER_REPLICAS_MAX)
        snprintf(np->replicas[np->nreplicas++], CLUSTER_ID_MAX, "%.*s", CLUSTER_ID_MAX - 1, id);
}

/* The replicas of 'np' once its leader is decided: the target's set when the leader is
 * the target's. Otherwise (a move running, or waiting for its turn) the leader, then every
 * follower it has now, then the target's followers but not the target's leader, up to
 * CLUSTER_REPLICAS_MAX: the followers it has keep replicating, so the leader still
 * acknowledges with min-insync copies and its in-sync record names only copies that
 * follow (listing the target's set alone left the leader alone when the target's follower
 * is the leader: an R = 1 window, its record naming a follower that no longer followed).
 * A follower that dies meanwhile stays listed: the leader's in-sync clock drops it from
 * its record and refuses writes with fewer copies than min-insync, as for any partition.
 * The target's leader gets the data through the move and joins the set at the flip,
 * unless it already follows: then it stays listed, so that its copy, which the in-sync
 * record may name, stays the replicated log's and the move only hands the leadership over
 * (node/cluster/mover.c never loads a checkpoint over a copy the map lists). At the flip
 * the target's set applies; the followers it leaves out stop following and leave the new
 * leader's record. With R = 1 that is [owner], as before replicas. */
static void set_replicas(struct cluster_part *np, const struct cluster_part *target)
{
    struct cluster_part t = normal(target);
    uint64_t epoch = np->epoch;
    if (strcmp(np->owner, t.owner) == 0) {
        *np = t;
        np->epoch = epoch;
        return;
    }
    struct cluster_part was = normal(np);
    cluster_part_set_single(np, np->owner);
    if (!np->owner[0])
        return;
    for (uint32_t r = 0; r < was.nreplicas && r < CLUSTER_REPLICAS_MAX; r++)
        add_follower(np, was.replicas[r]);
    for (uint32_t r = 0; r < t.nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
        if (strcmp(t.replicas[r], t.owner) != 0)
            add_follower(np, t.replicas[r]);
    }
}

static void act(struct plan_action *acts, size_t *nacts, enum plan_op op,
                const struct cluster_move *m, int64_t mod)
{
    acts[*nacts].load = false;
    acts[*nacts].op = op;
    acts[*nacts].m = *m;
    acts[*nacts].mod = mod;
    (*nacts)++;
}

static struct cluster_move move_of(uint32_t p, const struct cluster_part *c, const char *to,
                                   int64_t now_ms)
{
    struct cluster_move m = {.partition = p, .epoch = c->epoch, .phase = MOVE_COPY,
                             .started_ms = now_ms};
    snprintf(m.from, sizeof(m.from), "%s", c->owner);
    snprintf(m.to, sizeof(m.to), "%s", to);
    return m;
}

/* Load of eligible node 'id' in 'm' (events/s) and its partition count. */
static double load_of(const struct cluster_map *m, const double *rates, const char *id,
                      size_t *count)
{
    double l = 0;
    *count = 0;
    for (uint32_t p = 0; p < m->nparts; p++) {
        if (strcmp(m->parts[p].owner, id) == 0) {
            l += rates[p];
            (*count)++;
        }
    }
    return l;
}

/* The load step (see plan_params): at most one hot partition out of the most loaded node
 * and, to keep the shares of partitions, one cold partition back. */
static void plan_load(const struct assign_node *nodes, size_t n, const struct cluster_map *m,
                      const struct plan_params *pp, struct plan_action *acts, size_t *nacts)
{
    const struct assign_node *hot = NULL, *cold = NULL;
    double lh = 0, lc = 0, total = 0;
    size_t ch = 0, cc = 0, eligible = 0;
    for (size_t i = 0; i < n; i++) {
        if (!nodes[i].state || nodes[i].draining)
            continue;
        size_t c;
        double l = load_of(m, pp->rates, nodes[i].id, &c);
        total += l;
        eligible++;
        /* ties go to the smaller id: the same input gives the same plan */
        if (!hot || l > lh || (l == lh && strcmp(nodes[i].id, hot->id) < 0)) {
            hot = &nodes[i];
            lh = l;
            ch = c;
        }
        if (!cold || l < lc || (l == lc && strcmp(nodes[i].id, cold->id) < 0)) {
            cold = &nodes[i];
            lc = l;
            cc = c;
        }
    }
    if (eligible < 2 || hot == cold || lh - lc < pp->load_min_eps ||
        lh <= total / (double)eligible * (1 + pp->load_imbalance))
        return;
    /* the best (x out of hot, y out of cold or none) by the resulting maximum */
    int64_t bx = -1, by = -1;
    double best = lh - pp->load_min_eps / 2;
    for (uint32_t x = 0; x < m->nparts; x++) {
        if (strcmp(m->parts[x].owner, hot->id) != 0 || pp->rates[x] <= 0)
            continue;
        for (int64_t y = ch > cc ? -1 : 0; y < (int64_t)m->nparts; y++) {
            if (y >= 0 && strcmp(m->parts[y].owner, cold->id) != 0)
                continue;
            double ry = y >= 0 ? pp->rates[y] : 0;
            double nh = lh - pp->rates[x] + ry, nc = lc + pp->rates[x] - ry;
            double mx = nh > nc ? nh : nc;
            if (mx < best) {
                best = mx;
                bx = x;
                by = y;
            }
        }
    }
    if (bx < 0)
        return;
    struct cluster_move mx = move_of((uint32_t)bx, &m->parts[bx], cold->id, pp->now_ms);
    act(acts, nacts, PLAN_CREATE, &mx, 0);
    acts[*nacts - 1].load = true;
    if (by >= 0) {
        struct cluster_move my = move_of((uint32_t)by, &m->parts[by], hot->id, pp->now_ms);
        act(acts, nacts, PLAN_CREATE, &my, 0);
        acts[*nacts - 1].load = true;
    }
}

size_t planner_plan(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                    const struct cluster_map *target, const struct plan_rec *recs,
                    const struct plan_params *pp, struct cluster_map *next,
                    struct plan_action *acts, size_t *nacts)
{
    uint32_t P = cur->nparts;
    memcpy(next->parts, cur->parts, P * sizeof(*cur->parts));
    next->nparts = P;
    next->version = cur->version;
    *nacts = 0;
    size_t changes = 0, running = 0;

    /* first the moves in progress: finish, flip, cancel or keep */
    for (uint32_t p = 0; p < P; p++) {
        const struct plan_rec *r = &recs[p];
        if (!r->present)
            continue;
        const struct cluster_move *m = &r->m;
        const struct cluster_part *c = &cur->parts[p];
        bool from_ok = alive(nodes, n, m->from), to_ok = alive(nodes, n, m->to);
        bool at_source = strcmp(c->owner, m->from) == 0 && c->epoch == m->epoch;
        bool at_target = strcmp(c->owner, m->to) == 0 && c->epoch == m->epoch + 1;
        switch (m->phase) {
        case MOVE_DONE:
            act(acts, nacts, PLAN_DELETE, m, r->mod);
            continue;
        case MOVE_FLIPPED:
            if (at_target && to_ok) {
                running++;
                continue;
            }
            if (at_target && from_ok) /* the target died after the flip: back to the source */
                give(next, p, m->from, &changes);
            act(acts, nacts, PLAN_DELETE, m, r->mod);
            continue;
        case MOVE_COPY:
        case MOVE_READY:
            if (at_target) { /* flipped, but the phase write was lost: write it now */
                struct cluster_move f = *m;
                f.phase = MOVE_FLIPPED;
                act(acts, nacts, PLAN_FLIPPED, &f, r->mod);
                running++;
                continue;
            }
            if (!at_source || !from_ok || !to_ok ||
                (pp->move_timeout_ms > 0 && m->phase == MOVE_COPY &&
                 pp->now_ms - m->started_ms > pp->move_timeout_ms)) {
                act(acts, nacts, PLAN_DELETE, m, r->mod);
                continue;
            }
            if (m->phase == MOVE_READY) {
                give(next, p, m->to, &changes);
                struct cluster_move f = *m;
                f.phase = MOVE_FLIPPED;
                act(acts, nacts, PLAN_FLIPPED, &f, r->mod);
            }
            running++;
            continue;
        }
    }

    /* then the partitions the assigner wants elsewhere: first one move per target (a
     * target takes its moves one at a time), then, if slots are left, more */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t p = 0; p < P; p++) {
            const struct cluster_part *c = &next->parts[p];
            const char *want = target->parts[p].owner;
            if (!want[0] || strcmp(c->owner, want) == 0)
                continue;
            const struct plan_rec *r = &recs[p];
            bool kept = r->present, busy = false;
            for (size_t i = 0; kept && i < *nacts; i++) /* deleted this round: free again */
                if (acts[i].op == PLAN_DELETE && acts[i].m.partition == p)
                    kept = false;
            for (size_t i = 0; !kept && i < *nacts; i++) /* started in the first pass */
                kept = acts[i].op == PLAN_CREATE && acts[i].m.partition == p;
            if (kept)
                continue;
            if (strcmp(c->owner, cur->parts[p].owner) != 0)
                continue; /* changed above (reverted to its source, or failed over) */
            if (!c->owner[0] || !alive(nodes, n, c->owner)) {
                give(next, p, want, &changes); /* failover: nobody to copy from */
                continue;
            }
            if (running >= pp->max_moves)
                continue;
            for (uint32_t q = 0; q < P && pass == 0 && !busy; q++) /* moves running */
                busy = recs[q].present && recs[q].m.phase != MOVE_DONE &&
                       strcmp(recs[q].m.to, want) == 0;
            for (size_t i = 0; i < *nacts && pass == 0 && !busy; i++) /* and new ones */
                busy = acts[i].op == PLAN_CREATE && strcmp(acts[i].m.to, want) == 0;
            if (busy)
                continue;
            struct cluster_move m = move_of(p, c, want, pp->now_ms);
            act(acts, nacts, PLAN_CREATE, &m, 0);
            running++;
        }
    }
    if (pp->rates && pp->load_due && running == 0 && *nacts == 0 && changes == 0 &&
        pp->max_moves >= 2)
        plan_load(nodes, n, next, pp, acts, nacts);
    /* the followers come from the target at once: a new follower catches up from its
     * leader by itself, no move record needed */
    changes = 0;
    for (uint32_t p = 0; p < P; p++) {
        set_replicas(&next->parts[p], &target->parts[p]);
        changes += !same_part(&next->parts[p], &cur->parts[p]);
    }
    return changes;
}
