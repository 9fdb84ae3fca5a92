/* eddy.cluster.v1.Coordinator/ClusterStatus: one consistent snapshot of the cluster's keys
 * in etcd (a single read-only txn), answered by any coordinator, leader or standby.
 *
 * The snapshot -> message conversion (status_build) is pure, for tests. */
#ifndef EDDY_STATUS_H
#define EDDY_STATUS_H

#include "common/etcd.h"
#include "common/rpc_server.h"
#include "eddy/v1/cluster.pb-c.h"

/* What one snapshot read: the keys under nodes/ and drain/ (key order), and the config,
 * leader and assignment keys (key NULL when absent), and the keys under checkpoints/ (may
 * be NULL), whose ages are taken at 'now_ms' (wall clock). Borrowed by status_build. */
struct status_snapshot {
    const char *cluster;
    int64_t revision;
    const struct etcd_kvs *nodes, *drains;
    const struct etcd_kv *config, *leader, *assignment;
    const struct etcd_kvs *checkpoints;
    const struct etcd_kvs *moves;    /* moves/ records (may be NULL) */
    const struct etcd_kvs *loads;    /* load/ records (may be NULL) */
    const struct etcd_kvs *isr;      /* isr/ records (may be NULL) */
    int64_t now_ms;
};

/* The built message and the memory behind it: release with status_release. */
struct status_reply {
    Eddy__Cluster__V1__ClusterStatusResponse msg;
    void *mem; /* one arena for every sub-message and string (internal) */
};

/* Build the reply for 'snap' ('answered_by' copied). EDDY_ERR_CORRUPT if the config or the
 * assignment does not decode (node records that do not decode are skipped). On error
 * '*out' holds nothing to release. */
eddy_err status_build(const struct status_snapshot *snap, const char *answered_by,
                      struct status_reply *out);
void status_release(struct status_reply *r);

/* The service: reads through 'etcd' (borrowed; must outlive the server). */
struct status_service {
    etcd_client *etcd;
    const char *cluster;
    const char *id;
};

/* One snapshot of the cluster now, as ClusterStatus answers it (the console shows it too).
 * EDDY_ERR_UNAVAILABLE when etcd does not answer, EDDY_ERR_CORRUPT as status_build, each
 * with the reason in 'why'; on error '*out' holds nothing to release, otherwise release it
 * with status_release. Thread-safe (etcd clients are). */
eddy_err status_read(struct status_service *svc, struct status_reply *out, char *why,
                     size_t whylen);

/* Register /eddy.cluster.v1.Coordinator/ClusterStatus and Drain on 's' ('svc' borrowed for the
 * server's life). */
eddy_err status_register(struct status_service *svc, rpc_server *s);

#endif
