/* A node's membership in a cluster: its etcd session and registration (nodes/<id> on the
 * session's lease), and its view of the cluster (the partition map and the registered
 * nodes), kept current by etcd watches. Readers get consistent snapshots.
 *
 * DESIGN: the session is what makes ownership safe. A state node may acknowledge writes
 * only while membership_alive() is true: that rule (etcd.h, sessions) guarantees the
 * node's lease has not expired, so the coordinator cannot yet have given its partitions to
 * someone else. When the session is lost, a maintenance thread creates a new one and
 * registers again; until the coordinator reassigns, the old epochs still name this node.
 *
 * Threads: watch callbacks and the maintenance thread update the view under a rwlock;
 * every accessor may be called from any thread. */
#ifndef EDDY_MEMBERSHIP_H
#define EDDY_MEMBERSHIP_H

#include <stdbool.h>
#include <stdint.h>

#include "common/cluster.h"
#include "common/err.h"
#include "common/etcd.h"

typedef struct membership membership;

struct membership_opts {
    const char *etcd;          /* endpoints, comma-separated */
    const char *cluster;       /* cluster name */
    const char *node_id;
    unsigned roles;            /* ROLE_* */
    const char *grpc_addr;     /* what other nodes dial */
    const char *metrics_addr;
    const char *zone;          /* failure domain (--zone; NULL or "": none): replicas of a
                                  partition go to distinct zones */
    int64_t lease_ttl_s;
    int64_t etcd_timeout_ms;
    /* Called on the maintenance thread when membership_alive() changes (NULL: none);
     * first with true once registered. For readiness: a node without a live session must
     * not receive traffic. */
    void (*on_alive)(void *ud, bool alive);
    void *alive_ud;
    /* Called after the view changed (a new map or node set), on a watch thread; it may
     * call the accessors below. NULL: none. */
    void (*on_change)(void *ud, membership *m);
    void *change_ud;
    const struct etcd_security *etcd_sec; /* TLS and authentication for etcd (borrowed for
                                             membership_start); NULL = none */
};

/* Partitions this node owns now. */
uint32_t membership_owned_count(membership *m);

/* Connect, wait for the cluster config (created by the coordinator), register and start
 * watching. Blocks until the config exists or 'wait_ms' passes (EDDY_ERR_TIMEOUT). Caller
 * owns *out; free with membership_stop (which revokes the lease: the node leaves). */
eddy_err membership_start(const struct membership_opts *o, int64_t wait_ms, membership **out,
                          char *err, size_t errlen);
void membership_stop(membership *m);

/* A membership with no etcd: every one of 'partitions' partitions is this node's alone
 * (replicas = [self], epoch 1), for ever. The --dev node: a static assignment of the
 * whole key space to itself, served by the same router and State service as a cluster.
 * 'o' gives the node (node_id, roles, grpc_addr, metrics_addr) and on_change, called once
 * before this returns; its etcd fields are not used. Alive for ever; no lease, no etcd
 * client (membership_etcd: NULL). Free with membership_stop. */
eddy_err membership_start_static(const struct membership_opts *o, uint32_t partitions,
                                 membership **out);

/* The cluster config alone (o->etcd, o->cluster and o->etcd_sec are used), waiting for it
 * as membership_start does: a state node needs the partition count before it opens its
 * store, which is before it joins. */
eddy_err membership_read_config(const struct membership_opts *o, int64_t wait_ms,
                                struct cluster_config *out, char *err, size_t errlen);

/* The cluster's partition count (fixed at creation). */
uint32_t membership_partitions(const membership *m);
const char *membership_self(const membership *m);

/* Whether this node may acknowledge writes (see DESIGN above). */
bool membership_alive(membership *m);

/* The owner and epoch of partition 'p', and the owner's gRPC address. Returns false if
 * the partition is unassigned or its owner is not registered (addr then empty). */
bool membership_owner(membership *m, uint32_t p, char owner[CLUSTER_ID_MAX], uint64_t *epoch,
                      char addr[CLUSTER_ADDR_MAX]);

/* Partition 'p' as the map says (owner, epoch, replicas, leader first); false (and *out
 * zeroed) before the first map or for a 'p' out of range. */
bool membership_part(membership *m, uint32_t p, struct cluster_part *out);

/* Copies an acknowledged write needs, the leader included (the cluster config's
 * min_insync; 1 for a cluster created before replication). Fixed at start. */
uint32_t membership_min_insync(const membership *m);

/* Whether this node owns 'p'; *epoch is the current epoch. */
bool membership_owns(membership *m, uint32_t p, uint64_t *epoch);

/* The version of the map (increases on every change the node sees). */
uint64_t membership_version(membership *m);

/* Wait until the version differs from 'version' or 'timeout_ms' passes. */
void membership_wait_change(membership *m, uint64_t version, int64_t timeout_ms);

/* Registered state nodes: up to 'max' ids and addresses; returns how many. */
size_t membership_state_nodes(membership *m, struct cluster_node *out, size_t max);

/* The gRPC address of node 'id' (false if not registered). */
bool membership_addr(membership *m, const char *id, char addr[CLUSTER_ADDR_MAX]);

/* The lease of the current session (0 while there is none), for keys that must vanish
 * with the node (its load record). */
int64_t membership_lease(membership *m);

/* The membership's etcd client (borrowed; valid until membership_stop), for other
 * records of this node (checkpoint metadata). Thread-safe like every etcd_client. */
struct etcd_client *membership_etcd(membership *m);

#endif
