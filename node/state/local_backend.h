/* The local state backend (node/backend.h): the engine and the query layer of this
 * process answer the public API directly. A --dev node serves through it, and a state
 * node's State/User handler answers the per-user requests routed to it with its 'user'
 * operation, so the two modes share one implementation of every per-user request. */
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
};

/* The backend interface of 'lb' (borrowed: 'lb' must outlive every call). */
struct backend local_backend_of(struct local_backend *lb);

/* The per-user operation alone (State/User on a state node uses it after its ownership
 * checks): same contract as backend_ops.user. */
void local_backend_user(struct local_backend *lb, Eddy__State__V1__UserRequest *req,
                        backend_reply_fn *done, void *ud);

#endif
