/* The assigner: a pure function from (live nodes, current partition map) to the next map:
 * each partition gets an ordered set of R distinct eligible state nodes, leader first.
 * No I/O, no clock, no randomness: the coordinator calls it, the tests call it with plain
 * structs. Properties (each one unit-tested):
 *   - balanced: every eligible node leads floor(P/N) or ceil(P/N) partitions and follows
 *     floor or ceil of P*(R-1)/N (R = min(replication factor, N));
 *   - minimal movement: a replica stays where it is unless its node is gone, draining, or
 *     above its share; only the surplus moves;
 *   - deterministic: the same input gives the same output, whatever the input order of
 *     the nodes;
 *   - zones: the replicas of a partition are in distinct zones when there are at least R
 *     zones (else no zone holds more than ceil(R/zones) of them), before balance;
 *   - failover is a promotion: a partition whose leader is gone (not listed, or not a
 *     state node) is led by an eligible in-sync follower when there is one (the highest
 *     durable seq; ties, or a candidate whose seq is unknown, by replica order), whatever
 *     the shares; the data stays where it is, and a later round moves a surplus of
 *     leaders away live; with none, a live copy the in-sync record names that is no
 *     replica any more (a predecessor back after the copies promoted from it were lost);
 *   - fenced: a partition whose leader changes gets epoch + 1 (a change of followers only
 *     keeps the epoch).
 * Eligible nodes are live state nodes that are not draining. With none, partitions keep
 * their owner and replicas (there is nowhere to move them). */
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
    char zone[CLUSTER_ZONE_MAX]; /* failure domain; "" counts as one zone of its own */
};

/* A follower's durable seq that the coordinator does not know (see assign_params). */
#define ASSIGNER_SEQ_UNKNOWN UINT64_MAX

struct assign_params {
    uint32_t replication_factor;   /* R asked for; 0 counts as 1; capped by eligible nodes */
    /* [nparts] in-sync sets as the leaders recorded them, or NULL: every listed replica
     * counts as in sync (so does an entry with nisr == 0: no record). A copy a record
     * names in isr or promoted_from counts as in sync. Borrowed. */
    const struct cluster_isr *isr;
    /* [nparts * CLUSTER_REPLICAS_MAX] or NULL: durable seq of cur->parts[p].replicas[r] at
     * [p * CLUSTER_REPLICAS_MAX + r] (ASSIGNER_SEQ_UNKNOWN: not published), to pick among
     * in-sync followers. When any candidate's is unknown the choice falls back to replica
     * order: an unknown seq ranks neither above nor below a known one. Borrowed. */
    const uint64_t *durable;
    /* Whether a partition whose leader is gone and whose in-sync record (isr/<p>, of any
     * epoch, naming two ids or more in isr and promoted_from together) names no live copy
     * may be given to another node (Kafka's unclean leader election: what only the lost
     * copies held is lost). false: it keeps its map entry, offline, until one of them
     * returns. A record names the copies that held every acknowledged event when it was
     * written: one older than the map's epoch is the set its leader was promoted from (it
     * has not recorded its own yet), so is the promoted_from of a leader in sync alone, and
     * a follower added since is in no record, so it holds nothing known and is never
     * promoted from it. With replication_factor 1, no record, or a record naming its
     * leader alone with no promoted_from, a partition always moves (it restarts from the
     * last checkpoint of a shared directory); the entry's replicas do not count (a live
     * move lists the leader alone when the target's follower would be the leader). */
    bool unclean;
};

/* Compute 'next' (its parts array must have cur->nparts entries) from 'cur' and the
 * 'n' nodes. Returns the number of partitions whose owner (leader) changed, or 0 with
 * 'next' a copy of 'cur' when out of memory. */
size_t assigner_assign(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                       const struct assign_params *ap, struct cluster_map *next);

/* assigner_assign with R = 1: one replica, the owner. */
size_t assigner_compute(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                        struct cluster_map *next);

/* Whether a node that leads partitions in 'map' had the state role in 'before' (the nodes
 * 'map' was computed from) and is not in 'now': the partitions it led take writes again
 * only once the next map names their new leaders, so that map is not worth a settle. */
bool assigner_leader_lost(const struct cluster_map *map, const struct assign_node *before,
                          size_t nb, const struct assign_node *now, size_t nn);

/* Number of partitions led by 'id' in 'a'. */
size_t assigner_count(const struct cluster_map *a, const char *id);
/* Number of partitions 'id' follows in 'a' (a replica, not the leader). */
size_t assigner_count_followers(const struct cluster_map *a, const char *id);

#endif
