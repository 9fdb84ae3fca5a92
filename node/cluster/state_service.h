/* The internal eddy.state.v1.State service of a state node in a cluster: Apply and Forward
 * (writes, fenced by partition epoch and by the node's etcd session), User (per-user
 * requests for the partitions it owns), Partial (its share of global queries),
 * CategoryTop and Neighbours (stage-2 reads for other nodes' Recommend). */
#ifndef EDDY_STATE_SERVICE_H
#define EDDY_STATE_SERVICE_H

#include <stdatomic.h>

#include "common/rpc_server.h"
#include "node/cluster/membership.h"
#include "node/cluster/replica.h"
#include "node/state/engine.h"
#include "node/state/local_backend.h"
#include "node/state/stage2cache.h"
#include "node/state/query.h"
#include "node/state/stage2_side.h"

/* Handler lanes of the State methods (see rpc_server.h "Lanes"). A User request may call
 * CategoryTop and Neighbours on every node (this one too), so it runs on a lane below
 * them; the other State methods call no handler and share the innermost lane. The public
 * eddy.v1.Eddy methods, which call User, Apply and Partial, are on lane 0. */
#define STATE_LANE_USER 1
#define STATE_LANE_LEAF 2
/* Rebuild traffic (Reprocess, Stage2Rebuild, RebuildForward): calls that apply thousands
 * of records or wait for a writer job, kept off the threads of Apply, Forward and the
 * stage-2 reads that ingest and Recommend wait on. */
#define STATE_LANE_REBUILD 3

struct state_service {
    engine *eng;          /* borrowed */
    membership *mem;      /* borrowed */
    struct query_ctx q;   /* Recommend uses the cluster-wide stage-2 source */
    stage2cache *local;   /* this node's own product partitions, for CategoryTop */
    const char *checkpoint_dir; /* where newly owned partitions are restored from (shared) */
    ckptsched *cks;       /* borrowed; NULL: no checkpoints. DeleteUser purges (local_backend) */
    expreg *exps;         /* borrowed; NULL: none. Recommend follows them (local_backend) */
    int64_t click_window_ms, purchase_window_ms; /* an experiment's windows when unset */
    /* Per partition: epoch + 1 once this node has taken the partition over at that epoch
     * (restored from a newer checkpoint, or found its own state current); 0 before. Apply,
     * User and Forward for an owned partition wait (UNAVAILABLE) until it is ready.
     * Allocated by state_service_takeover_init. */
    _Atomic uint64_t *ready;
    _Atomic uint64_t *restoring; /* epoch + 1 of a restore in flight, 0 if none */
    /* Live moves (docs/design.md §7). As a target: non-zero while the mover brings the
     * partition here; take-over leaves it to the mover, which marks it ready after the
     * final tail. As a source: the move whose copy froze the partition's stage 2, and
     * until when (CLOCK_MONOTONIC ms; each FetchLog of that move renews it). */
    _Atomic uint64_t *incoming;
    _Atomic uint64_t *freeze_id;
    _Atomic int64_t *freeze_until;
    int64_t freeze_ms;           /* --move-freeze: how long a freeze lasts unrenewed */
    _Atomic bool joined;         /* set by state_service_joined: 'mem' may be used */
    /* A cluster-wide stage-2 rebuild's side (stage2_side.h; NULL: none): while it freezes
     * stage 2, this node's product partitions are not local (their records wait in the
     * OUTBOXes) and Forward refuses them. */
    stage2_side *s2;
    /* The replicated log (NULL: none, R = 1 everywhere): an Apply is answered once the
     * partition's log is on min-insync copies, and refused UNAVAILABLE with fewer in sync. */
    replica *repl;
    /* --max-follower-lag-records / --max-follower-lag-ms: as a follower of a partition,
     * answer a User read that allows stale reads only while no further behind its leader
     * (replica_follower_lag); else FAILED_PRECONDITION and the router asks the leader. */
    uint64_t max_lag_records, max_lag_ms;
    /* Whether a rebuild (eddy reprocess) runs here: a move's copy waits (NULL: never). */
    bool (*rebuild_busy)(void *ud);
    void *rebuild_ud;
};

/* Whether partition p is the source side of a move in progress here (its stage 2 is
 * frozen for the move's target). */
bool state_service_moving_out(struct state_service *svc, uint32_t p);

/* Whether a live move into or out of this node is in progress ('ud': the service). */
bool state_service_moving(void *ud);

/* The node has joined: 'mem' is its membership. Calls answer UNAVAILABLE before. */
void state_service_joined(struct state_service *svc, membership *mem);

/* Allocate the per-partition take-over state for 'partitions' partitions. */
eddy_err state_service_takeover_init(struct state_service *svc, uint32_t partitions);
void state_service_takeover_release(struct state_service *svc);

/* Take over the partitions this node owns now and has not yet taken over at their epoch:
 * DESIGN: a partition that moved here may have a newer checkpoint (written by its previous
 * owner, e.g. on a graceful leave) in the shared checkpoint directory than this node's
 * own state. It is restored from it before any write or read at the new epoch is
 * answered, so nothing acknowledged there is hidden or overwritten. Call it after every
 * change of the map (membership on_change) and once after joining. Never blocks on
 * the restore itself (it is a writer job). */
void state_service_takeover(struct state_service *svc);

/* Whether stage-2 records of product partition 'p' are applied here now (the engine's
 * cluster owns() hook; 'ud' is the state_service): this node owns it and neither a move
 * nor a stage-2 rebuild froze it. A frozen partition's records go to the OUTBOX and reach
 * the owner after the move or the rebuild. */
bool state_service_stage2_local(void *ud, uint32_t p);

/* Whether this node leads partition p in the map and has taken it over at that epoch
 * (a move's target: its final tail applied; a restore from checkpoint: done). 'ud' is
 * the state service. Any thread (the replicated log's 'ready'). */
bool state_service_ready(void *ud, uint32_t p);

/* A move's target: the partition is current at 'epoch' (final tail applied): serve it. */
void state_service_mark_ready(struct state_service *svc, uint32_t p, uint64_t epoch);

/* Register the State methods on 's'; 'svc' must outlive the server. */
eddy_err state_service_register(struct state_service *svc, rpc_server *s);

/* Whether this node owns partition 'p' now (an owns() callback for queries and stage 2;
 * 'ud' is the membership). */
bool state_service_owns(void *ud, uint32_t p);

#endif
