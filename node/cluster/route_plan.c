/* The routing plan of an Ingest batch (bucketing by partition, grouping by owner) and the
 * order in which a stale-allowed read tries a partition's copies. */
#include "node/cluster/route_plan.h"

#include <stdlib.h>
#include <string.h>

#include "common/partition.h"

eddy_err route_plan_init(struct route_plan *pl, Eddy__V1__Event *const *events, size_t n,
                         uint32_t nparts)
{
    pl->nparts = nparts;
    pl->start = calloc((size_t)nparts + 1, sizeof(*pl->start));
    pl->order = malloc((n ? n : 1) * sizeof(*pl->order));
    uint32_t *part = malloc((n ? n : 1) * sizeof(*part));
    size_t *fill = calloc(nparts ? nparts : 1, sizeof(*fill));
    eddy_err err = EDDY_ERR_NOMEM;
    if (!pl->start || !pl->order || !part || !fill)
        goto out;
    for (size_t i = 0; i < n; i++) {
        part[i] = partition_of_user(events[i]->user_id, nparts);
        pl->start[part[i] + 1]++;
    }
    for (uint32_t p = 0; p < nparts; p++)
        pl->start[p + 1] += pl->start[p];
    for (size_t i = 0; i < n; i++) /* stable: batch order within each partition */
        pl->order[pl->start[part[i]] + fill[part[i]]++] = events[i];
    err = EDDY_OK;
out:
    free(part);
    free(fill);
    return err;
}

void route_plan_release(struct route_plan *pl)
{
    free(pl->start);
    free(pl->order);
    pl->start = NULL;
    pl->order = NULL;
}

/* route_plan_group over 'nparts' partitions; with 'pl', only those with events in it. */
static size_t group(const struct route_plan *pl, uint32_t nparts, const bool *pending,
                    const char (*owner)[CLUSTER_ADDR_MAX], uint32_t *parts,
                    struct route_group *groups, size_t max_groups)
{
    size_t ng = 0, used = 0;
    /* two passes: count each owner's partitions, then lay them out contiguously */
    size_t *count = calloc(max_groups ? max_groups : 1, sizeof(*count));
    if (!count)
        return 0;
    for (uint32_t p = 0; p < nparts; p++) {
        if (!pending[p] || (pl && route_plan_count(pl, p) == 0) || owner[p][0] == '\0')
            continue;
        size_t g = 0;
        while (g < ng && strcmp(groups[g].addr, owner[p]) != 0)
            g++;
        if (g == ng) {
            if (ng == max_groups)
                continue;
            memcpy(groups[g].addr, owner[p], CLUSTER_ADDR_MAX);
            ng++;
        }
        count[g]++;
    }
    for (size_t g = 0; g < ng; g++) {
        groups[g].parts = parts + used;
        groups[g].nparts = 0;
        used += count[g];
    }
    for (uint32_t p = 0; p < nparts; p++) {
        if (!pending[p] || (pl && route_plan_count(pl, p) == 0) || owner[p][0] == '\0')
            continue;
        for (size_t g = 0; g < ng; g++) {
            if (strcmp(groups[g].addr, owner[p]) == 0) {
                groups[g].parts[groups[g].nparts++] = p;
                break;
            }
        }
    }
    free(count);
    return ng;
}

size_t route_plan_group(const struct route_plan *pl, const bool *pending,
                        const char (*owner)[CLUSTER_ADDR_MAX], uint32_t *parts,
                        struct route_group *groups, size_t max_groups)
{
    return group(pl, pl->nparts, pending, owner, parts, groups, max_groups);
}

size_t route_plan_group_parts(uint32_t nparts, const bool *pending,
                              const char (*owner)[CLUSTER_ADDR_MAX], uint32_t *parts,
                              struct route_group *groups, size_t max_groups)
{
    return group(NULL, nparts, pending, owner, parts, groups, max_groups);
}

size_t route_plan_read_order(const struct cluster_part *part, const char *self, uint32_t turn,
                             uint32_t *order)
{
    uint32_t R = part->nreplicas < CLUSTER_REPLICAS_MAX ? part->nreplicas : CLUSTER_REPLICAS_MAX;
    if (R == 0)
        return 0;
    int mine = self && self[0] ? cluster_part_index(part, self) : -1;
    size_t n = 0;
    if (mine >= 0 && (uint32_t)mine < R)
        order[n++] = (uint32_t)mine;
    uint32_t nf = R - 1;
    for (uint32_t k = 0; k < nf; k++) {
        uint32_t i = 1 + (turn + k) % nf;
        if ((int)i != mine)
            order[n++] = i;
    }
    if (mine != 0)
        order[n++] = 0;
    return n;
}

void route_tally_unacked(struct route_tally *t, uint32_t accepted, uint32_t late)
{
    t->accepted += accepted;
    t->late += late;
}

void route_tally_acked(const struct route_tally *t, uint32_t *accepted, uint32_t *duplicates,
                       uint32_t *late)
{
    uint32_t mine = *duplicates < t->accepted ? *duplicates : t->accepted;
    *accepted += mine;
    *duplicates -= mine;
    *late += mine < t->late ? mine : t->late;
}
