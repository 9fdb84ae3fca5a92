/* The move planner: from the assigner's target map, the stored map and the moves in
 * progress, what the leader does next (docs/design.md §7). Pure: no I/O, no clock (the caller
 * passes the time), so the tests call it with plain structs.
 *
 * A partition whose owner is alive is never reassigned outright: it gets a live move
 * (record moves/<p>, phase "copy") and keeps its owner until the target says "ready";
 * then the planner flips the owner to the target with epoch + 1 and the phase to
 * "flipped". A "done" record is deleted. A partition whose owner is gone (or that was
 * never assigned) is reassigned at once (failover: the new owner restores it from the
 * shared checkpoint directory). At most max_moves moves run at once.
 *
 * Moves that cannot go on are cancelled (record deleted): before the flip when the
 * source or the target is gone, the source no longer owns the partition at the move's
 * epoch, or the move is older than the timeout; after the flip when the target is gone,
 * the partition goes back to a live source (it still holds everything up to the flip),
 * epoch + 1.
 *
 * Replicas (assigner.h): the followers of each partition are the target's at once (a new
 * follower catches up from its leader by itself: no move record). A leader that changes
 * to a node whose old leader is gone is a failover at once, with no move (a promotion of
 * an in-sync follower when the assigner picked one); a leader that changes while the old
 * one is alive goes through the live move above, even to a follower, and until the flip
 * the set is the old leader, the followers it has (they keep replicating: it acknowledges
 * with min-insync copies throughout, and its in-sync record names only copies that
 * follow), then the target's followers, up to CLUSTER_REPLICAS_MAX. The move's target is
 * among them when it already is a replica of the partition (its copy stays the replicated
 * log's, one the in-sync record may name: the move hands the leadership over and copies
 * nothing), not otherwise. At the flip the target's set applies. With R = 1 every set is
 * [owner]: the moves are exactly those of an unreplicated cluster. */
#ifndef EDDY_PLANNER_H
#define EDDY_PLANNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cluster.h"
#include "coordinator/assigner.h"

struct plan_rec {
    bool present;
    struct cluster_move m;
    int64_t mod;            /* mod_revision of the record (for the caller's CAS) */
};

enum plan_op { PLAN_CREATE, PLAN_DELETE, PLAN_FLIPPED };

struct plan_action {
    enum plan_op op;
    bool load;              /* CREATE of a move for load balance (not for the count share) */
    struct cluster_move m;  /* CREATE: the new record; FLIPPED: the record with the phase */
    int64_t mod;            /* DELETE, FLIPPED: the mod_revision the record must still have */
};

struct plan_params {
    size_t max_moves;       /* >= 1 */
    int64_t move_timeout_ms;/* a move not flipped after this is cancelled (0: never) */
    int64_t now_ms;         /* wall clock, for started_ms and the timeout */
    /* Load balance (NULL rates: off): events/s of each partition as its owner last
     * published. Considered only when 'load_due', nothing else is moving or planned and
     * max_moves >= 2: if the most loaded eligible node carries more than the mean *
     * (1 + load_imbalance) and load_min_eps more than the least loaded one, the planner
     * moves the hot partition (and a cold one back, when the share of partitions needs
     * it) that brings the two closest, if that lowers the maximum by load_min_eps / 2. */
    const double *rates;
    double load_imbalance;
    double load_min_eps;
    bool load_due;
};

/* Compute 'next' (parts array of cur->nparts entries; version = cur's) from the stored
 * map 'cur', the assigner's 'target' and the move records 'recs' [nparts], for the live
 * 'nodes'. 'acts' receives up to 2 * nparts actions (caller's array), *nacts how many.
 * Returns the number of partitions whose owner, epoch or replicas differ between 'cur' and
 * 'next' (the map must be written if > 0). */
size_t planner_plan(const struct assign_node *nodes, size_t n, const struct cluster_map *cur,
                    const struct cluster_map *target, const struct plan_rec *recs,
                    const struct plan_params *pp, struct cluster_map *next,
                    struct plan_action *acts, size_t *nacts);

#endif
