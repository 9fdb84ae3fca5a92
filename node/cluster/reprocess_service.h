/* The Reprocess RPCs (docs/design.md §7): eddy.v1.Eddy/Reprocess, the public one, and
 * eddy.state.v1.State/Reprocess, a state node's share of it in a cluster.
 *
 *   --dev          Eddy/Reprocess rebuilds this node's partitions (reprocess.h).
 *   ingest node    Eddy/Reprocess checks the request, then calls State/Reprocess on every
 *                  state node (all) or on the partition's owner, in parallel, and merges
 *                  the answers (reprocess_fanout.h). With all from the start it drives a
 *                  cluster-wide stage-2 rebuild around them (reprocess_driver.h).
 *   state node     State/Reprocess rebuilds the partitions it owns (stage 1) and, in a
 *                  stage-2 rebuild, sends the stage-2 records it derived to the product
 *                  partitions' owners (RebuildForward); Stage2Rebuild and RebuildForward
 *                  drive its stage2_side (stage2_side.h).
 *
 * DESIGN: a rebuild takes as long as replaying the log, so it never runs on an RPC thread:
 * the handler checks the request, starts one rebuild thread (one rebuild at a time per
 * node; another request meanwhile gets ABORTED) and returns; the thread answers the call.
 *
 * Threads: handlers on RPC threads; the rebuild on its own thread, the stage-2 driver on
 * its own; 'mu' guards 'busy', 'driving' and the threads' handles. */
#ifndef EDDY_REPROCESS_SERVICE_H
#define EDDY_REPROCESS_SERVICE_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "common/rpc_server.h"
#include "node/cluster/router.h"
#include "node/state/engine.h"
#include "node/state/stage2_side.h"

struct reprocess_service {
    engine *eng;                /* borrowed; NULL on a node without the state role */
    struct router *router;      /* borrowed; NULL in --dev. Its membership and peers may be
                                   set after registration (before the node takes traffic) */
    const char *data_dir;       /* the side store is DATA_DIR/reprocess.tmp */
    const char *checkpoint_dir; /* "" or NULL: DATA_DIR/checkpoints */
    /* Whether a live move into or out of this node is in progress (NULL: never). A rebuild
     * then waits (UNAVAILABLE): the moving copy would miss its swap. */
    bool (*moving)(void *ud);
    void *moving_ud;
    stage2_side *s2;            /* borrowed; a state node in a cluster (else NULL) */
    /* Called (NULL: never) for each partition whose state a rebuild or a stage-2 swap
     * replaced on this node: the replaced state is not in the partition's log, so its
     * followers must copy it again (replica_invalidate). On the rebuild's thread. */
    void (*replaced)(void *ud, uint32_t partition);
    void *replaced_ud;
    int64_t renew_ms;           /* ingest node: renew the stage-2 freezes this often */

    /* private */
    pthread_mutex_t mu;
    bool busy;                  /* a rebuild thread runs (or ran and was not joined) */
    bool joinable;
    pthread_t thread;
    _Atomic bool cancel;
    bool driving;               /* ingest node: a stage-2 rebuild's driver thread runs */
    bool driver_joinable;
    pthread_t driver;
    char work_dir[PATH_MAX];
    char ckpt_dir[PATH_MAX];
};

/* Register eddy.v1.Eddy/Reprocess (if 'public_api') and, in a cluster with an engine,
 * eddy.state.v1.State/Reprocess on 's'. 'svc' (zero-initialised but for the fields above)
 * must outlive the server. */
eddy_err reprocess_service_register(struct reprocess_service *svc, rpc_server *s, bool public_api);

/* Whether a rebuild runs on this node now, or a stage-2 rebuild froze its product state (a
 * move's source then refuses to start a copy: the copy would miss the swap). Any thread. */
bool reprocess_service_busy(struct reprocess_service *svc);

/* Stop a running rebuild (it ends with UNAVAILABLE, nothing swapped unless it was already
 * swapping) and join its thread. Call after the RPC server stopped and before the engine
 * closes. Accepts a service that was never registered (all zero). */
void reprocess_service_stop(struct reprocess_service *svc);

#endif
