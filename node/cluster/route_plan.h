/* The routing plan of one Ingest batch, as pure functions the router calls and the tests
 * call with plain arrays: the events bucketed by user partition (each partition's events in
 * batch order), then the partitions still to send grouped by the owner that carries them,
 * one request per owner. No I/O and no map: the router looks the owners up. */
#ifndef EDDY_ROUTE_PLAN_H
#define EDDY_ROUTE_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cluster.h"
#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"

struct route_plan {
    uint32_t nparts;
    size_t *start;            /* [nparts + 1]: partition p's events are order[start[p] ..
                                 start[p + 1]) */
    Eddy__V1__Event **order;  /* [n] borrowed events, bucketed */
};

/* Bucket 'n' events by partition_of_user(user_id, nparts). 'pl' is released with
 * route_plan_release, also after an error (EDDY_ERR_NOMEM). */
eddy_err route_plan_init(struct route_plan *pl, Eddy__V1__Event *const *events, size_t n,
                         uint32_t nparts);
void route_plan_release(struct route_plan *pl);

/* Events of partition p in the plan. */
static inline size_t route_plan_count(const struct route_plan *pl, uint32_t p)
{
    return pl->start[p + 1] - pl->start[p];
}

/* One request of a round: the owner's address and its partitions, ascending. */
struct route_group {
    char addr[CLUSTER_ADDR_MAX];
    uint32_t *parts;          /* points into the caller's 'parts' array */
    size_t nparts;
};

/* Group the partitions with pending[p] and owner[p] set (an address; "" = no live owner:
 * left out) by owner, in order of each owner's first partition, at most 'max_groups'
 * groups (partitions of further owners are left out, to be retried). 'parts' (nparts
 * entries) receives the partitions, 'groups' (max_groups entries) the requests. Returns the
 * number of groups. */
size_t route_plan_group(const struct route_plan *pl, const bool *pending,
                        const char (*owner)[CLUSTER_ADDR_MAX], uint32_t *parts,
                        struct route_group *groups, size_t max_groups);

/* The same for any 'nparts' partitions with pending[p] (events or not): the copies a
 * global read asks, one request per node. */
size_t route_plan_group_parts(uint32_t nparts, const bool *pending,
                              const char (*owner)[CLUSTER_ADDR_MAX], uint32_t *parts,
                              struct route_group *groups, size_t max_groups);

/* The copies of 'part' that a read allowed to be stale tries, best first, as indices into
 * part->replicas (0: the leader): this node's own copy when it holds one (no network hop),
 * then the followers round-robin from 'turn' (the caller's counter: spreads the reads;
 * each follower refuses when it is too far behind, so the next one is asked), the leader
 * last. 'order' has CLUSTER_REPLICAS_MAX entries; returns how many are filled (nreplicas). */
size_t route_plan_read_order(const struct cluster_part *part, const char *self, uint32_t turn,
                             uint32_t *order);

/* What one partition's owner wrote across the tries of one batch. An owner that wrote
 * the events but could not acknowledge them (fewer in-sync copies than min-insync, e.g.
 * while a follower copies a checkpoint after a reprocess; its etcd session lost) answers
 * UNAVAILABLE with the counts of that write, and the router's retry finds those events
 * recorded: duplicates to the owner, not to the client, whose batch wrote them once. */
struct route_tally {
    uint32_t accepted, late; /* written by tries that were not acknowledged */
};

/* A try that was not acknowledged wrote 'accepted' events ('late' of them late). */
void route_tally_unacked(struct route_tally *t, uint32_t accepted, uint32_t late);

/* The counts of the acknowledged try, corrected in place: its duplicates that the earlier
 * tries wrote are counted as accepted (and late) again. */
void route_tally_acked(const struct route_tally *t, uint32_t *accepted, uint32_t *duplicates,
                       uint32_t *late);

#endif
