/* The leader's work: while this coordinator leads, keep /eddy/<cluster>/assignment equal
 * to what the assigner computes from the live nodes and the drain requests.
 *
 * On start it makes sure the cluster config exists (create-if-absent {"partitions":P,
 * "replication_factor":R,"min_insync":M}; a stored P wins over --partitions, while this
 * leader's R and M win over stored ones: the record is updated, compare-and-swap, and the
 * change logged), reads the current map (or starts an empty one), loads
 * nodes/ and drain/ with a range and watches both prefixes from the range's revision + 1.
 * Every change of the assigner's input, once quiet for 'settle_ms' (debounce: a rolling
 * restart or a cluster start registers many nodes in a burst), gives a new map; if any
 * owner changed (or no map was stored yet) it is written with version + 1 by a txn that
 * compares the assignment's mod_revision AND that the leader key still holds this
 * coordinator's id, so a deposed leader can never overwrite its successor's map. A lost
 * compare re-reads the map and computes again.
 *
 * Partitions of a live owner move live (planner.h): the leader also watches moves/,
 * creates a move record per partition to move (at most max_moves at once), flips the
 * owner when the target reports "ready" and deletes the record when it reports "done".
 * Every record write also compares the leader key. The assigner sees the map as it will
 * be once the moves in progress are done, so a move finishing before its partner is not
 * taken for an imbalance.
 *
 * Replicas: the assigner gives each partition R replicas (assigner.h). The leader watches
 * isr/<p> (the in-sync sets the partition leaders record) and passes them to the assigner,
 * which promotes an in-sync follower when a leader is gone.
 *
 * DESIGN: the loop runs on a thread of its own (etcd calls block; watch callbacks only
 * update the registry and wake it). */
#ifndef EDDY_LEADER_H
#define EDDY_LEADER_H

#include <stdint.h>

#include "common/etcd.h"
#include "common/metrics.h"

typedef struct leader leader;

struct leader_opts {
    etcd_client *etcd;      /* borrowed; must outlive the leader */
    const char *cluster;    /* cluster name (copied) */
    const char *id;         /* this coordinator's id, the leader key's value (copied) */
    uint32_t partitions;    /* P for a new cluster config */
    uint32_t replication_factor; /* R: replicas per partition (1..CLUSTER_REPLICAS_MAX) */
    uint32_t min_insync;    /* M written into the config for the nodes (1..R) */
    bool unclean;           /* assign_params.unclean (--unclean-leader-election) */
    int64_t settle_ms;      /* debounce of node changes */
    int64_t max_moves;      /* live moves at once (--max-moves, >= 1) */
    int64_t move_timeout_ms;/* a move still copying after this is cancelled (0: never) */
    /* Load balance from the nodes' load/<id> records (planner.h): at most one load move
     * (or swap) per 'load_interval_ms' (0: off). */
    int64_t load_interval_ms;
    double load_imbalance;
    double load_min_eps;
    /* Set after every decision (NULL: none): partitions without a live leader, and
     * partitions with fewer live in-sync copies than min-insync (their writes refused). */
    metric_gauge *offline;
    metric_gauge *under_min_insync;
};

/* Start leading with session 's' (borrowed until leader_stop returns; the leader stops
 * writing as soon as etcd_session_alive(s) is false). Returns NULL on no memory. Caller
 * owns the result; stop and free it with leader_stop. */
leader *leader_start(const struct leader_opts *o, etcd_session *s);

/* Stop the watches and the thread (promptly: at most one etcd call in flight is waited
 * for) and free. After it returns nothing more is written. Accepts NULL. */
void leader_stop(leader *l);

/* Parse the config record (cluster_config_from_json): returns P (1..65535), or 0 if it
 * does not decode. Pure; exposed for tests. */
uint32_t leader_parse_config(const char *json, size_t len);

#endif
