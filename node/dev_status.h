/* eddy.cluster.v1.Coordinator/ClusterStatus on a --dev node. A --dev node has no coordinator
 * to ask, so it describes itself as a one-node cluster that owns every partition: `eddy
 * status` then answers for a single node as it does for a cluster. */
#ifndef EDDY_DEV_STATUS_H
#define EDDY_DEV_STATUS_H

#include <stdint.h>

#include "common/rpc_server.h"
#include "eddy/v1/cluster.pb-c.h"

/* What the answer is made of. The strings and ports are borrowed for the server's life;
 * the ports are read at each call (they are known once the server has bound them). */
struct dev_status {
    const char *cluster;        /* --cluster */
    const char *id;             /* --node-id; "": the bound gRPC address */
    const char *listen;         /* --listen (its port replaced by *port in the answer) */
    const char *metrics_listen; /* --metrics-listen; "": none */
    uint32_t partitions;
    int64_t started_ms;         /* wall clock */
    const int *port, *metrics_port;
};

/* The answer and the memory behind it (the node's console shows it too). */
struct dev_status_reply {
    Eddy__Cluster__V1__ClusterStatusResponse msg;
    Eddy__Cluster__V1__Node node, *nodes[1];
    Eddy__Cluster__V1__Partition *parts, **pp; /* [partitions] */
    char addr[300], maddr[300];
    char *roles[2];
};

/* Build the answer of 'ds' now into 'out'. EDDY_ERR_NOMEM leaves nothing to release;
 * otherwise release with dev_status_release. */
eddy_err dev_status_build(const struct dev_status *ds, struct dev_status_reply *out);
void dev_status_release(struct dev_status_reply *r);

/* Register ClusterStatus on 's' ('ds' borrowed for the server's life). */
eddy_err dev_status_register(struct dev_status *ds, rpc_server *s);

#endif
