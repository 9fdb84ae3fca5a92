/* The node registry: the coordinator leader's view of the live nodes (the leased keys
 * /eddy/<cluster>/nodes/<id>) and of the drain requests (/eddy/<cluster>/drain/<id>),
 * fed by a range read and then by watch events, and turned into the assigner's input.
 *
 * No I/O: the leader reads etcd and hands records in, so the bookkeeping is unit-tested
 * with plain strings. A generation counter grows whenever the assigner's input changes
 * (a state node appears or goes, a node gains or loses the state role, a state node's
 * zone changes, a drain key appears or goes); re-registrations that only change addresses
 * do not bump it.
 *
 * Threads: every function may be called from any thread (one mutex); the watch threads
 * write, the leader thread waits for changes and takes snapshots. */
#ifndef EDDY_REGISTRY_H
#define EDDY_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cluster.h"
#include "common/err.h"
#include "coordinator/assigner.h"

/* Most nodes and drain keys the registry holds; records past this are ignored (logged). */
#define REGISTRY_MAX 4096

typedef struct registry registry;

/* Caller owns the result; free with registry_free. NULL on no memory. */
registry *registry_new(void);
void registry_free(registry *r);

/* Forget every node (before reloading them from a range read, e.g. after RESYNC). */
void registry_clear_nodes(registry *r);
/* Forget every drain key. */
void registry_clear_drains(registry *r);

/* A nodes/<id> key was put with 'len' bytes of 'json'. 'id' is the key's last part; a
 * record whose "id" differs from it, or that does not decode, is ignored with a warning
 * (EDDY_ERR_CORRUPT), and a node already known under that key is forgotten. */
eddy_err registry_node_put(registry *r, const char *id, const char *json, size_t len);
/* The key nodes/<id> was deleted (lease expired or revoked). */
void registry_node_delete(registry *r, const char *id);

/* drain/<id> was put or deleted. */
eddy_err registry_drain_put(registry *r, const char *id);
void registry_drain_delete(registry *r, const char *id);

/* The current generation (see above). */
uint64_t registry_generation(registry *r);

/* Wait until the generation differs from 'seen', registry_wake is called, or 'timeout_ms'
 * passes. Returns the generation at return. */
uint64_t registry_wait(registry *r, uint64_t seen, int64_t timeout_ms);

/* Wake every registry_wait (used to stop the leader). */
void registry_wake(registry *r);

/* The assigner's input: every known node (state role or not) with its draining flag and
 * zone, in
 * id order. '*gen' (may be NULL) is the generation the snapshot belongs to. Caller frees
 * '*out' with free(); '*n' may be 0 (then '*out' may be NULL). */
eddy_err registry_snapshot(registry *r, struct assign_node **out, size_t *n, uint64_t *gen);

/* Counts for logs and tests. */
size_t registry_node_count(registry *r);
size_t registry_state_count(registry *r);
size_t registry_drain_count(registry *r);

#endif
