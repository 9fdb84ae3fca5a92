/* The per-user requests (recommend, profile, one user's counts, delete) answered by this
 * process's engine and query layer: what a state node's State/User handler runs for the
 * partitions it owns (or follows), in a cluster and on a --dev node alike. */
#ifndef EDDY_LOCAL_BACKEND_H
#define EDDY_LOCAL_BACKEND_H

#include "node/backend.h"
#include "node/state/ckptsched.h"
#include "node/state/engine.h"
#include "node/state/expreg.h"
#include "node/state/query.h"

struct local_backend {
    engine *eng;         /* borrowed; writes */
    struct query_ctx q;  /* reads */
    ckptsched *cks;      /* borrowed; NULL: no checkpoints. DeleteUser is answered once it
                            purged the user's partition (ckptsched_purge) */
    expreg *exps;        /* borrowed; NULL: no experiments. A Recommend of a user in a
                            running experiment follows the user's variant and is logged as
                            an impression (engine_impression) */
    int64_t click_window_ms, purchase_window_ms; /* an experiment's windows when unset */
    uint64_t epoch;      /* the partition's epoch the call was routed at (its owner's) */
    bool stale;          /* answered from a follower's copy: no impression is logged */
};

/* Answer 'req' (State/User on a state node calls it after its ownership checks): the
 * contract of backend_ops.user. */
void local_backend_user(struct local_backend *lb, Eddy__State__V1__UserRequest *req,
                        backend_reply_fn *done, void *ud);

#endif
