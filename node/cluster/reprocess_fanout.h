/* The ingest node's share of Reprocess in a cluster: State/Reprocess called on every state
 * node (or on the partition's owner) at once, and their answers merged into the one
 * answer of eddy.v1.Eddy/Reprocess (reprocess_merge, pure: no network).
 *
 * DESIGN: a rebuild takes as long as replaying the log, so the fan-out never waits on an
 * RPC thread: the calls are asynchronous and the last answer (on a channel's CQ thread)
 * merges and replies. A stage-2 rebuild's driver (reprocess_driver.h) instead waits for
 * the answers itself (reprocess_fanout_drive), since it has a swap to make after them.
 *
 * Threads: 'mu' guards the count of missing answers and the ownership flags; each answer
 * is written once by its own callback before the count drops, and read after it is 0. */
#ifndef EDDY_REPROCESS_FANOUT_H
#define EDDY_REPROCESS_FANOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cluster.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/state.pb-c.h"
#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/state/reprocess.h"

#define REPROCESS_METHOD_STATE "/eddy.state.v1.State/Reprocess"
#define REPROCESS_MAX_STATE_NODES 256

/* One state node's answer to State/Reprocess. */
struct reprocess_answer {
    char node[CLUSTER_ID_MAX];
    char addr[CLUSTER_ADDR_MAX];
    struct rpc_result res;
    Eddy__V1__ReprocessResponse *resp; /* NULL if the call failed */
};

/* The first failed answer of 'a[0..n)', NULL if none; *nparts: partitions rebuilt by the
 * others, *ok: nodes that succeeded. */
const struct reprocess_answer *reprocess_answers_failed(const struct reprocess_answer *a,
                                                        size_t n, size_t *nparts, size_t *ok);

/* Every node's answer merged. 'm' borrows the answers' partitions and parameters and the
 * arrays below: keep the answers, do not copy the struct; release with
 * reprocess_merged_release. */
struct reprocess_merged {
    Eddy__V1__ReprocessResponse m;
    Eddy__V1__ReprocessedPartition **parts; /* owned */
    Eddy__V1__ReprocessParameter params[RP_PARAMS], *pp[RP_PARAMS];
    char values[RP_PARAMS][24];
};

/* Merge the answers 'a[0..n)' into *out: the partitions sorted, records summed, the
 * earliest first seq of the nodes that replayed any, the longest duration and pause, the
 * first node's parameters with the request's new half-lives 'set' (a stage-2 rebuild's
 * take effect at its swap, after the nodes answered). GRPC_STATUS_OK, or the first
 * failure (a node's, fewer than 'partitions' rebuilt when 'all', out of memory) with its
 * message in 'err' and nothing to release. */
grpc_status_code reprocess_merge(const struct reprocess_answer *a, size_t n, bool all,
                                 uint32_t partitions, const int64_t set[RP_PARAMS],
                                 struct reprocess_merged *out, char *err, size_t errlen);
void reprocess_merged_release(struct reprocess_merged *out);

typedef struct reprocess_fanout reprocess_fanout;

/* Call State/Reprocess on the partition's owner, or on every state node (all), and answer
 * 'c' with the merged answers once the last one arrives. 'mem' and 'pe' are borrowed until
 * the calls have started. */
void reprocess_fanout_call(membership *mem, peers *pe, rpc_call *c,
                           const Eddy__V1__ReprocessRequest *req,
                           const struct reprocess_request *rq);

/* A fan-out to 'nodes[0..n)' (n > 0) for call 'c', driven by the caller (it waits for the
 * answers, replies and frees). Caller owns the result; free with reprocess_fanout_free
 * (unless abandoned). NULL on OOM. 't0_ms': the reply's duration counts from here. */
reprocess_fanout *reprocess_fanout_drive(rpc_call *c, const struct cluster_node *nodes, size_t n,
                                         const struct reprocess_request *rq,
                                         uint32_t partitions, int64_t t0_ms);
void reprocess_fanout_free(reprocess_fanout *f);

/* Call State/Reprocess with 'req' on every node of 'f', each with the time left to 'f''s
 * call. Returns whether any call started (if none did, every answer is a failure). */
bool reprocess_fanout_start(reprocess_fanout *f, peers *pe,
                            const Eddy__State__V1__StateReprocessRequest *req);

/* Wait up to 'ms' for the answers; true once every node answered. */
bool reprocess_fanout_wait(reprocess_fanout *f, int64_t ms);

/* Give up waiting: if an answer is still missing, the last one frees 'f' (true: do not
 * touch it again); false if every node answered (the caller still owns it). */
bool reprocess_fanout_abandon(reprocess_fanout *f);

/* The answers (every node's once reprocess_fanout_wait returned true). */
const struct reprocess_answer *reprocess_fanout_answers(const reprocess_fanout *f, size_t *n);

/* Answer 'f''s call with the merged answers, or the first failure. */
void reprocess_fanout_reply(reprocess_fanout *f);

#endif
