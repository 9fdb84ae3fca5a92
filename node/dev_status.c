/* The one-node ClusterStatus of a --dev node (see dev_status.h). */
#include "node/dev_status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/netaddr.h"
#include "eddy/v1/cluster.pb-c.h"

/* "host:port" of 'listen' with the bound 'port' (the flag may say port 0). */
static void bound_addr(const char *listen, int port, char *out, size_t outlen)
{
    char host[256], p[8];
    if (!netaddr_split(listen, host, sizeof(host), p, sizeof(p)))
        snprintf(out, outlen, "%s", listen);
    else
        snprintf(out, outlen, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

static void handle_status(void *ud, rpc_call *call, const ProtobufCMessage *msg)
{
    const struct dev_status *ds = ud;
    char addr[300], maddr[300] = "";
    bound_addr(ds->listen, *ds->port, addr, sizeof(addr));
    if (ds->metrics_listen[0])
        bound_addr(ds->metrics_listen, *ds->metrics_port, maddr, sizeof(maddr));
    const char *id = ds->id[0] ? ds->id : addr;
    static char *roles[] = {"ingest", "state"};

    Eddy__Cluster__V1__Node node = EDDY__CLUSTER__V1__NODE__INIT;
    node.id = (char *)id;
    node.n_roles = 2;
    node.roles = roles;
    node.grpc_addr = addr;
    node.metrics_addr = maddr;
    node.started_ms = ds->started_ms;
    node.partitions_owned = ds->partitions;
    Eddy__Cluster__V1__Node *nodes[] = {&node};

    Eddy__Cluster__V1__Partition *parts = calloc(ds->partitions, sizeof(*parts));
    Eddy__Cluster__V1__Partition **pp = calloc(ds->partitions, sizeof(*pp));
    if (!parts || !pp) {
        rpc_reply_error(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (uint32_t p = 0; p < ds->partitions; p++) {
        eddy__cluster__v1__partition__init(&parts[p]);
        parts[p].partition = p;
        parts[p].owner = (char *)id;
        parts[p].checkpoint_age_ms = -1; /* no checkpoint record: there is no etcd */
        pp[p] = &parts[p];
    }
    Eddy__Cluster__V1__ClusterStatusResponse resp = EDDY__CLUSTER__V1__CLUSTER_STATUS_RESPONSE__INIT;
    resp.cluster = (char *)ds->cluster;
    resp.config_partitions = ds->partitions;
    resp.leader_id = (char *)id; /* it decides alone */
    resp.n_nodes = 1;
    resp.nodes = nodes;
    resp.n_partitions = ds->partitions;
    resp.partitions = pp;
    resp.answered_by = (char *)id;
    resp.replication_factor = 1;
    resp.min_insync = 1;
    rpc_reply(call, &resp.base);
out:
    free(parts);
    free(pp);
}

eddy_err dev_status_register(struct dev_status *ds, rpc_server *s)
{
    return rpc_server_add_unary(s, "/eddy.cluster.v1.Coordinator/ClusterStatus",
                                &eddy__cluster__v1__cluster_status_request__descriptor,
                                handle_status, ds);
}
