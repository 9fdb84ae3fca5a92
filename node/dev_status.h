/* eddy.cluster.v1.Coordinator/ClusterStatus on a --dev node. A --dev node has no coordinator
 * to ask, so it describes itself as a one-node cluster that owns every partition: `eddy
 * status` then answers for a single node as it does for a cluster. */
#ifndef EDDY_DEV_STATUS_H
#define EDDY_DEV_STATUS_H

#include <stdint.h>

#include "common/rpc_server.h"

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

/* Register ClusterStatus on 's' ('ds' borrowed for the server's life). */
eddy_err dev_status_register(struct dev_status *ds, rpc_server *s);

#endif
