/* Stage-2 reads across the cluster. */
#include "node/cluster/stage2_remote.h"

#include <stdlib.h>
#include <string.h>

#include "common/partition.h"
#include "eddy/v1/state.pb-c.h"

#define MAX_STATE_NODES 256

static void take(struct scored_product *dst, const Eddy__State__V1__ScoredProduct *src)
{
    snprintf(dst->product_id, sizeof(dst->product_id), "%s", src->product_id);
    snprintf(dst->category, sizeof(dst->category), "%s", src->category);
    dst->score = src->score;
}

/* The owners' lists merged as --dev ranks its one list: by the stored sums, exactly, so the
 * merge keeps the same entries in the same order (popcache scores the result). */
static void offer(struct topk *out, const Eddy__State__V1__ScoredProduct *sp)
{
    struct decay_sum v = decay_sum_of(sp->popularity);
    topk_offer_sum(out, sp->product_id, strlen(sp->product_id), sp->category,
                   strlen(sp->category), &v);
}

static eddy_err remote_top(void *ud, const char *category, struct topk *out)
{
    struct stage2_remote *r = ud;
    struct cluster_node *nodes = calloc(MAX_STATE_NODES, sizeof(*nodes));
    const char **addrs = calloc(MAX_STATE_NODES, sizeof(*addrs));
    ProtobufCMessage **reqs = calloc(MAX_STATE_NODES, sizeof(*reqs));
    struct peer_call *calls = calloc(MAX_STATE_NODES, sizeof(*calls));
    out->n = 0;
    eddy_err err = nodes && addrs && reqs && calls ? EDDY_OK : EDDY_ERR_NOMEM;
    size_t nn = err == EDDY_OK ? membership_state_nodes(r->mem, nodes, MAX_STATE_NODES) : 0;
    Eddy__State__V1__CategoryTopRequest req = EDDY__STATE__V1__CATEGORY_TOP_REQUEST__INIT;
    req.category = (char *)category;
    req.k = (uint32_t)out->cap;
    for (size_t i = 0; i < nn; i++) {
        addrs[i] = nodes[i].grpc_addr;
        reqs[i] = &req.base;
    }
    /* every node at once: the answer waits for the slowest, not for the sum */
    if (nn > 0)
        peers_fan(r->peers, "/eddy.state.v1.State/CategoryTop",
                  &eddy__state__v1__category_top_response__descriptor, addrs, reqs, calls, nn,
                  r->timeout_ms);
    for (size_t i = 0; i < nn; i++) {
        const Eddy__State__V1__CategoryTopResponse *resp =
            (const Eddy__State__V1__CategoryTopResponse *)calls[i].resp;
        if (calls[i].res.code != GRPC_STATUS_OK || !resp)
            err = EDDY_ERR_UNAVAILABLE; /* a partial list would rank wrongly: fail, retry */
        for (size_t j = 0; resp && err == EDDY_OK && j < resp->n_items; j++)
            offer(out, resp->items[j]);
        if (calls[i].resp)
            protobuf_c_message_free_unpacked(calls[i].resp, NULL);
    }
    if (err != EDDY_OK)
        out->n = 0;
    free(nodes);
    free(addrs);
    free(reqs);
    free(calls);
    return err;
}

static eddy_err remote_neighbours(void *ud, const char *product_id, struct scored_product *out,
                                  size_t max, size_t *n)
{
    struct stage2_remote *r = ud;
    uint32_t q = partition_of_product(product_id, membership_partitions(r->mem));
    char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
    uint64_t epoch;
    *n = 0;
    if (!membership_owner(r->mem, q, owner, &epoch, addr))
        return EDDY_ERR_UNAVAILABLE;
    rpc_channel *ch = peers_get(r->peers, addr);
    if (!ch)
        return EDDY_ERR_NOMEM;
    Eddy__State__V1__NeighboursRequest req = EDDY__STATE__V1__NEIGHBOURS_REQUEST__INIT;
    req.product_id = (char *)product_id;
    req.k = (uint32_t)max;
    Eddy__State__V1__NeighboursResponse *resp = NULL;
    struct rpc_result res;
    rpc_invoke(ch, "/eddy.state.v1.State/Neighbours", &req.base,
               &eddy__state__v1__neighbours_response__descriptor, r->timeout_ms,
               (ProtobufCMessage **)&resp, &res);
    if (res.code != GRPC_STATUS_OK)
        return EDDY_ERR_UNAVAILABLE;
    for (size_t j = 0; j < resp->n_items && *n < max; j++)
        take(&out[(*n)++], resp->items[j]);
    eddy__state__v1__neighbours_response__free_unpacked(resp, NULL);
    return EDDY_OK;
}

void stage2_remote_init(struct stage2_remote *r, membership *mem, peers *pe,
                        int64_t timeout_ms)
{
    r->mem = mem;
    r->peers = pe;
    r->timeout_ms = timeout_ms;
    r->source.lists = (struct popcache_source){remote_top, r};
    r->source.neighbours = (struct nbcache_source){remote_neighbours, r};
}
