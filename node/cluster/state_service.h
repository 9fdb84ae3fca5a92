/* The internal eddy.state.v1.State service of a state node in a cluster: Apply and Forward
 * (writes, fenced by partition epoch and by the node's etcd session), User (per-user
 * requests for the partitions it owns), Partial (its share of global queries),
 * CategoryTop and Neighbours (stage-2 reads for other nodes' Recommend). */
#ifndef EDDY_STATE_SERVICE_H
#define EDDY_STATE_SERVICE_H

#include "common/rpc_server.h"
#include "node/cluster/membership.h"
#include "node/state/engine.h"
#include "node/state/popcache.h"
#include "node/state/query.h"

/* Handler lanes of the State methods (see rpc_server.h "Lanes"). A User request may call
 * CategoryTop and Neighbours on every node (this one too), so it runs on a lane below
 * them; the other State methods call no handler and share the innermost lane. The public
 * eddy.v1.Eddy methods, which call User, Apply and Partial, are on lane 0. */
#define STATE_LANE_USER 1
#define STATE_LANE_LEAF 2

struct state_service {
    engine *eng;          /* borrowed */
    membership *mem;      /* borrowed */
    struct query_ctx q;   /* Recommend uses the cluster-wide stage-2 source */
    popcache *local;      /* this node's own product partitions, for CategoryTop */
};

/* Register the State methods on 's'; 'svc' must outlive the server. */
eddy_err state_service_register(struct state_service *svc, rpc_server *s);

/* Whether this node owns partition 'p' now (an owns() callback for queries and stage 2;
 * 'ud' is the membership). */
bool state_service_owns(void *ud, uint32_t p);

#endif
