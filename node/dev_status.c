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

eddy_err dev_status_build(const struct dev_status *ds, struct dev_status_reply *out)
{
    memset(out, 0, sizeof(*out));
    bound_addr(ds->listen, *ds->port, out->addr, sizeof(out->addr));
    if (ds->metrics_listen[0])
        bound_addr(ds->metrics_listen, *ds->metrics_port, out->maddr, sizeof(out->maddr));
    char *id = (char *)(ds->id[0] ? ds->id : out->addr);
    out->roles[0] = "ingest";
    out->roles[1] = "state";

    Eddy__Cluster__V1__Node *node = &out->node;
    eddy__cluster__v1__node__init(node);
    node->id = id;
    node->n_roles = 2;
    node->roles = out->roles;
    node->grpc_addr = out->addr;
    node->metrics_addr = out->maddr;
    node->started_ms = ds->started_ms;
    node->partitions_owned = ds->partitions;
    out->nodes[0] = node;

    out->parts = calloc(ds->partitions, sizeof(*out->parts));
    out->pp = calloc(ds->partitions, sizeof(*out->pp));
    if (!out->parts || !out->pp) {
        dev_status_release(out);
        return EDDY_ERR_NOMEM;
    }
    for (uint32_t p = 0; p < ds->partitions; p++) {
        eddy__cluster__v1__partition__init(&out->parts[p]);
        out->parts[p].partition = p;
        out->parts[p].owner = id;
        out->parts[p].checkpoint_age_ms = -1; /* no checkpoint record: there is no etcd */
        out->pp[p] = &out->parts[p];
    }
    Eddy__Cluster__V1__ClusterStatusResponse *resp = &out->msg;
    eddy__cluster__v1__cluster_status_response__init(resp);
    resp->cluster = (char *)ds->cluster;
    resp->config_partitions = ds->partitions;
    resp->leader_id = id; /* it decides alone */
    resp->n_nodes = 1;
    resp->nodes = out->nodes;
    resp->n_partitions = ds->partitions;
    resp->partitions = out->pp;
    resp->answered_by = id;
    resp->replication_factor = 1;
    resp->min_insync = 1;
    return EDDY_OK;
}

void dev_status_release(struct dev_status_reply *r)
{
    free(r->parts);
    free(r->pp);
    r->parts = NULL;
    r->pp = NULL;
}

static void handle_status(void *ud, rpc_call *call, const ProtobufCMessage *msg)
{
    struct dev_status_reply r;
    if (dev_status_build(ud, &r) != EDDY_OK) {
        rpc_reply_error(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    rpc_reply(call, &r.msg.base);
    dev_status_release(&r);
}

eddy_err dev_status_register(struct dev_status *ds, rpc_server *s)
{
    return rpc_server_add_unary(s, "/eddy.cluster.v1.Coordinator/ClusterStatus",
                                &eddy__cluster__v1__cluster_status_request__descriptor,
                                handle_status, ds);
}
