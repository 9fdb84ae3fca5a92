/* The ingest node's driver of a cluster-wide stage-2 rebuild (Reprocess with all, from the
 * start): Stage2Rebuild PREPARE on every state node (their stage 2 frozen), the
 * State/Reprocess fan-out (reprocess_fanout.h) with RENEW of the freezes while it runs,
 * then SWAP with every partition's cut, or ABORT on any failure.
 *
 * DESIGN: the phases must follow one another and a swap waits for every writer, so a
 * thread of its own drives them (one at a time per ingest node), not an RPC thread; it
 * answers the call. */
#ifndef EDDY_REPROCESS_DRIVER_H
#define EDDY_REPROCESS_DRIVER_H

#include <stdbool.h>
#include <stddef.h>

#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/state.pb-c.h"
#include "node/cluster/reprocess_fanout.h"
#include "node/state/reprocess.h"

#define REPROCESS_METHOD_STAGE2 "/eddy.state.v1.State/Stage2Rebuild"
#define REPROCESS_PHASE_TIMEOUT_MS 60000 /* a stage-2 phase call (a swap waits for the writer) */

struct reprocess_service;

/* Start the driver of a cluster-wide stage-2 rebuild of request 'req' ('rq' checked),
 * which answers 'c' (at once if it cannot start: no state node, one already running).
 * 'req' is copied. */
void reprocess_driver_start(struct reprocess_service *svc, rpc_call *c,
                            const Eddy__V1__ReprocessRequest *req,
                            const struct reprocess_request *rq);

/* The cuts of a SWAP: ptrs[i] points to arr[i]; the caller frees both arrays. */
struct reprocess_cuts {
    Eddy__State__V1__SourceCut *arr;
    Eddy__State__V1__SourceCut **ptrs;
    size_t n;
};

/* Every rebuilt partition's cut (its next seq) from the state nodes' answers 'a[0..n)'
 * (all succeeded), at most 'total'. False if out of memory (free the arrays still). */
bool reprocess_collect_cuts(const struct reprocess_answer *a, size_t n, size_t total,
                            struct reprocess_cuts *c);

#endif
