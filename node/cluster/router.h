/* The ingest side of a cluster node: routes each request to the state node that owns the
 * partition, following the partition map of membership.h.
 *
 *   Ingest      events grouped by user partition, one Apply per owner, all owners called
 *               in parallel; partitions answered NOT_OWNER or UNAVAILABLE are retried with
 *               the refreshed map (event ids make a retry safe), up to --route-retries.
 *   per user    Recommend, GetUserProfile, DeleteUser, EventCounts(user) go to the owner;
 *               a read with allow_stale (or --read-from-followers) goes to a follower of
 *               the partition first (route_plan_read_order), the owner if they refuse.
 *   global      TopProducts and EventCounts fan out to every state node (Partial) and are
 *               merged here: sums per product and per window, the watermark is the minimum
 *               over the partitions that have events. With allow_stale (or
 *               --read-from-followers) each partition is asked of one copy at a time in
 *               route_plan_read_order, named with its epoch; a copy that refuses passes it
 *               to the next, the leader last; the answer carries the worst staleness.
 *
 * Threads: called on RPC handler threads; a call blocks its handler thread until the
 * owners answered (the owners' replies arrive on the channels' CQ threads). */
#ifndef EDDY_ROUTER_H
#define EDDY_ROUTER_H

#include <grpc/status.h>

#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/state.pb-c.h"
#include "node/backend.h"
#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/state/window.h"

struct router {
    /* NULL until the node has joined (the server listens before): calls then answer
     * UNAVAILABLE. Atomic: set by main while handler threads may already read it. */
    membership *_Atomic mem;
    peers *peers;
    int64_t timeout_ms;          /* per call to an owner */
    int retries;                 /* rounds after the first */
    struct window_params window; /* the cluster's window settings, to merge windows */
    /* --read-from-followers: every read (per user, TopProducts, EventCounts) may be
     * answered by followers, as if it said allow_stale. */
    bool read_from_followers;
    _Atomic uint32_t read_turn;  /* round-robin among a partition's followers */
};

/* The routed state backend (node/backend.h) of 'r' (borrowed: 'r' outlives every call).
 * Its operations answer synchronously, on the calling handler thread. */
struct backend router_backend_of(struct router *r);

/* Apply 'n' validated events through their owners. */
void router_ingest(struct router *r, Eddy__V1__Event *const *events, size_t n,
                   struct backend_counts *out, struct backend_status *res);

/* Send 'req' (its request oneof set; partition and epoch are filled in here) to the owner
 * of 'user_id'. On OK *resp is owned by the caller (protobuf_c_message_free_unpacked). */
void router_user(struct router *r, const char *user_id, Eddy__State__V1__UserRequest *req,
                 Eddy__State__V1__UserResponse **resp, struct backend_status *res);

/* Global queries merged from every state node. Caller owns *out (free with
 * protobuf_c_message_free_unpacked). */
void router_top(struct router *r, const Eddy__V1__TopProductsRequest *req,
                Eddy__V1__TopProductsResponse **out, struct backend_status *res);
void router_counts(struct router *r, const Eddy__V1__EventCountsRequest *req,
                   Eddy__V1__EventCountsResponse **out, struct backend_status *res);

/* The per-variant counts of experiment 'name' summed over every partition, each asked of
 * its leader (exact; UNAVAILABLE while a partition has none ready, e.g. mid-move). Caller
 * owns *out (only 'stats' set, by variant name; free with
 * eddy__v1__get_experiment_response__free_unpacked). */
void router_experiment(struct router *r, const char *name, Eddy__V1__GetExperimentResponse **out,
                       struct backend_status *res);

#endif
