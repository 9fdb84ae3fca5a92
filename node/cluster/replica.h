/* The replicated log of a state node: as a partition's leader it serves its followers'
 * ReplicaFetch calls, tracks how far each one has the log durably and holds back the
 * acknowledgement of writes until min-insync copies have them; as a follower it pulls the
 * log of the partitions it follows from their leaders and applies it through
 * engine_replay. See the DESIGN comment in replica.c and docs/cluster.md, Replication.
 *
 * Wiring (the node): replica_new before the RPC server starts, replica_register on it,
 * replica_set_membership after joining and after every change of the partition map
 * (membership on_change), replica_start once the server listens; the state service calls
 * replica_writable before an Apply and replica_wait after its job is durable.
 * replica_stop before the RPC server shuts down, replica_free after it is freed. */
#ifndef EDDY_REPLICA_H
#define EDDY_REPLICA_H

#include <stdbool.h>
#include <stdint.h>

#include "common/cluster.h"
#include "common/err.h"
#include "common/metrics.h"
#include "common/rpc_server.h"
#include "eddy/v1/state.pb-c.h"
#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/state/engine.h"

/* Copies of one partition, the leader included. */
#define REPLICA_MAX CLUSTER_REPLICAS_MAX

typedef struct replica replica;

/* One partition as the map says. */
struct replica_part {
    uint64_t epoch;
    uint32_t nreplicas;                         /* 0: unassigned; 1: not replicated */
    char replicas[REPLICA_MAX][CLUSTER_ID_MAX]; /* the leader first, then the followers */
    char leader_addr[CLUSTER_ADDR_MAX];         /* the leader's gRPC address ("": unknown) */
};

/* What the module counts (each may be NULL; borrowed, must outlive the module). Updated
 * by the replica thread. */
struct replica_metrics {
    metric_gauge *lag_records;          /* sum over led partitions of log end - follower pos */
    metric_gauge *under_replicated;     /* led partitions with fewer in-sync copies than R */
    metric_counter *isr_shrinks;        /* a follower left a partition's in-sync set */
    metric_counter *isr_expands;        /* a follower (re)joined it */
    metric_counter *resyncs;            /* copies replaced by the leader's checkpoint */
};

struct replica_opts {
    engine *eng;                 /* borrowed */
    peers *peers;                /* channels to the leaders (borrowed) */
    const char *self;            /* this node's id (copied; replica_set_membership sets it) */
    uint32_t partitions;
    /* --replica-lag-timeout: a follower whose position has not reached the leader's log
     * end for this long leaves the in-sync set (default 10000). */
    int64_t lag_timeout_ms;
    int64_t fetch_wait_ms;       /* a fetch's long poll (default 500) */
    int64_t rpc_timeout_ms;      /* a fetch's deadline on top of the long poll (5000) */
    int64_t snapshot_timeout_ms; /* one ReplicaSnapshot stream (600000) */
    /* --replica-writable-wait: how long replica_when_writable holds a write of a partition
     * short of in-sync copies before it gives up (0: not at all). */
    int64_t writable_wait_ms;
    /* Where the leader records each partition's in-sync set (/eddy/<cluster>/isr/<p>,
     * compare-and-swap); NULL: not recorded, or the membership's once
     * replica_set_membership ran. Borrowed. */
    struct etcd_client *etcd;
    const char *cluster;
    /* Whether this node, which the map names leader of partition p, has it complete (NULL:
     * always): a move's target has not until it applied the source's final tail, and its
     * log must not be compared with its followers' copies (nor copied) before that. */
    bool (*ready)(void *ud, uint32_t p);
    void *ready_ud;
    struct replica_metrics metrics;
};

/* Caller owns the result; free with replica_free. NULL on allocation failure. */
replica *replica_new(const struct replica_opts *o);

/* Register eddy.state.v1.State/ReplicaFetch and ReplicaSnapshot on 's' (before it
 * starts); 'r' must outlive the server's calls (replica_stop answers the parked ones and
 * ends the snapshot streams). */
eddy_err replica_register(replica *r, rpc_server *s);

/* Start the replica thread (leader side: long polls, in-sync set, etcd) and a fetch
 * thread per leader this node follows partitions from (started as the map names them). */
eddy_err replica_start(replica *r);

/* Stop every thread: parked fetches are answered UNAVAILABLE, waiting acknowledgements
 * fail with EDDY_ERR_UNAVAILABLE. Safe to call more than once. */
void replica_stop(replica *r);

/* replica_stop if needed, then free. Accepts NULL. */
void replica_free(replica *r);

/* The partition map changed: 'parts' has one entry per partition (copied), 'min_insync'
 * is the copies an acknowledgement needs, the leader included (above a partition's R it
 * counts as R). Acknowledgements waiting on a partition this node no longer leads, or
 * whose epoch changed, fail with EDDY_ERR_UNAVAILABLE. Any thread. */
void replica_set_map(replica *r, const struct replica_part *parts, uint32_t min_insync);

/* replica_set_map from the membership's view: each partition's replicas and epoch, its
 * leader's address, the cluster's min-insync. The node calls it after joining and from
 * the membership's on_change. */
void replica_set_membership(replica *r, membership *m);

/* Whether a write of partition 'p' may be accepted now: true when the partition is not
 * replicated or has at least min-insync copies in sync. Any thread. */
bool replica_writable(replica *r, uint32_t p);

/* Called once by replica_when_writable: 'writable' says whether partition 'p' may take
 * writes now (replica_writable). */
typedef void replica_writable_fn(void *ud, bool writable);

/* Call 'done' once partition 'p' may take writes: at once, on this thread, when it may now
 * (or with false when the wait is 0); otherwise when a new follower joins its in-sync set
 * (on that fetch's handler thread), or with false once --replica-writable-wait passed, the
 * partition is no longer led here or the module stops (the replica thread, or the caller
 * of replica_set_map / replica_stop). The owner is thus told when a partition becomes
 * writable instead of its callers retrying. 'done' must not block. If this returns an
 * error (EDDY_ERR_NOMEM), 'done' never runs. Any thread. */
eddy_err replica_when_writable(replica *r, uint32_t p, replica_writable_fn *done, void *ud);

/* Called once when the records of partition 'p' below the seq given to replica_wait are
 * durable on min-insync copies (EDDY_OK), or with EDDY_ERR_UNAVAILABLE when the in-sync
 * set fell below min-insync, the epoch changed or the module stops. Runs on the thread
 * that saw it happen (a handler, the replica thread, or replica_wait's caller); it must
 * not block. */
typedef void replica_ack_fn(void *ud, eddy_err err);

/* Call 'done' once every record of partition 'p' below 'seq' is on min-insync copies.
 * A partition that is not replicated calls it at once, on this thread, with EDDY_OK. If
 * this returns an error (EDDY_ERR_NOMEM), 'done' never runs. Any thread; never blocks. */
eddy_err replica_wait(replica *r, uint32_t p, uint64_t seq, replica_ack_fn *done, void *ud);

/* The leader's state of partition 'p' changed outside its log (a reprocess, a stage-2
 * rebuild's swap): its followers' copies, which only replay the log, no longer match, so
 * each replaces its copy with a fresh checkpoint at its next fetch (and is out of the
 * in-sync set until then). No-op unless this node leads 'p' with R > 1. Any thread. */
void replica_invalidate(replica *r, uint32_t p);

/* Follower side, one partition's batch from its leader (what the fetch thread does with
 * each answer; exposed for tests): refused with EDDY_ERR_NOT_OWNER when its epoch is not
 * the partition's epoch here or this node does not follow the partition, EDDY_ERR_INVALID
 * when it does not start at this follower's position (a gap) or its seqs are not
 * ascending within it, EDDY_ERR_CORRUPT when a record's CRC-32C does not match,
 * EDDY_ERR_CONFLICT when a move writes the partition here (engine_claim_partition); nothing
 * of a refused batch is applied. Otherwise its records are appended and applied (synced)
 * before this returns. Not concurrently for the same partition. */
eddy_err replica_follow_apply(replica *r, const Eddy__State__V1__ReplicaPartitionData *d);

/* The checks replica_follow_apply makes of a batch's bytes for a follower at position
 * 'pos', before anything is applied: EDDY_ERR_INVALID for a gap or seqs out of order,
 * EDDY_ERR_CORRUPT for a record whose CRC-32C does not match (each logged). Pure. */
eddy_err replica_batch_check(const Eddy__State__V1__ReplicaPartitionData *d, uint64_t pos);

/* Leader side, the in-sync record it writes over the one stored in etcd ('stored', NULL:
 * none or undecodable; exposed for tests): 'next' names this leader and its in-sync
 * followers at its epoch. It keeps as promoted_from the copies that hold every
 * acknowledged event besides its in-sync set, which the coordinator may promote:
 * - while it names the leader alone, the set the leader was promoted from: every copy
 *   'stored' names (isr and promoted_from) when that is an older epoch's record naming
 *   two or more, the leader among them, or this epoch's own record that has one;
 * - when this epoch's set shrinks below 'min_insync' (nothing is acknowledged from then
 *   on), every copy the stored record names, until the set is whole again.
 * Otherwise (a follower joined, or the leader was no copy of the older set: a move's
 * target) none. Pure. */
void replica_isr_next(const struct cluster_isr *stored, struct cluster_isr *next,
                      uint32_t min_insync);

/* Follower side: the position of partition 'p' (the next seq it needs from its leader). */
uint64_t replica_position(replica *r, uint32_t p);

/* Follower side, for stale reads: how far this copy of partition 'p' is behind its
 * leader. *lag_records is the leader's log end in its last answer minus this copy's
 * position (records the leader had then that this copy lacks), *lag_ms the time since that
 * answer arrived. False (both 0) when this node does not follow 'p', its leader has not
 * answered since it started following (a new leader or epoch), or the copy waits for a
 * resync: its state is then not a known prefix of the leader's. Any thread. */
bool replica_follower_lag(replica *r, uint32_t p, uint64_t *lag_records, uint64_t *lag_ms);

/* Leader side: the seq below which every record of partition 'p' is on min-insync copies
 * (what may be exposed to other partitions: stage-2 forwarding). UINT64_MAX when the
 * partition is not replicated; 0 when this node does not lead it. Any thread. */
uint64_t replica_committed(replica *r, uint32_t p);

/* Leader side: copies of partition 'p' in sync now, the leader included (1 for a
 * partition that is not replicated or not led here). */
uint32_t replica_insync(replica *r, uint32_t p);

#endif
