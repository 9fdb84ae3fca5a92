/* The assigner: a pure function from (live nodes, current partition map) to the next map.
 * No I/O, no clock, no randomness: the coordinator calls it, the tests call it with plain
 * structs. Properties (each one unit-tested):
 *   - balanced: every eligible node owns floor(P/N) or ceil(P/N) partitions;
 *   - minimal movement: a partition stays with its owner unless that owner is gone,
 *     draining, or above its share; only the surplus moves;
 *   - deterministic: the same input gives the same output, whatever the input order of
 *     the nodes;
 *   - fenced: a partition whose owner changes gets epoch + 1.
 * Eligible nodes are live state nodes that are not draining. With none, partitions keep
 * their owner (there is nowhere to move them). */
#ifndef EDDY_ASSIGNER_H
#define EDDY_ASSIGNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cluster.h"

struct assign_node {
    char id[CLUSTER_ID_MAX];
    bool state;      /* has the state role */
    bool draining;   /* asked to give its partitions away (eddy drain) */
};

/* Compute 'next' (its parts array must have cur->nparts entries) from 'cur' and the
 * 'n' nodes. Returns the number of partitions whose owner changed. */
size_t assigner_compute(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                        struct cluster_map *next);

/* Number of partitions owned by 'id' in 'a'. */
size_t assigner_count(const struct cluster_map *a, const char *id);

#endif
