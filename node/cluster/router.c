/* Routing of public requests to partition owners, and merging of global queries. */
#include "node/cluster/router.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/partition.h"
#include "common/pbutil.h"
#include "common/strmap.h"
#include "node/cluster/route_plan.h"

#define M_APPLY "/eddy.state.v1.State/Apply"
#define M_USER "/eddy.state.v1.State/User"
#define M_PARTIAL "/eddy.state.v1.State/Partial"
#define MAX_STATE_NODES 256
#define ROUTER_TOP_PRODUCTS_MAX (1u << 24) /* distinct products merged by one TopProducts */

/* ---- parallel calls ---------------------------------------------------------------------- */

/* Call 'method' on every addrs[i] with reqs[i] at once and wait for all answers. */
static void fan_run(struct router *r, const char *method, const ProtobufCMessageDescriptor *rd,
                    char (*addrs)[CLUSTER_ADDR_MAX], ProtobufCMessage **reqs,
                    struct peer_call *slots, size_t n)
{
    const char *a[MAX_STATE_NODES];
    for (size_t i = 0; i < n; i++)
        a[i] = addrs[i];
    peers_fan(r->peers, method, rd, a, reqs, slots, n, r->timeout_ms);
}

static bool retryable(grpc_status_code c)
{
    return c == GRPC_STATUS_FAILED_PRECONDITION || c == GRPC_STATUS_UNAVAILABLE ||
           c == GRPC_STATUS_DEADLINE_EXCEEDED;
}

/* The wait after retry round 'round': 50 ms doubling to 1 s, cut short by a change of the
 * map. */
static int64_t backoff_ms(int round)
{
    int64_t ms = 50LL << (round < 5 ? round : 5);
    return ms > 1000 ? 1000 : ms;
}

static void backoff(struct router *r, uint64_t version, int round)
{
    membership_wait_change(r->mem, version, backoff_ms(round));
}

/* Most an owner that answers UNAVAILABLE for a partition it holds (fewer in-sync copies
 * than min-insync, being taken over) is left alone before the next try: it becomes
 * writable without a map change (a new follower caught up), so a wait for one would
 * sleep past it, up to 1 s. */
#define BUSY_RETRY_MS 100

/* Whether the node has joined the cluster; if not, 'res' says so (UNAVAILABLE). */
static bool joined(const struct router *r, struct backend_status *res)
{
    if (r->mem)
        return true;
    res->code = GRPC_STATUS_UNAVAILABLE;
    snprintf(res->message, sizeof(res->message), "node not in the cluster yet: retry");
    return false;
}

/* ---- Ingest ---------------------------------------------------------------------------- */

void router_ingest(struct router *r, Eddy__V1__Event *const *events, size_t n,
                   struct backend_counts *out, struct backend_status *res)
{
    memset(out, 0, sizeof(*out));
    if (!joined(r, res))
        return;
    uint32_t P = membership_partitions(r->mem);
    res->code = GRPC_STATUS_OK;
    res->message[0] = '\0';

    /* Per batch, so only what is read before it is written is zeroed (calloc'ing all of
     * it was ~300 KB of memset and page faults per batch, a quarter of the handler's CPU
     * for a lone batch); one request per owner, and owners are at most the partitions. */
    size_t maxg = P < MAX_STATE_NODES ? P : MAX_STATE_NODES;
    struct route_plan pl = {0};
    bool *pending = malloc(P * sizeof(*pending));
    struct route_tally *unacked = calloc(P, sizeof(*unacked)); /* written, not acknowledged */
    Eddy__State__V1__PartitionEvents *pe = malloc(P * sizeof(*pe));
    Eddy__State__V1__PartitionEvents **pep = malloc(P * sizeof(*pep));
    char (*owners)[CLUSTER_ADDR_MAX] = malloc(P * CLUSTER_ADDR_MAX); /* addr carrying p */
    uint32_t *parts = malloc(P * sizeof(*parts));
    struct route_group *groups = malloc(maxg * sizeof(*groups));
    char (*addrs)[CLUSTER_ADDR_MAX] = malloc(maxg * CLUSTER_ADDR_MAX);
    Eddy__State__V1__ApplyRequest *reqs = malloc(maxg * sizeof(*reqs));
    ProtobufCMessage **reqp = malloc(maxg * sizeof(*reqp));
    struct peer_call *slots = malloc(maxg * sizeof(*slots));
    if (route_plan_init(&pl, events, n, P) != EDDY_OK || !pending || !unacked || !pe || !pep ||
        !owners || !parts || !groups || !addrs || !reqs || !reqp || !slots) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(res->message, sizeof(res->message), "out of memory routing the batch");
        goto out;
    }
    size_t npending = 0;
    for (uint32_t p = 0; p < P; p++) {
        pending[p] = route_plan_count(&pl, p) > 0;
        npending += pending[p];
    }
    /* --route-retries rounds of backoff_ms: the time a batch keeps being retried; rounds
     * whose only failures were busy owners retry sooner and more often within it */
    int64_t budget_ms = 0, waited_ms = 0;
    for (int k = 0; k < r->retries; k++)
        budget_ms += backoff_ms(k);

    for (int round = 0; npending > 0; round++) {
        uint64_t version = membership_version(r->mem);
        bool busy_only = true; /* every failure this round: an owner answered UNAVAILABLE */
        char owner[CLUSTER_ID_MAX];
        for (uint32_t p = 0; p < P; p++) {
            uint64_t epoch;
            owners[p][0] = '\0';
            if (!pending[p])
                continue;
            if (!membership_owner(r->mem, p, owner, &epoch, owners[p])) {
                owners[p][0] = '\0';
                busy_only = false;
                snprintf(res->message, sizeof(res->message), "partition %u has no live owner", p);
                continue;
            }
            eddy__state__v1__partition_events__init(&pe[p]);
            pe[p].partition = p;
            pe[p].epoch = epoch;
            pe[p].events = &pl.order[pl.start[p]];
            pe[p].n_events = route_plan_count(&pl, p);
        }
        size_t nreq = route_plan_group(&pl, pending, (const char(*)[CLUSTER_ADDR_MAX])owners,
                                       parts, groups, maxg);
        size_t used = 0;
        for (size_t k = 0; k < nreq; k++) {
            memcpy(addrs[k], groups[k].addr, CLUSTER_ADDR_MAX);
            eddy__state__v1__apply_request__init(&reqs[k]);
            reqs[k].partitions = &pep[used];
            reqs[k].n_partitions = groups[k].nparts;
            for (size_t g = 0; g < groups[k].nparts; g++)
                pep[used++] = &pe[groups[k].parts[g]];
            reqp[k] = &reqs[k].base;
        }
        fan_run(r, M_APPLY, &eddy__state__v1__apply_response__descriptor, addrs, reqp, slots,
                nreq);
        for (size_t k = 0; k < nreq; k++) {
            Eddy__State__V1__ApplyResponse *ar = (Eddy__State__V1__ApplyResponse *)slots[k].resp;
            if (slots[k].res.code != GRPC_STATUS_OK || !ar) {
                busy_only = false;
                snprintf(res->message, sizeof(res->message), "%.200s: %.300s", addrs[k],
                         slots[k].res.details);
                if (!retryable(slots[k].res.code))
                    res->code = slots[k].res.code;
                continue;
            }
            for (size_t j = 0; j < ar->n_results; j++) {
                const Eddy__State__V1__PartitionResult *pr = ar->results[j];
                if (pr->partition >= P || !pending[pr->partition])
                    continue;
                if (pr->code == GRPC_STATUS_OK) {
                    uint32_t accepted = pr->accepted, duplicates = pr->duplicates,
                             late = pr->late;
                    route_tally_acked(&unacked[pr->partition], &accepted, &duplicates, &late);
                    out->accepted += accepted;
                    out->duplicates += duplicates;
                    out->late += late;
                    pending[pr->partition] = false;
                    npending--;
                } else {
                    route_tally_unacked(&unacked[pr->partition], pr->accepted, pr->late);
                    busy_only &= pr->code == GRPC_STATUS_UNAVAILABLE;
                    snprintf(res->message, sizeof(res->message), "partition %u: %.400s",
                             pr->partition, pr->message);
                }
            }
            protobuf_c_message_free_unpacked(slots[k].resp, NULL);
        }
        if (res->code != GRPC_STATUS_OK || npending == 0 || waited_ms >= budget_ms)
            break;
        int64_t ms = backoff_ms(round);
        if (busy_only && ms > BUSY_RETRY_MS)
            ms = BUSY_RETRY_MS;
        if (ms > budget_ms - waited_ms)
            ms = budget_ms - waited_ms;
        int64_t t0 = clock_mono_ms();
        membership_wait_change(r->mem, version, ms);
        /* a map change ends the wait early; a round counts at least BUSY_RETRY_MS (or
         * what was left), so a map that keeps changing still ends the retries */
        int64_t took = clock_mono_ms() - t0, least = ms < BUSY_RETRY_MS ? ms : BUSY_RETRY_MS;
        waited_ms += took < least ? least : (took > ms ? ms : took);
    }
    if (res->code == GRPC_STATUS_OK && npending == 0 && waited_ms > 0)
        log_info("msg=\"batch acknowledged after retries\" waited_ms=%" PRId64, waited_ms);
    if (res->code == GRPC_STATUS_OK && npending > 0) {
        res->code = GRPC_STATUS_UNAVAILABLE;
        char last[256];
        snprintf(last, sizeof(last), "%.255s", res->message);
        snprintf(res->message, sizeof(res->message),
                 "%zu partitions of the batch were not acknowledged (%s); retry the batch: "
                 "event ids make it safe",
                 npending, last);
    }
out:
    route_plan_release(&pl);
    free(pending);
    free(unacked);
    free(pe);
    free(pep);
    free(owners);
    free(parts);
    free(groups);
    free(addrs);
    free(reqs);
    free(reqp);
    free(slots);
}

/* ---- per user ------------------------------------------------------------------------- */

/* Whether 'req' may be answered by a follower: a read whose public request says
 * allow_stale, or any read with --read-from-followers. Never a DeleteUser. */
static bool stale_allowed(const struct router *r, const Eddy__State__V1__UserRequest *req)
{
    switch (req->request_case) {
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND:
        return r->read_from_followers || req->recommend->allow_stale;
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_PROFILE:
        return r->read_from_followers || req->profile->allow_stale;
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_COUNTS:
        return r->read_from_followers || req->counts->allow_stale;
    default:
        return false;
    }
}

/* Ask the followers of partition p for 'req', in route_plan_read_order (this node's own
 * copy first, then round-robin), until one answers; true then (*resp is the answer). A
 * follower refuses when it is too far behind, does not follow p at the request's epoch or
 * is not reachable: false once every follower refused, and the caller asks the leader.
 * When this node leads p, the leader is first and no follower is asked. */
static bool read_from_follower(struct router *r, uint32_t p, Eddy__State__V1__UserRequest *req,
                               Eddy__State__V1__UserResponse **resp)
{
    struct cluster_part cp;
    uint32_t order[CLUSTER_REPLICAS_MAX];
    if (!membership_part(r->mem, p, &cp))
        return false;
    uint32_t turn = atomic_fetch_add_explicit(&r->read_turn, 1, memory_order_relaxed);
    size_t n = route_plan_read_order(&cp, membership_self(r->mem), turn, order);
    for (size_t k = 0; k < n && order[k] != 0; k++) {
        char addr[CLUSTER_ADDR_MAX];
        rpc_channel *ch = membership_addr(r->mem, cp.replicas[order[k]], addr)
                              ? peers_get(r->peers, addr)
                              : NULL;
        if (!ch)
            continue;
        req->partition = p;
        req->epoch = cp.epoch;
        struct rpc_result rr;
        rpc_invoke(ch, M_USER, &req->base, &eddy__state__v1__user_response__descriptor,
                   r->timeout_ms, (ProtobufCMessage **)resp, &rr);
        if (rr.code == GRPC_STATUS_OK && *resp)
            return true;
        if (*resp)
            protobuf_c_message_free_unpacked(&(*resp)->base, NULL);
        *resp = NULL;
        log_debug("msg=\"follower refused a stale read\" partition=%u follower=%s code=%d "
                  "details=\"%s\"",
                  p, cp.replicas[order[k]], (int)rr.code, rr.details);
    }
    return false;
}

void router_user(struct router *r, const char *user_id, Eddy__State__V1__UserRequest *req,
                 Eddy__State__V1__UserResponse **resp, struct backend_status *res)
{
    *resp = NULL;
    if (!joined(r, res))
        return;
    uint32_t p = partition_of_user(user_id, membership_partitions(r->mem));
    req->allow_stale = stale_allowed(r, req);
    res->code = GRPC_STATUS_UNAVAILABLE;
    snprintf(res->message, sizeof(res->message), "partition %u has no live owner", p);
    for (int round = 0; round <= r->retries; round++) {
        uint64_t version = membership_version(r->mem);
        char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
        uint64_t epoch;
        if (req->allow_stale && read_from_follower(r, p, req, resp)) {
            res->code = GRPC_STATUS_OK;
            res->message[0] = '\0';
            return;
        }
        if (membership_owner(r->mem, p, owner, &epoch, addr)) {
            req->partition = p;
            req->epoch = epoch;
            struct rpc_result rr;
            rpc_channel *ch = peers_get(r->peers, addr);
            if (ch) {
                rpc_invoke(ch, M_USER, &req->base, &eddy__state__v1__user_response__descriptor,
                           r->timeout_ms, (ProtobufCMessage **)resp, &rr);
                res->code = rr.code;
                snprintf(res->message, sizeof(res->message), "%.500s", rr.details);
                if (!retryable(rr.code))
                    return;
            }
        }
        backoff(r, version, round);
    }
}

/* ---- global queries ---------------------------------------------------------------------- */

struct partials {
    size_t n;
    struct peer_call *slots; /* [n] the answers merged; partials_release frees them */
    int64_t watermark;   /* min over partitions with events; WATERMARK_NONE if none */
    uint64_t late;
    Eddy__V1__ReadStaleness worst; /* the worst follower answer (unset: leaders only) */
    bool stale;
};

static void partials_release(struct partials *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        if (ps->slots[i].resp)
            protobuf_c_message_free_unpacked(ps->slots[i].resp, NULL);
    }
    free(ps->slots);
    ps->slots = NULL;
    ps->n = 0;
}

/* Count one partition's progress into 'ps'. */
static void add_progress(struct partials *ps, const Eddy__State__V1__PartitionProgress *pp)
{
    ps->late += pp->late_events;
    if (pp->has_events && (ps->watermark == WATERMARK_NONE || pp->watermark < ps->watermark))
        ps->watermark = pp->watermark;
    const Eddy__V1__ReadStaleness *st = pp->staleness;
    if (st && st->from_follower) {
        ps->stale = true;
        ps->worst.from_follower = true;
        if (st->lag_records > ps->worst.lag_records)
            ps->worst.lag_records = st->lag_records;
        if (st->lag_ms > ps->worst.lag_ms)
            ps->worst.lag_ms = st->lag_ms;
    }
}

static bool all_covered(uint32_t covered, uint32_t P, struct backend_status *res)
{
    if (covered == P)
        return true;
    res->code = GRPC_STATUS_UNAVAILABLE;
    snprintf(res->message, sizeof(res->message),
             "only %u of %u partitions answered (moves or failures in progress); retry",
             covered, P);
    return false;
}

/* Ask every state node; check that together they cover every partition once. */
static bool gather(struct router *r, Eddy__State__V1__PartialRequest *req, struct partials *ps,
                   struct backend_status *res)
{
    uint32_t P = membership_partitions(r->mem);
    struct cluster_node *nodes = calloc(MAX_STATE_NODES, sizeof(*nodes));
    char (*addrs)[CLUSTER_ADDR_MAX] = calloc(MAX_STATE_NODES, CLUSTER_ADDR_MAX);
    ProtobufCMessage **reqs = calloc(MAX_STATE_NODES, sizeof(*reqs));
    bool *seen = calloc(P, sizeof(*seen));
    bool ok = false;
    partials_release(ps);
    ps->slots = calloc(MAX_STATE_NODES, sizeof(*ps->slots));
    if (!nodes || !addrs || !reqs || !seen || !ps->slots) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    size_t n = membership_state_nodes(r->mem, nodes, MAX_STATE_NODES);
    for (size_t i = 0; i < n; i++) {
        snprintf(addrs[i], CLUSTER_ADDR_MAX, "%s", nodes[i].grpc_addr);
        reqs[i] = &req->base;
    }
    fan_run(r, M_PARTIAL, &eddy__state__v1__partial_response__descriptor, addrs, reqs,
            ps->slots, n);
    ps->n = n;
    ps->watermark = WATERMARK_NONE;
    ps->late = 0;
    uint32_t covered = 0;
    for (size_t i = 0; i < n; i++) {
        Eddy__State__V1__PartialResponse *pr = (Eddy__State__V1__PartialResponse *)ps->slots[i].resp;
        if (ps->slots[i].res.code != GRPC_STATUS_OK || !pr)
            continue;
        for (size_t j = 0; j < pr->n_partitions; j++) {
            const Eddy__State__V1__PartitionProgress *pp = pr->partitions[j];
            if (pp->partition >= P || seen[pp->partition])
                continue;
            seen[pp->partition] = true;
            covered++;
            add_progress(ps, pp);
        }
    }
    ok = all_covered(covered, P, res);
out:
    free(nodes);
    free(addrs);
    free(reqs);
    free(seen);
    return ok;
}

/* The copies a stale global read asks, per partition. */
struct stale_plan {
    struct cluster_part *parts;               /* [P] the map's entry when the read began */
    uint32_t (*order)[CLUSTER_REPLICAS_MAX];  /* [P] route_plan_read_order */
    size_t *norder, *next;                    /* [P] copies in order; the next to ask */
    bool *pending;                            /* [P] not answered yet */
    char (*addr)[CLUSTER_ADDR_MAX];           /* [P] the copy asked this round ("": none) */
    uint32_t *grouped;                        /* [P] partitions laid out by group */
    struct route_group *groups;               /* [MAX_STATE_NODES] */
    Eddy__State__V1__PartialRequest *reqs;    /* [MAX_STATE_NODES] */
    Eddy__State__V1__PartitionAt *at;         /* [P] */
    Eddy__State__V1__PartitionAt **atp;       /* [P] */
    ProtobufCMessage **reqp;                  /* [MAX_STATE_NODES] */
    char (*gaddr)[CLUSTER_ADDR_MAX];          /* [MAX_STATE_NODES] */
};

static void stale_plan_release(struct stale_plan *sp)
{
    free(sp->parts);
    free(sp->order);
    free(sp->norder);
    free(sp->next);
    free(sp->pending);
    free(sp->addr);
    free(sp->grouped);
    free(sp->groups);
    free(sp->reqs);
    free(sp->at);
    free(sp->atp);
    free(sp->reqp);
    free(sp->gaddr);
}

static bool stale_plan_init(struct stale_plan *sp, uint32_t P)
{
    *sp = (struct stale_plan){
        .parts = calloc(P, sizeof(*sp->parts)),
        .order = calloc(P, sizeof(*sp->order)),
        .norder = calloc(P, sizeof(*sp->norder)),
        .next = calloc(P, sizeof(*sp->next)),
        .pending = calloc(P, sizeof(*sp->pending)),
        .addr = calloc(P, sizeof(*sp->addr)),
        .grouped = calloc(P, sizeof(*sp->grouped)),
        .groups = calloc(MAX_STATE_NODES, sizeof(*sp->groups)),
        .reqs = calloc(MAX_STATE_NODES, sizeof(*sp->reqs)),
        .at = calloc(P, sizeof(*sp->at)),
        .atp = calloc(P, sizeof(*sp->atp)),
        .reqp = calloc(MAX_STATE_NODES, sizeof(*sp->reqp)),
        .gaddr = calloc(MAX_STATE_NODES, sizeof(*sp->gaddr)),
    };
    return sp->parts && sp->order && sp->norder && sp->next && sp->pending && sp->addr &&
           sp->grouped && sp->groups && sp->reqs && sp->at && sp->atp && sp->reqp && sp->gaddr;
}

/* For each pending partition, the address of the next copy to ask ("" when every copy
 * was asked). */
static void stale_plan_next(struct router *r, struct stale_plan *sp, uint32_t P)
{
    for (uint32_t p = 0; p < P; p++) {
        sp->addr[p][0] = '\0';
        while (sp->pending[p] && sp->next[p] < sp->norder[p]) {
            const char *id = sp->parts[p].replicas[sp->order[p][sp->next[p]]];
            if (membership_addr(r->mem, id, sp->addr[p]))
                break;
            sp->addr[p][0] = '\0';
            sp->next[p]++;
        }
    }
}

/* Like gather, but each partition is asked of one copy at a time, in route_plan_read_order
 * (this node's own copy, the followers round-robin, the leader last), naming the partitions
 * and their epochs: a copy that refuses (too far behind, not a replica at that epoch) or
 * does not answer passes its partitions to the next copy. Each partition is counted from
 * exactly one answer. */
static bool gather_stale(struct router *r, const Eddy__State__V1__PartialRequest *req,
                         struct partials *ps, struct backend_status *res)
{
    uint32_t P = membership_partitions(r->mem);
    struct stale_plan sp;
    uint32_t covered = 0;
    bool ok = false;
    partials_release(ps);
    ps->watermark = WATERMARK_NONE;
    ps->late = 0;
    if (!stale_plan_init(&sp, P)) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    uint32_t turn = atomic_fetch_add_explicit(&r->read_turn, 1, memory_order_relaxed);
    for (uint32_t p = 0; p < P; p++) {
        if (membership_part(r->mem, p, &sp.parts[p]))
            sp.norder[p] = route_plan_read_order(&sp.parts[p], membership_self(r->mem),
                                                 turn + p, sp.order[p]);
        sp.pending[p] = true;
    }
    for (int round = 0; round < CLUSTER_REPLICAS_MAX && covered < P; round++) {
        stale_plan_next(r, &sp, P);
        size_t ng = route_plan_group_parts(P, sp.pending, (const char(*)[CLUSTER_ADDR_MAX])sp.addr,
                                           sp.grouped, sp.groups, MAX_STATE_NODES);
        if (ng == 0)
            break;
        struct peer_call *grown = realloc(ps->slots, (ps->n + ng) * sizeof(*grown));
        if (!grown) {
            res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            goto out;
        }
        ps->slots = grown;
        memset(ps->slots + ps->n, 0, ng * sizeof(*grown));
        size_t used = 0;
        for (size_t g = 0; g < ng; g++) {
            sp.reqs[g] = *req;
            sp.reqs[g].allow_stale = true;
            sp.reqs[g].read = &sp.atp[used];
            sp.reqs[g].n_read = sp.groups[g].nparts;
            for (size_t k = 0; k < sp.groups[g].nparts; k++) {
                uint32_t p = sp.groups[g].parts[k];
                eddy__state__v1__partition_at__init(&sp.at[p]);
                sp.at[p].partition = p;
                sp.at[p].epoch = sp.parts[p].epoch;
                sp.atp[used++] = &sp.at[p];
            }
            sp.reqp[g] = &sp.reqs[g].base;
            memcpy(sp.gaddr[g], sp.groups[g].addr, CLUSTER_ADDR_MAX);
        }
        fan_run(r, M_PARTIAL, &eddy__state__v1__partial_response__descriptor, sp.gaddr, sp.reqp,
                ps->slots + ps->n, ng);
        for (size_t g = 0; g < ng; g++) {
            struct peer_call *pc = &ps->slots[ps->n + g];
            Eddy__State__V1__PartialResponse *pr = (Eddy__State__V1__PartialResponse *)pc->resp;
            for (size_t j = 0; pc->res.code == GRPC_STATUS_OK && pr && j < pr->n_partitions; j++) {
                const Eddy__State__V1__PartitionProgress *pp = pr->partitions[j];
                if (pp->partition >= P || !sp.pending[pp->partition] ||
                    strcmp(sp.addr[pp->partition], sp.groups[g].addr) != 0)
                    continue;
                sp.pending[pp->partition] = false;
                covered++;
                add_progress(ps, pp);
            }
            if (pc->res.code != GRPC_STATUS_OK || !pr) {
                log_debug("msg=\"stale global read: copy did not answer\" addr=%s code=%d "
                          "details=\"%s\"",
                          sp.groups[g].addr, (int)pc->res.code, pc->res.details);
                if (pr) {
                    protobuf_c_message_free_unpacked(&pr->base, NULL);
                    pc->resp = NULL;
                }
            }
            /* what it refused or left out goes to the next copy */
            for (size_t k = 0; k < sp.groups[g].nparts; k++)
                sp.next[sp.groups[g].parts[k]]++;
        }
        ps->n += ng;
    }
    ok = all_covered(covered, P, res);
out:
    stale_plan_release(&sp);
    return ok;
}

/* Whether a global read may be answered by followers: the request says allow_stale, or
 * the node runs with --read-from-followers. */
static bool global_stale(const struct router *r, bool allow_stale)
{
    return r->read_from_followers || allow_stale;
}

/* A heap copy of 'st' for an answer (freed with it); NULL on OOM. */
static Eddy__V1__ReadStaleness *staleness_copy(const Eddy__V1__ReadStaleness *st)
{
    Eddy__V1__ReadStaleness *c = malloc(sizeof(*c));
    if (c) {
        eddy__v1__read_staleness__init(c);
        c->from_follower = st->from_follower;
        c->lag_records = st->lag_records;
        c->lag_ms = st->lag_ms;
    }
    return c;
}

static int cmp_window(const void *a, const void *b)
{
    const Eddy__V1__WindowCounts *x = *(Eddy__V1__WindowCounts *const *)a;
    const Eddy__V1__WindowCounts *y = *(Eddy__V1__WindowCounts *const *)b;
    return x->window_start_ms < y->window_start_ms ? -1 : x->window_start_ms > y->window_start_ms;
}

static void add_type_counts(Eddy__V1__TypeCounts *a, const Eddy__V1__TypeCounts *b)
{
    if (!b)
        return;
    a->view += b->view;
    a->click += b->click;
    a->add_to_cart += b->add_to_cart;
    a->remove_from_cart += b->remove_from_cart;
    a->purchase += b->purchase;
    a->search += b->search;
    a->total += b->total;
}

static Eddy__V1__TypeCounts *new_counts(void)
{
    Eddy__V1__TypeCounts *t = malloc(sizeof(*t));
    if (t)
        eddy__v1__type_counts__init(t);
    return t;
}

void router_counts(struct router *r, const Eddy__V1__EventCountsRequest *req,
                   Eddy__V1__EventCountsResponse **out, struct backend_status *res)
{
    *out = NULL;
    if (!joined(r, res))
        return;
    struct partials *ps = calloc(1, sizeof(*ps));
    Eddy__State__V1__PartialRequest pr = EDDY__STATE__V1__PARTIAL_REQUEST__INIT;
    Eddy__V1__EventCountsRequest all = *req;
    Eddy__V1__EventCountsResponse *o = NULL;
    res->code = GRPC_STATUS_OK;
    res->message[0] = '\0';
    *out = NULL;
    if (!ps) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        return;
    }
    all.include_open = true; /* closing is decided here, with the global watermark */
    pr.request_case = EDDY__STATE__V1__PARTIAL_REQUEST__REQUEST_COUNTS;
    pr.counts = &all;
    bool stale = global_stale(r, req->allow_stale);
    if (!(stale ? gather_stale(r, &pr, ps, res) : gather(r, &pr, ps, res)))
        goto out;
    size_t total = 0;
    for (size_t i = 0; i < ps->n; i++) {
        Eddy__State__V1__PartialResponse *p = (Eddy__State__V1__PartialResponse *)ps->slots[i].resp;
        total += p ? p->n_windows : 0;
    }
    o = malloc(sizeof(*o));
    if (!o || !(o->windows = NULL, eddy__v1__event_counts_response__init(o), 1) ||
        !(o->windows = calloc(total ? total : 1, sizeof(*o->windows)))) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    /* sum windows with the same start (a window appears once per node that has it) */
    for (size_t i = 0; i < ps->n; i++) {
        Eddy__State__V1__PartialResponse *p = (Eddy__State__V1__PartialResponse *)ps->slots[i].resp;
        for (size_t j = 0; p && j < p->n_windows; j++) {
            const Eddy__V1__WindowCounts *w = p->windows[j];
            size_t k = 0;
            while (k < o->n_windows && o->windows[k]->window_start_ms != w->window_start_ms)
                k++;
            if (k == o->n_windows) {
                Eddy__V1__WindowCounts *nw = malloc(sizeof(*nw));
                Eddy__V1__TypeCounts *tc = new_counts();
                if (!nw || !tc) {
                    free(nw);
                    free(tc);
                    res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                    goto out;
                }
                eddy__v1__window_counts__init(nw);
                nw->window_start_ms = w->window_start_ms;
                nw->window_end_ms = w->window_end_ms;
                nw->counts = tc;
                o->windows[o->n_windows++] = nw;
            }
            add_type_counts(o->windows[k]->counts, w->counts);
        }
    }
    qsort(o->windows, o->n_windows, sizeof(*o->windows), cmp_window);
    size_t kept = 0;
    for (size_t k = 0; k < o->n_windows; k++) {
        Eddy__V1__WindowCounts *w = o->windows[k];
        w->closed = window_is_closed(&r->window, w->window_start_ms, ps->watermark);
        if (w->closed || req->include_open)
            o->windows[kept++] = w;
        else
            protobuf_c_message_free_unpacked(&w->base, NULL);
    }
    o->n_windows = kept;
    o->watermark_ms = ps->watermark == WATERMARK_NONE ? 0 : ps->watermark;
    o->late_events = ps->late;
    if (ps->stale && !(o->staleness = staleness_copy(&ps->worst))) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    *out = o;
    o = NULL;
out:
    if (o)
        protobuf_c_message_free_unpacked(&o->base, NULL);
    partials_release(ps);
    free(ps);
}

struct prod_sum {
    Eddy__V1__ProductStat *stat; /* one product merged over the nodes (NULL: moved out) */
};

static int cmp_stat(const void *a, const void *b, void *arg)
{
    const Eddy__V1__ProductStat *x = *(Eddy__V1__ProductStat *const *)a;
    const Eddy__V1__ProductStat *y = *(Eddy__V1__ProductStat *const *)b;
    Eddy__V1__EventType t = *(const Eddy__V1__EventType *)arg;
    uint64_t vx, vy;
#define PICK(c) (t == EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW ? (c)->view                 \
                 : t == EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK ? (c)->click             \
                 : t == EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART ? (c)->add_to_cart \
                 : t == EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART ? (c)->remove_from_cart \
                 : t == EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE ? (c)->purchase       \
                 : t == EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH ? (c)->search : (c)->total)
    vx = PICK(x->counts);
    vy = PICK(y->counts);
#undef PICK
    if (vx != vy)
        return vx < vy ? 1 : -1;
    return strcmp(x->product_id, y->product_id);
}

static void free_stat(void *stat)
{
    protobuf_c_message_free_unpacked(stat, NULL);
}

void router_top(struct router *r, const Eddy__V1__TopProductsRequest *req,
                Eddy__V1__TopProductsResponse **out, struct backend_status *res)
{
    *out = NULL;
    if (!joined(r, res))
        return;
    struct partials *ps = calloc(1, sizeof(*ps));
    Eddy__State__V1__PartialRequest pr = EDDY__STATE__V1__PARTIAL_REQUEST__INIT;
    Eddy__V1__TopProductsRequest all = *req;
    Eddy__V1__TopProductsResponse *o = NULL;
    struct prod_sum *tab = NULL;
    size_t cap = 0, n = 0;
    struct strmap by_id = STRMAP_INIT(ROUTER_TOP_PRODUCTS_MAX);
    int64_t wm = WATERMARK_NONE;
    res->code = GRPC_STATUS_OK;
    res->message[0] = '\0';
    *out = NULL;
    if (!ps) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        return;
    }
    /* Round 1: progress only, for the global watermark; round 2: every product in the
     * windows closed under it (or all, with include_open). */
    pr.request_case = EDDY__STATE__V1__PARTIAL_REQUEST__REQUEST__NOT_SET;
    bool stale = global_stale(r, req->allow_stale);
    if (!(stale ? gather_stale(r, &pr, ps, res) : gather(r, &pr, ps, res)))
        goto out;
    wm = ps->watermark;
    partials_release(ps);
    if (!req->include_open) {
        if (wm == WATERMARK_NONE)
            goto empty;
        int64_t closed_end = wm - r->window.size_ms - r->window.lateness_ms + 1;
        if (all.end_ms == 0 || all.end_ms > closed_end) {
            if (all.start_ms == 0 && all.end_ms == 0)
                all.start_ms = INT64_MIN + 1;
            all.end_ms = closed_end;
        }
        if (all.end_ms <= all.start_ms)
            goto empty;
    }
    all.include_open = true;
    all.limit = 0;
    pr.request_case = EDDY__STATE__V1__PARTIAL_REQUEST__REQUEST_TOP;
    pr.top = &all;
    if (!(stale ? gather_stale(r, &pr, ps, res) : gather(r, &pr, ps, res)))
        goto out;
    /* merge by product id: the first node's stat is reused and the others added to it */
    for (size_t i = 0; i < ps->n; i++) {
        Eddy__State__V1__PartialResponse *p = (Eddy__State__V1__PartialResponse *)ps->slots[i].resp;
        for (size_t j = 0; p && j < p->n_products; j++) {
            Eddy__V1__ProductStat *s = p->products[j];
            bool added = false;
            eddy_err e = EDDY_OK;
            void **slot = strmap_slot(&by_id, s->product_id, strlen(s->product_id), &added, &e);
            if (!slot) {
                res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                snprintf(res->message, sizeof(res->message), "merging top products: %s",
                         eddy_strerror(e));
                goto out;
            }
            if (added) {
                *slot = s;
                p->products[j] = NULL; /* moved into the map */
            } else {
                add_type_counts(((Eddy__V1__ProductStat *)*slot)->counts, s->counts);
            }
        }
    }
    cap = by_id.n;
    tab = calloc(cap ? cap : 1, sizeof(*tab));
    if (!tab) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    size_t pos = 0;
    const char *key;
    size_t keylen;
    void *value;
    while (strmap_next(&by_id, &pos, &key, &keylen, &value))
        tab[n++].stat = value;
    strmap_release(&by_id, NULL); /* the stats are the table's now */
    Eddy__V1__EventType t = req->event_type;
    qsort_r(tab, n, sizeof(*tab), cmp_stat, &t);
empty:
    o = malloc(sizeof(*o));
    if (!o) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    eddy__v1__top_products_response__init(o);
    size_t limit = req->limit ? req->limit : 10;
    if (limit > 1000)
        limit = 1000;
    size_t k = n < limit ? n : limit;
    o->products = calloc(k ? k : 1, sizeof(*o->products));
    for (size_t i = 0; o->products && i < k; i++) {
        o->products[i] = tab[i].stat;
        tab[i].stat = NULL;
    }
    o->n_products = o->products ? k : 0;
    o->watermark_ms = wm == WATERMARK_NONE ? 0 : wm;
    if (ps->stale && !(o->staleness = staleness_copy(&ps->worst))) {
        protobuf_c_message_free_unpacked(&o->base, NULL);
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        goto out;
    }
    *out = o;
out:
    if (tab) {
        for (size_t i = 0; i < cap; i++) {
            if (tab[i].stat)
                protobuf_c_message_free_unpacked(&tab[i].stat->base, NULL);
        }
    }
    free(tab);
    strmap_release(&by_id, free_stat); /* after an error: the stats moved into the map */
    /* products moved out of responses were set to NULL, which free_unpacked skips */
    partials_release(ps);
    free(ps);
}

/* ---- experiments ------------------------------------------------------------------------- */

/* Add one node's 'from' to the sums in 'to' (by variant name; moves new entries out of
 * 'from'). */
static eddy_err add_variants(Eddy__V1__GetExperimentResponse *to,
                             Eddy__State__V1__PartialResponse *from)
{
    for (size_t j = 0; j < from->n_variants; j++) {
        Eddy__V1__VariantStats *v = from->variants[j], *sum = NULL;
        for (size_t i = 0; i < to->n_stats && !sum; i++) {
            if (strcmp(to->stats[i]->variant, v->variant) == 0)
                sum = to->stats[i];
        }
        if (sum) {
            sum->impressions += v->impressions;
            sum->clicks += v->clicks;
            sum->add_to_carts += v->add_to_carts;
            sum->purchases += v->purchases;
            sum->revenue += v->revenue;
            sum->revenue_sq += v->revenue_sq;
            sum->recommended += v->recommended;
            sum->recommended_hits += v->recommended_hits;
            continue;
        }
        if (pb_grow((void **)&to->stats, to->n_stats, sizeof(*to->stats)) != EDDY_OK)
            return EDDY_ERR_NOMEM;
        to->stats[to->n_stats++] = v;
        from->variants[j] = NULL; /* moved */
    }
    return EDDY_OK;
}

static int cmp_variant(const void *a, const void *b)
{
    return strcmp((*(Eddy__V1__VariantStats *const *)a)->variant,
                  (*(Eddy__V1__VariantStats *const *)b)->variant);
}

void router_experiment(struct router *r, const char *name, Eddy__V1__GetExperimentResponse **out,
                       struct backend_status *res)
{
    *out = NULL;
    if (!joined(r, res))
        return;
    struct partials *ps = calloc(1, sizeof(*ps));
    Eddy__State__V1__PartialRequest pr = EDDY__STATE__V1__PARTIAL_REQUEST__INIT;
    Eddy__V1__GetExperimentResponse *o = malloc(sizeof(*o));
    res->code = GRPC_STATUS_OK;
    res->message[0] = '\0';
    if (!ps || !o) {
        res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        free(o);
        o = NULL;
        goto out;
    }
    eddy__v1__get_experiment_response__init(o);
    /* the leaders only: counts are exact, each partition once (gather checks coverage) */
    pr.request_case = EDDY__STATE__V1__PARTIAL_REQUEST__REQUEST_EXPERIMENT;
    pr.experiment = (char *)name;
    if (!gather(r, &pr, ps, res))
        goto out;
    for (size_t i = 0; i < ps->n; i++) {
        Eddy__State__V1__PartialResponse *p = (Eddy__State__V1__PartialResponse *)ps->slots[i].resp;
        if (p && add_variants(o, p) != EDDY_OK) {
            res->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            goto out;
        }
    }
    if (o->n_stats > 1) /* none: stats is NULL, which qsort must not get */
        qsort(o->stats, o->n_stats, sizeof(*o->stats), cmp_variant);
    *out = o;
    o = NULL;
out:
    if (o)
        protobuf_c_message_free_unpacked(&o->base, NULL);
    if (ps)
        partials_release(ps);
    free(ps);
}

/* ---- the routed state backend ------------------------------------------------------------ */

static void routed_ingest(void *impl, Eddy__V1__Event *const *events, size_t n,
                          int64_t arrival_ns, backend_ingest_done_fn *done, void *ud)
{
    struct backend_counts counts;
    struct backend_status st;
    router_ingest(impl, events, n, &counts, &st);
    done(ud, &st, &counts);
}

static void routed_user(void *impl, const char *user_id, Eddy__State__V1__UserRequest *req,
                        backend_reply_fn *done, void *ud)
{
    Eddy__State__V1__UserResponse *resp = NULL;
    struct backend_status st;
    router_user(impl, user_id, req, &resp, &st);
    if (st.code == GRPC_STATUS_OK && !resp)
        backend_status_set(&st, GRPC_STATUS_INTERNAL, "empty answer from the owner");
    done(ud, &st, st.code == GRPC_STATUS_OK ? &resp->base : NULL);
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void routed_top(void *impl, const Eddy__V1__TopProductsRequest *req,
                       backend_reply_fn *done, void *ud)
{
    Eddy__V1__TopProductsResponse *resp = NULL;
    struct backend_status st;
    router_top(impl, req, &resp, &st);
    done(ud, &st, st.code == GRPC_STATUS_OK && resp ? &resp->base : NULL);
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void routed_counts(void *impl, const Eddy__V1__EventCountsRequest *req,
                          backend_reply_fn *done, void *ud)
{
    Eddy__V1__EventCountsResponse *resp = NULL;
    struct backend_status st;
    router_counts(impl, req, &resp, &st);
    done(ud, &st, st.code == GRPC_STATUS_OK && resp ? &resp->base : NULL);
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
}

struct backend router_backend_of(struct router *r)
{
    static const struct backend_ops ops = {routed_ingest, routed_user, routed_top,
                                           routed_counts};
    return (struct backend){&ops, r};
}
