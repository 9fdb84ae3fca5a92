/* Balanced, minimal-movement, deterministic partition assignment. */
#include "coordinator/assigner.h"

#include <stdlib.h>
#include <string.h>

struct slot {
    const char *id;
    size_t have;     /* partitions it keeps so far */
    size_t target;   /* floor or ceil of P/N */
};

static int cmp_id(const void *a, const void *b)
{
    return strcmp(((const struct slot *)a)->id, ((const struct slot *)b)->id);
}

/* Nodes that currently own more come first, so they keep the ceil shares. */
static int cmp_have_desc(const void *a, const void *b)
{
    const struct slot *x = a, *y = b;
    if (x->have != y->have)
        return x->have < y->have ? 1 : -1;
    return strcmp(x->id, y->id);
}

static struct slot *find(struct slot *s, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s[i].id, id) == 0)
            return &s[i];
    }
    return NULL;
}

size_t assigner_count(const struct cluster_map *a, const char *id)
{
    size_t k = 0;
    for (uint32_t p = 0; p < a->nparts; p++)
        k += strcmp(a->parts[p].owner, id) == 0;
    return k;
}

size_t assigner_compute(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                        struct cluster_map *next)
{
    uint32_t P = cur->nparts;
    memcpy(next->parts, cur->parts, P * sizeof(*cur->parts));
    next->nparts = P;
    next->version = cur->version;

    struct slot *s = calloc(n ? n : 1, sizeof(*s));
    if (!s)
        return 0;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!nodes[i].state || nodes[i].draining || !nodes[i].id[0] ||
            find(s, m, nodes[i].id))
            continue;
        s[m++].id = nodes[i].id;
    }
    if (m == 0) {
        free(s);
        return 0;
    }
    qsort(s, m, sizeof(*s), cmp_id);
    for (uint32_t p = 0; p < P; p++) {
        struct slot *o = find(s, m, cur->parts[p].owner);
        if (o)
            o->have++;
    }
    qsort(s, m, sizeof(*s), cmp_have_desc);
    for (size_t i = 0; i < m; i++)
        s[i].target = P / m + (i < P % m ? 1 : 0);

    /* Pass 1: keep partitions with eligible owners up to their target (lowest partitions
     * first, so the surplus given away is the highest-numbered). */
    bool *orphan = calloc(P ? P : 1, sizeof(*orphan));
    if (!orphan) {
        free(s);
        return 0;
    }
    for (size_t i = 0; i < m; i++)
        s[i].have = 0;
    for (uint32_t p = 0; p < P; p++) {
        struct slot *o = find(s, m, cur->parts[p].owner);
        if (o && o->have < o->target)
            o->have++;
        else
            orphan[p] = true;
    }
    /* Pass 2: give each orphan to the node furthest below its target (ties by id). */
    size_t moved = 0;
    qsort(s, m, sizeof(*s), cmp_id);
    for (uint32_t p = 0; p < P; p++) {
        if (!orphan[p])
            continue;
        struct slot *best = NULL;
        for (size_t i = 0; i < m; i++) {
            if (s[i].have >= s[i].target)
                continue;
            if (!best || s[i].target - s[i].have > best->target - best->have)
                best = &s[i];
        }
        if (!best)
            break; /* cannot happen: targets sum to P */
        best->have++;
        struct cluster_part *po = &next->parts[p];
        if (strcmp(po->owner, best->id) != 0) {
            cluster_part_set_single(po, best->id);
            po->epoch = cur->parts[p].epoch + 1;
            moved++;
        }
    }
    free(orphan);
    free(s);
    return moved;
}
