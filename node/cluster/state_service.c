/* eddy.state.v1.State handlers. */
#include "node/cluster/state_service.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/completion.h"

#include "common/log.h"
#include "node/cluster/ckptcopy.h"
#include "node/state/checkpoint.h"
#include "common/partition.h"
#include "common/thread.h"
#include "eddy/v1/state.pb-c.h"
#include "common/pbutil.h"

/* ---- take-over ------------------------------------------------------------------------ */

eddy_err state_service_takeover_init(struct state_service *svc, uint32_t partitions)
{
    svc->ready = calloc(partitions, sizeof(*svc->ready));
    svc->restoring = calloc(partitions, sizeof(*svc->restoring));
    svc->incoming = calloc(partitions, sizeof(*svc->incoming));
    svc->freeze_id = calloc(partitions, sizeof(*svc->freeze_id));
    svc->freeze_until = calloc(partitions, sizeof(*svc->freeze_until));
    return svc->ready && svc->restoring && svc->incoming && svc->freeze_id && svc->freeze_until
               ? EDDY_OK
               : EDDY_ERR_NOMEM;
}

void state_service_takeover_release(struct state_service *svc)
{
    free(svc->ready);
    free(svc->restoring);
    free(svc->incoming);
    free(svc->freeze_id);
    free((void *)svc->freeze_until);
    svc->ready = NULL;
    svc->restoring = NULL;
    svc->incoming = NULL;
    svc->freeze_id = NULL;
    svc->freeze_until = NULL;
}

/* Whether a move's copy froze partition p's stage 2 here (and the freeze has not lapsed). */
static bool frozen(const struct state_service *svc, uint32_t p)
{
    return atomic_load(&svc->freeze_id[p]) != 0 &&
           clock_mono_ms() < atomic_load(&svc->freeze_until[p]);
}

bool state_service_stage2_local(void *ud, uint32_t p)
{
    struct state_service *svc = ud;
    uint64_t epoch;
    return svc->mem && membership_owns(svc->mem, p, &epoch) &&
           !(svc->freeze_id && frozen(svc, p)) && !stage2_side_frozen(svc->s2);
}

bool state_service_moving_out(struct state_service *svc, uint32_t p)
{
    return svc->freeze_id && frozen(svc, p);
}

bool state_service_moving(void *ud)
{
    struct state_service *svc = ud;
    if (!svc->incoming || !atomic_load_explicit(&svc->joined, memory_order_acquire))
        return false;
    uint32_t P = membership_partitions(svc->mem);
    for (uint32_t p = 0; p < P; p++) {
        uint64_t epoch;
        /* a freeze outlives its move by up to --move-freeze: only an owned one counts */
        if (atomic_load(&svc->incoming[p]) ||
            (frozen(svc, p) && membership_owns(svc->mem, p, &epoch)))
            return true;
    }
    return false;
}

void state_service_joined(struct state_service *svc, membership *mem)
{
    svc->mem = mem;
    svc->q.owns_ud = mem;
    atomic_store_explicit(&svc->joined, true, memory_order_release);
}

void state_service_mark_ready(struct state_service *svc, uint32_t p, uint64_t epoch)
{
    atomic_store(&svc->ready[p], epoch + 1);
}

/* Whether partition p is taken over at 'epoch' (writes and reads may be answered). */
static bool ready_at(const struct state_service *svc, uint32_t p, uint64_t epoch)
{
    return atomic_load(&svc->ready[p]) == epoch + 1;
}

struct restore_ctx {
    struct state_service *svc;
    uint64_t epoch;
};

static void restore_done(void *ud, eddy_err err, uint32_t p, uint64_t next_seq)
{
    struct restore_ctx *rc = ud;
    struct state_service *svc = rc->svc;
    if (err != EDDY_OK)
        log_error("msg=\"restore from checkpoint failed; serving local state\" partition=%u "
                  "error=\"%s\"",
                  p, eddy_strerror(err));
    /* Either way the partition is now as current as this node can make it. */
    atomic_store(&svc->restoring[p], 0);
    atomic_store(&svc->ready[p], rc->epoch + 1);
    free(rc);
}

void state_service_takeover(struct state_service *svc)
{
    if (!svc->mem || !svc->ready)
        return;
    uint32_t P = membership_partitions(svc->mem);
    for (uint32_t p = 0; p < P; p++) {
        uint64_t epoch;
        if (!membership_owns(svc->mem, p, &epoch) || ready_at(svc, p, epoch) ||
            atomic_load(&svc->restoring[p]) == epoch + 1 || atomic_load(&svc->incoming[p]))
            continue; /* (a partition a move brings here is the mover's to make ready) */
        struct engine_partition_view v;
        struct checkpoint_info info;
        engine_partition(svc->eng, p, &v);
        bool newer = svc->checkpoint_dir &&
                     checkpoint_latest_valid(engine_options(svc->eng)->checkpoint_key,
                                             svc->checkpoint_dir, p, &info) == EDDY_OK &&
                     info.seq > v.next_seq;
        struct restore_ctx *rc = newer ? malloc(sizeof(*rc)) : NULL;
        if (rc) {
            rc->svc = svc;
            rc->epoch = epoch;
            atomic_store(&svc->restoring[p], epoch + 1);
            log_info("msg=\"restoring a partition that moved here\" partition=%u epoch=%llu "
                     "checkpoint_seq=%llu local_seq=%llu",
                     p, (unsigned long long)epoch, (unsigned long long)info.seq,
                     (unsigned long long)v.next_seq);
            if (engine_restore(svc->eng, p, info.path, restore_done, rc) == EDDY_OK)
                continue;
            atomic_store(&svc->restoring[p], 0);
            free(rc); /* could not queue it: try again at the next map change */
            continue;
        }
        atomic_store(&svc->ready[p], epoch + 1); /* its own state is the newest there is */
    }
}

bool state_service_ready(void *ud, uint32_t p)
{
    struct state_service *svc = ud;
    uint64_t epoch;
    return svc->mem && svc->ready && membership_owns(svc->mem, p, &epoch) &&
           ready_at(svc, p, epoch);
}

bool state_service_owns(void *ud, uint32_t p)
{
    uint64_t epoch;
    return ud && membership_owns(ud, p, &epoch); /* before joining: nothing */
}

/* Calls can arrive between the server's start and the node's joining the cluster (the
 * address is registered only once the server listens): answer UNAVAILABLE until then. */
static bool not_joined(struct state_service *svc, rpc_call *c, bool stream)
{
    if (atomic_load_explicit(&svc->joined, memory_order_acquire))
        return false;
    if (stream)
        rpc_stream_finish(c, GRPC_STATUS_UNAVAILABLE, "node not in the cluster yet: retry");
    else
        rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "node not in the cluster yet: retry");
    return true;
}

/* ---- Apply ---------------------------------------------------------------------------- */

struct pending_apply {
    rpc_call *call;
    pthread_mutex_t mu;
    size_t left;
    Eddy__State__V1__ApplyResponse resp;
    Eddy__State__V1__PartitionResult *results;  /* [n] */
    Eddy__State__V1__PartitionResult **rp;      /* [n] */
    char (*hints)[CLUSTER_ID_MAX];              /* [n] owner hints of NOT_OWNER results */
};

static void pending_finish(struct pending_apply *pa)
{
    rpc_reply(pa->call, &pa->resp.base);
    pthread_mutex_destroy(&pa->mu);
    free(pa->results);
    free(pa->rp);
    free(pa->hints);
    free(pa);
}

static void one_done(struct pending_apply *pa)
{
    pthread_mutex_lock(&pa->mu);
    bool last = --pa->left == 0;
    pthread_mutex_unlock(&pa->mu);
    if (last)
        pending_finish(pa);
}

struct apply_part {
    struct state_service *svc;
    struct pending_apply *pa;
    Eddy__State__V1__PartitionResult *r;
    const Eddy__State__V1__PartitionEvents *pe; /* the request's: alive until the reply */
};

static const char NOT_REPLICATED[] =
    "fewer in-sync copies of the partition than min-insync: not acknowledging writes";

/* The partition's records are on min-insync copies (or will not be): answer. */
static void apply_replicated(void *ud, eddy_err err)
{
    struct apply_part *ap = ud;
    if (err != EDDY_OK) {
        ap->r->code = GRPC_STATUS_UNAVAILABLE;
        ap->r->message = (char *)NOT_REPLICATED;
    }
    struct pending_apply *pa = ap->pa;
    free(ap);
    one_done(pa);
}

static void apply_done(void *ud, eddy_err err, const struct engine_ingest_result *res)
{
    struct apply_part *ap = ud;
    Eddy__State__V1__PartitionResult *r = ap->r;
    if (err == EDDY_OK) {
        r->code = GRPC_STATUS_OK;
        r->accepted = res->accepted;
        r->duplicates = res->duplicates;
        r->late = res->late;
    } else {
        r->code = (int32_t)eddy_err_to_grpc(err);
        r->message = (char *)eddy_strerror(err); /* static text */
    }
    if (err == EDDY_OK && ap->svc->repl) {
        /* Wait for the partition's whole log as published now (this group included), not
         * only this job's records: a retry answered "duplicate" must not be acknowledged
         * before the first copy of its events is replicated. */
        struct engine_partition_view v;
        engine_partition(ap->svc->eng, r->partition, &v);
        if (replica_wait(ap->svc->repl, r->partition, v.next_seq, apply_replicated, ap) ==
            EDDY_OK)
            return;
        r->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        r->message = "out of memory";
    }
    struct pending_apply *pa = ap->pa;
    free(ap);
    one_done(pa);
}

/* Hand one partition's events to the engine (its result goes to ap->r): into 'b', queued
 * with the request's other partitions, or alone if 'b' is NULL. */
static void apply_start(struct apply_part *ap, struct engine_batch *b)
{
    const Eddy__State__V1__PartitionEvents *pe = ap->pe;
    eddy_err err = engine_apply_in(ap->svc->eng, b, pe->partition, pe->epoch, pe->events,
                                   pe->n_events, apply_done, ap);
    if (err != EDDY_OK) {
        ap->r->code = (int32_t)eddy_err_to_grpc(err);
        ap->r->message = (char *)eddy_strerror(err);
        struct pending_apply *pa = ap->pa;
        free(ap);
        one_done(pa);
    }
}

/* The partition short of in-sync copies when the Apply came has them now (a new follower
 * caught up), or the wait ended without: applied then, or refused as before the wait. */
static void apply_writable(void *ud, bool writable)
{
    struct apply_part *ap = ud;
    bool alive = membership_alive(ap->svc->mem); /* held: the session may have ended since */
    if (writable && alive) {
        apply_start(ap, NULL);
        return;
    }
    ap->r->code = GRPC_STATUS_UNAVAILABLE;
    ap->r->message = alive ? (char *)NOT_REPLICATED
                           : "etcd session may have expired: not acknowledging writes";
    struct pending_apply *pa = ap->pa;
    free(ap);
    one_done(pa);
}

static void handle_apply(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, false))
        return;
    const Eddy__State__V1__ApplyRequest *req = (const Eddy__State__V1__ApplyRequest *)msg;
    size_t n = req->n_partitions;
    struct pending_apply *pa = calloc(1, sizeof(*pa));
    if (!pa || !(pa->results = calloc(n ? n : 1, sizeof(*pa->results))) ||
        !(pa->rp = calloc(n ? n : 1, sizeof(*pa->rp))) ||
        !(pa->hints = calloc(n ? n : 1, sizeof(*pa->hints)))) {
        if (pa) {
            free(pa->results);
            free(pa->rp);
            free(pa);
        }
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    pa->call = c;
    pthread_mutex_init(&pa->mu, NULL);
    eddy__state__v1__apply_response__init(&pa->resp);
    pa->resp.results = pa->rp;
    pa->resp.n_results = n;
    pa->left = n + 1; /* +1: this handler, so the reply waits for the loop to finish */
    bool alive = membership_alive(svc->mem);
    struct engine_batch batch = ENGINE_BATCH_INIT;
    for (size_t i = 0; i < n; i++) {
        const Eddy__State__V1__PartitionEvents *pe = req->partitions[i];
        Eddy__State__V1__PartitionResult *r = &pa->results[i];
        eddy__state__v1__partition_result__init(r);
        pa->rp[i] = r;
        r->partition = pe->partition;
        uint64_t epoch = 0;
        if (!alive) {
            r->code = GRPC_STATUS_UNAVAILABLE;
            r->message = "etcd session may have expired: not acknowledging writes";
            one_done(pa);
            continue;
        }
        if (pe->partition >= membership_partitions(svc->mem) ||
            !membership_owns(svc->mem, pe->partition, &epoch) || epoch != pe->epoch) {
            r->code = GRPC_STATUS_FAILED_PRECONDITION;
            r->message = "not owner of the partition at this epoch";
            char addr[CLUSTER_ADDR_MAX];
            uint64_t cur;
            if (pe->partition < membership_partitions(svc->mem)) {
                membership_owner(svc->mem, pe->partition, pa->hints[i], &cur, addr);
                r->owner_hint = pa->hints[i]; /* who owns it, as far as this node knows */
            }
            one_done(pa);
            continue;
        }
        if (!ready_at(svc, pe->partition, epoch)) {
            r->code = GRPC_STATUS_UNAVAILABLE;
            r->message = "partition being taken over (restored from a checkpoint): retry";
            one_done(pa);
            continue;
        }
        /* every event must belong to the partition it is fenced under: the engine files
         * each event under its own user's partition, so a stray one would be written to a
         * partition this node may not own, unfenced */
        size_t stray = pe->n_events;
        for (size_t k = 0; k < pe->n_events && stray == pe->n_events; k++) {
            if (partition_of_user(pe->events[k]->user_id, membership_partitions(svc->mem)) !=
                pe->partition)
                stray = k;
        }
        if (stray < pe->n_events) {
            r->code = GRPC_STATUS_INVALID_ARGUMENT;
            r->message = "an event's user is not in this partition: nothing applied";
            one_done(pa);
            continue;
        }
        struct apply_part *ap = malloc(sizeof(*ap));
        if (!ap) {
            r->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            r->message = "out of memory";
            one_done(pa);
            continue;
        }
        *ap = (struct apply_part){svc, pa, r, pe};
        /* short of in-sync copies (a new follower catching up after a failover): held up
         * to --replica-writable-wait and applied the moment it joins, not refused for the
         * router to retry a round later */
        if (!svc->repl || replica_writable(svc->repl, pe->partition))
            apply_start(ap, &batch);
        else if (replica_when_writable(svc->repl, pe->partition, apply_writable, ap) != EDDY_OK)
            apply_writable(ap, replica_writable(svc->repl, pe->partition));
    }
    engine_submit(svc->eng, &batch); /* one writer group for all of them */
    one_done(pa);
}

/* ---- Forward ------------------------------------------------------------------------- */

/* A Forward in the engine: the call and the partitions refused (by the handler or when
 * the job ran). */
struct pending_forward {
    struct state_service *svc;
    rpc_call *call;
    const uint32_t *parts;
    uint8_t *refused;    /* [nparts] */
    uint32_t *list;      /* [nparts] the answer's refused partitions */
    size_t nparts;
    size_t applied;
    /* replicated: the STAGE2 records are on min-insync copies of each partition */
    struct forward_wait *waits; /* [nparts] */
    atomic_size_t pending;      /* replica_wait calls not answered, plus one */
};

struct forward_wait {
    struct pending_forward *pf;
    size_t i;
};

static void forward_free(struct pending_forward *pf)
{
    free(pf->refused);
    free(pf->list);
    free(pf->waits);
    free(pf);
}

static void forward_reply(struct pending_forward *pf)
{
    Eddy__State__V1__ForwardResponse r = EDDY__STATE__V1__FORWARD_RESPONSE__INIT;
    r.applied = (uint32_t)pf->applied;
    r.refused = pf->list;
    for (size_t i = 0; i < pf->nparts; i++)
        if (pf->refused[i])
            pf->list[r.n_refused++] = pf->parts[i];
    rpc_reply(pf->call, &r.base);
    forward_free(pf);
}

/* A partition's STAGE2 records on min-insync copies, or not: then it is answered refused
 * and the sender keeps its records for a later round (the marks drop what was applied). */
static void forward_replicated(void *ud, eddy_err err)
{
    struct forward_wait *w = ud;
    struct pending_forward *pf = w->pf;
    if (err != EDDY_OK)
        pf->refused[w->i] = 1;
    if (atomic_fetch_sub(&pf->pending, 1) == 1)
        forward_reply(pf);
}

static void forward_done(void *ud, eddy_err err, size_t applied)
{
    struct pending_forward *pf = ud;
    if (err != EDDY_OK) {
        rpc_reply_error(pf->call, eddy_err_to_grpc(err), "forward not applied: %s",
                        eddy_strerror(err));
        forward_free(pf);
        return;
    }
    pf->applied = applied;
    if (!pf->svc->repl || !pf->waits) {
        forward_reply(pf);
        return;
    }
    /* answered once each applied partition's log, as published now, is replicated: the
     * sender removes its OUTBOX records then, so they must not be lost with this node */
    atomic_store(&pf->pending, 1);
    for (size_t i = 0; i < pf->nparts; i++) {
        if (pf->refused[i])
            continue;
        struct engine_partition_view v;
        engine_partition(pf->svc->eng, pf->parts[i], &v);
        pf->waits[i] = (struct forward_wait){pf, i};
        atomic_fetch_add(&pf->pending, 1);
        if (replica_wait(pf->svc->repl, pf->parts[i], v.next_seq, forward_replicated,
                         &pf->waits[i]) != EDDY_OK)
            forward_replicated(&pf->waits[i], EDDY_ERR_NOMEM);
    }
    forward_replicated(&(struct forward_wait){pf, SIZE_MAX}, EDDY_OK);
}

static void handle_forward(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, false))
        return;
    const Eddy__State__V1__ForwardRequest *req = (const Eddy__State__V1__ForwardRequest *)msg;
    if (!membership_alive(svc->mem)) {
        rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE,
                        "etcd session may have expired: not acknowledging writes");
        return;
    }
    uint32_t P = membership_partitions(svc->mem);
    size_t n = req->n_partitions;
    struct pending_forward *pf = calloc(1, sizeof(*pf));
    if (pf) {
        pf->refused = calloc(n ? n : 1, 1);
        pf->list = calloc(n ? n : 1, sizeof(*pf->list));
        pf->waits = calloc(n ? n : 1, sizeof(*pf->waits));
    }
    if (!pf || !pf->refused || !pf->list || !pf->waits) {
        if (pf)
            forward_free(pf);
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    pf->svc = svc;
    pf->call = c;
    pf->parts = req->partitions;
    pf->nparts = n;
    /* the partitions the sender means: refused unless ours, taken over and not frozen by
     * a move or a rebuild (the writer checks again when it applies) */
    bool rebuilding = stage2_side_frozen(svc->s2);
    for (size_t i = 0; i < n; i++) {
        uint32_t q = req->partitions[i];
        uint64_t epoch;
        pf->refused[i] = q >= P || !membership_owns(svc->mem, q, &epoch) ||
                         !ready_at(svc, q, epoch) || frozen(svc, q) || rebuilding ||
                         (svc->repl && !replica_writable(svc->repl, q));
    }
    /* records for a partition still being taken over would be overwritten by its restore */
    for (size_t i = 0; i < req->n_batches && n == 0; i++) {
        const Eddy__Store__V1__Stage2Batch *b = req->batches[i];
        size_t total = product_records(b);
        for (size_t k = 0; k < total; k++) {
            const char *pid = product_record_key(b, k);
            uint32_t q = partition_of_product(pid, P);
            uint64_t epoch;
            if (membership_owns(svc->mem, q, &epoch) && !ready_at(svc, q, epoch)) {
                rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE,
                                "partition %u being taken over: retry", q);
                forward_free(pf);
                return;
            }
        }
    }
    eddy_err err = engine_forward_to(svc->eng, req->batches, req->n_batches,
                                     n ? req->partitions : NULL, pf->refused, n, forward_done,
                                     pf);
    if (err != EDDY_OK) {
        rpc_reply_error(c, eddy_err_to_grpc(err), "forward: %s", eddy_strerror(err));
        forward_free(pf);
    }
}

/* ---- User ------------------------------------------------------------------------------ */

/* The local backend's answer to a routed per-user request, as the State/User reply. */
static void user_done(void *ud, const struct backend_status *st, const ProtobufCMessage *resp)
{
    rpc_call *c = ud;
    if (st->code != GRPC_STATUS_OK)
        rpc_reply_error(c, st->code, "%s", st->message);
    else
        rpc_reply(c, resp);
}

/* A DeleteUser answered once its log record is on min-insync copies, like an Apply: the
 * answer waits, packed, for replica_wait. */
struct delete_wait {
    rpc_call *c;
    uint8_t *resp;    /* the packed UserResponse */
    size_t len;
};

static void delete_replicated(void *ud, eddy_err err)
{
    struct delete_wait *w = ud;
    Eddy__State__V1__UserResponse *r =
        err == EDDY_OK ? eddy__state__v1__user_response__unpack(NULL, w->len, w->resp) : NULL;
    if (r)
        rpc_reply(w->c, &r->base);
    else
        rpc_reply_error(w->c, GRPC_STATUS_UNAVAILABLE,
                        "user deleted on fewer copies than min-insync: retry (%s)",
                        eddy_strerror(err == EDDY_OK ? EDDY_ERR_NOMEM : err));
    eddy__state__v1__user_response__free_unpacked(r, NULL);
    free(w->resp);
    free(w);
}

struct user_call {
    struct state_service *svc;
    rpc_call *c;
    Eddy__State__V1__UserRequest *req; /* the call's; valid until it is answered */
    uint32_t partition;
    bool delete;
    bool from_follower;                /* a stale read answered from this follower's copy */
    Eddy__V1__ReadStaleness staleness; /* ... and how far behind its leader it was */
};

/* Point the read answer 'r' at 'st' (NULL: unset again). */
static void set_staleness(Eddy__State__V1__UserResponse *r, Eddy__V1__ReadStaleness *st)
{
    switch (r->response_case) {
    case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_RECOMMEND:
        r->recommend->staleness = st;
        break;
    case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_PROFILE:
        r->profile->staleness = st;
        break;
    case EDDY__STATE__V1__USER_RESPONSE__RESPONSE_COUNTS:
        r->counts->staleness = st;
        break;
    default:
        break;
    }
}

/* Whether this node may answer a read of partition 'p' from its follower copy: the
 * request allows stale reads, names the partition's epoch in this node's map, this node
 * follows the partition there, and its copy is within --max-follower-lag-records/-ms of
 * the leader. If so *st says how far behind it is; if not 'why' says why. */
static bool follower_fresh(struct state_service *svc, uint32_t p, uint64_t epoch,
                           bool allow_stale, Eddy__V1__ReadStaleness *st, char *why,
                           size_t whylen)
{
    struct cluster_part cp;
    uint64_t lag = 0, age = 0;
    if (!allow_stale) {
        snprintf(why, whylen, "not owner of partition %u at epoch %llu", p,
                 (unsigned long long)epoch);
        return false;
    }
    if (!membership_part(svc->mem, p, &cp) || cp.epoch != epoch ||
        cluster_part_index(&cp, membership_self(svc->mem)) <= 0) {
        snprintf(why, whylen, "not a follower of partition %u at epoch %llu", p,
                 (unsigned long long)epoch);
        return false;
    }
    if (!svc->repl || !replica_follower_lag(svc->repl, p, &lag, &age)) {
        snprintf(why, whylen, "follower of partition %u has not heard from its leader yet", p);
        return false;
    }
    if (lag > svc->max_lag_records || age > svc->max_lag_ms) {
        snprintf(why, whylen,
                 "follower of partition %u too far behind for a stale read: %llu records, "
                 "%llu ms (limits %llu, %llu)",
                 p, (unsigned long long)lag, (unsigned long long)age,
                 (unsigned long long)svc->max_lag_records, (unsigned long long)svc->max_lag_ms);
        return false;
    }
    *st = (Eddy__V1__ReadStaleness)EDDY__V1__READ_STALENESS__INIT;
    st->from_follower = true;
    st->lag_records = lag;
    st->lag_ms = age;
    return true;
}

static void user_call_done(void *ud, const struct backend_status *st,
                           const ProtobufCMessage *resp);

/* A DeleteUser runs once the in-sync followers hold the partition's log as it is: the
 * delete erases the user's earlier records in place, and a follower that fetched them
 * only afterwards would get the erased form (not the events) and count them nowhere. */
static void delete_after_followers(void *ud, eddy_err err)
{
    struct user_call *u = ud;
    if (err != EDDY_OK) {
        rpc_reply_error(u->c, GRPC_STATUS_UNAVAILABLE,
                        "partition %u: followers not in sync before the delete: retry (%s)",
                        u->partition, eddy_strerror(err));
        free(u);
        return;
    }
    struct local_backend lb = {u->svc->eng, u->svc->q, u->svc->cks, u->svc->exps,
                              u->svc->click_window_ms, u->svc->purchase_window_ms,
                              u->req->epoch, false};
    local_backend_user(&lb, u->req, user_call_done, u);
}

static void user_call_done(void *ud, const struct backend_status *st,
                           const ProtobufCMessage *resp)
{
    struct user_call *u = ud;
    struct delete_wait *w = NULL;
    if (st->code == GRPC_STATUS_OK && u->from_follower) {
        /* 'resp' is borrowed for this callback: the staleness is set for the reply only */
        set_staleness((Eddy__State__V1__UserResponse *)resp, &u->staleness);
        user_done(u->c, st, resp);
        set_staleness((Eddy__State__V1__UserResponse *)resp, NULL);
        goto out;
    }
    if (st->code != GRPC_STATUS_OK || !u->delete || !u->svc->repl) {
        user_done(u->c, st, resp);
        goto out;
    }
    struct engine_partition_view v;
    engine_partition(u->svc->eng, u->partition, &v);
    w = calloc(1, sizeof(*w));
    size_t len = protobuf_c_message_get_packed_size(resp);
    if (!w || !(w->resp = malloc(len ? len : 1))) {
        rpc_reply_error(u->c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    w->c = u->c;
    w->len = protobuf_c_message_pack(resp, w->resp);
    /* the partition's whole log as published now: the DeleteUser record included */
    if (replica_wait(u->svc->repl, u->partition, v.next_seq, delete_replicated, w) == EDDY_OK)
        w = NULL; /* delete_replicated answers and frees it */
    else
        rpc_reply_error(u->c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
out:
    if (w)
        free(w->resp);
    free(w);
    free(u);
}

static void handle_user(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, false))
        return;
    Eddy__State__V1__UserRequest *req = (Eddy__State__V1__UserRequest *)msg;
    uint64_t epoch = 0;
    Eddy__V1__ReadStaleness staleness = EDDY__V1__READ_STALENESS__INIT;
    bool from_follower = false;
    if (!membership_owns(svc->mem, req->partition, &epoch) || epoch != req->epoch) {
        char why[256];
        bool stale = req->allow_stale &&
                     req->request_case != EDDY__STATE__V1__USER_REQUEST__REQUEST_DELETE_USER;
        if (!follower_fresh(svc, req->partition, req->epoch, stale, &staleness, why,
                            sizeof(why))) {
            rpc_reply_error(c, GRPC_STATUS_FAILED_PRECONDITION, "%s", why);
            return;
        }
        from_follower = true;
    } else if (!ready_at(svc, req->partition, epoch)) {
        rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE,
                        "partition %u being taken over (restored from a checkpoint): retry",
                        req->partition);
        return;
    }
    if (req->request_case == EDDY__STATE__V1__USER_REQUEST__REQUEST_DELETE_USER) {
        if (!membership_alive(svc->mem)) {
            rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "etcd session may have expired");
            return;
        }
        if (frozen(svc, req->partition)) { /* a move's target replays the log, not this */
            rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "partition %u is moving: retry",
                            req->partition);
            return;
        }
        if (svc->repl && !replica_writable(svc->repl, req->partition)) {
            rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE,
                            "partition %u has fewer in-sync copies than min-insync: retry",
                            req->partition);
            return;
        }
    }
    /* the same per-user code as a --dev node's; a delete answers from the engine's thread */
    struct user_call *u = calloc(1, sizeof(*u));
    if (!u) {
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    *u = (struct user_call){svc, c, req, req->partition,
                            req->request_case ==
                                EDDY__STATE__V1__USER_REQUEST__REQUEST_DELETE_USER,
                            from_follower, staleness};
    if (u->delete && svc->repl) {
        struct engine_partition_view v;
        engine_partition(svc->eng, req->partition, &v);
        if (replica_wait(svc->repl, req->partition, v.next_seq, delete_after_followers, u) !=
            EDDY_OK) {
            rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            free(u);
        }
        return;
    }
    struct local_backend lb = {svc->eng, svc->q, svc->cks, svc->exps, svc->click_window_ms,
                              svc->purchase_window_ms, req->epoch, from_follower};
    local_backend_user(&lb, req, user_call_done, u);
}

/* ---- Partial ---------------------------------------------------------------------------- */

/* Which partitions a Partial answers, for the query's owns(): bool[P]. */
static bool partial_answers(void *ud, uint32_t p)
{
    return ((const bool *)ud)[p];
}

/* Whether this node answers partition 'p' at 'epoch' in a Partial: it leads it there and
 * has taken it over, or (allow_stale) follows it there closely enough; *st is then the
 * follower's staleness (unset for the leader). */
static bool partial_can_answer(struct state_service *svc, uint32_t p, uint64_t epoch,
                               bool allow_stale, Eddy__V1__ReadStaleness *st, bool *from_follower)
{
    uint64_t own;
    char why[256];
    *from_follower = false;
    /* a partition still being taken over is not reported: the merging router then lacks
     * it and answers UNAVAILABLE (or asks another copy) instead of a partial sum */
    if (membership_owns(svc->mem, p, &own) && own == epoch)
        return ready_at(svc, p, own);
    *from_follower = follower_fresh(svc, p, epoch, allow_stale, st, why, sizeof(why));
    return *from_follower;
}

static void handle_partial(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, false))
        return;
    const Eddy__State__V1__PartialRequest *req = (const Eddy__State__V1__PartialRequest *)msg;
    uint32_t P = membership_partitions(svc->mem);
    Eddy__State__V1__PartialResponse r = EDDY__STATE__V1__PARTIAL_RESPONSE__INIT;
    Eddy__State__V1__PartitionProgress *pp = calloc(P, sizeof(*pp));
    Eddy__State__V1__PartitionProgress **ppp = calloc(P, sizeof(*ppp));
    Eddy__V1__ReadStaleness *stale = calloc(P, sizeof(*stale));
    bool *answer = calloc(P, sizeof(*answer));
    bool *from_follower = calloc(P, sizeof(*from_follower));
    uint32_t *refused = calloc(req->n_read ? req->n_read : 1, sizeof(*refused));
    Eddy__V1__TopProductsResponse *top = NULL;
    Eddy__V1__EventCountsResponse *counts = NULL;
    Eddy__V1__GetExperimentResponse *exp = NULL;
    struct query_ctx q = svc->q;
    eddy_err err = EDDY_ERR_NOMEM;
    if (!pp || !ppp || !stale || !answer || !from_follower || !refused)
        goto out;
    if (req->n_read == 0) {
        for (uint32_t p = 0; p < P; p++) {
            uint64_t epoch;
            answer[p] = membership_owns(svc->mem, p, &epoch) && ready_at(svc, p, epoch);
        }
    }
    for (size_t i = 0; i < req->n_read; i++) {
        uint32_t p = req->read[i]->partition;
        if (p >= P || answer[p] ||
            !partial_can_answer(svc, p, req->read[i]->epoch, req->allow_stale, &stale[p],
                                &from_follower[p]))
            refused[r.n_refused++] = p;
        else
            answer[p] = true;
    }
    /* Read-your-writes before the progress is read: the watermarks the router closes
     * windows with must be those of the state the query reads (after its barrier), not
     * older ones published before the apply caught up. */
    if ((err = engine_read_barrier(svc->eng, -1)) != EDDY_OK)
        goto out;
    q.barrier_passed = true;
    for (uint32_t p = 0; p < P; p++) {
        if (!answer[p])
            continue;
        struct engine_partition_view v;
        engine_partition(svc->eng, p, &v);
        Eddy__State__V1__PartitionProgress *x = &pp[r.n_partitions];
        eddy__state__v1__partition_progress__init(x);
        x->partition = p;
        x->has_events = v.watermark != WATERMARK_NONE;
        x->watermark = x->has_events ? v.watermark : 0;
        x->max_ts = v.max_ts == WATERMARK_NONE ? 0 : v.max_ts;
        x->late_events = v.late_events;
        x->staleness = from_follower[p] ? &stale[p] : NULL;
        ppp[r.n_partitions++] = x;
    }
    r.partitions = ppp;
    r.refused = refused;
    r.outbox = engine_outbox_depth(svc->eng);
    q.owns = partial_answers;
    q.owns_ud = answer;
    err = EDDY_OK;
    if (req->request_case == EDDY__STATE__V1__PARTIAL_REQUEST__REQUEST_TOP) {
        err = query_top_products_n(&q, req->top, SIZE_MAX, &top);
        if (err == EDDY_OK) {
            r.products = top->products;
            r.n_products = top->n_products;
        }
    } else if (req->request_case == EDDY__STATE__V1__PARTIAL_REQUEST__REQUEST_COUNTS) {
        err = query_event_counts(&q, req->counts, &counts);
        if (err == EDDY_OK) {
            r.windows = counts->windows;
            r.n_windows = counts->n_windows;
        }
    } else if (req->request_case == EDDY__STATE__V1__PARTIAL_REQUEST__REQUEST_EXPERIMENT) {
        err = query_experiment_stats(&q, req->experiment, &exp);
        if (err == EDDY_OK) {
            r.variants = exp->stats;
            r.n_variants = exp->n_stats;
        }
    }
out:
    if (err == EDDY_OK)
        rpc_reply(c, &r.base);
    else
        rpc_reply_error(c, eddy_err_to_grpc(err), "partial query: %s", eddy_strerror(err));
    free(pp);
    free(ppp);
    free(stale);
    free(answer);
    free(from_follower);
    free(refused);
    query_free_response(top ? &top->base : NULL);
    query_free_response(counts ? &counts->base : NULL);
    query_free_response(exp ? &exp->base : NULL);
}

/* ---- stage-2 reads ----------------------------------------------------------------------- */

/* Reply with 'items' (and their stored sums, a CategoryTop's, unless 'sums' is NULL). */
static eddy_err reply_scored(rpc_call *c, const struct scored_product *items,
                             const struct decay_sum *sums, size_t n, bool neighbours)
{
    Eddy__State__V1__ScoredProduct *sp = calloc(n ? n : 1, sizeof(*sp));
    Eddy__State__V1__ScoredProduct **spp = calloc(n ? n : 1, sizeof(*spp));
    Eddy__Store__V1__Decayed *d = sums ? calloc(n ? n : 1, sizeof(*d)) : NULL;
    if (!sp || !spp || (sums && !d)) {
        free(sp);
        free(spp);
        free(d);
        return EDDY_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        eddy__state__v1__scored_product__init(&sp[i]);
        sp[i].product_id = (char *)items[i].product_id;
        sp[i].category = (char *)items[i].category;
        sp[i].score = items[i].score;
        if (sums) {
            eddy__store__v1__decayed__init(&d[i]);
            d[i].bucket = sums[i].bucket;
            d[i].cur = sums[i].cur;
            d[i].prev = sums[i].prev;
            sp[i].popularity = &d[i];
        }
        spp[i] = &sp[i];
    }
    if (neighbours) {
        Eddy__State__V1__NeighboursResponse r = EDDY__STATE__V1__NEIGHBOURS_RESPONSE__INIT;
        r.items = spp;
        r.n_items = n;
        rpc_reply(c, &r.base);
    } else {
        Eddy__State__V1__CategoryTopResponse r = EDDY__STATE__V1__CATEGORY_TOP_RESPONSE__INIT;
        r.items = spp;
        r.n_items = n;
        rpc_reply(c, &r.base);
    }
    free(sp);
    free(spp);
    free(d);
    return EDDY_OK;
}

#define MAX_K 1000

static void handle_category_top(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, false))
        return;
    const Eddy__State__V1__CategoryTopRequest *req = (const Eddy__State__V1__CategoryTopRequest *)msg;
    size_t k = req->k && req->k < MAX_K ? req->k : MAX_K, n = 0;
    struct scored_product *items = calloc(k, sizeof(*items));
    struct decay_sum *sums = calloc(k, sizeof(*sums));
    /* read-your-writes across nodes: what this node acknowledged before is applied */
    eddy_err err = !items || !sums ? EDDY_ERR_NOMEM : engine_read_barrier(svc->eng, -1);
    if (err == EDDY_OK)
        err = stage2cache_top(svc->local, req->category, items, sums, k, &n);
    if (err == EDDY_OK)
        err = reply_scored(c, items, sums, n, false);
    if (err != EDDY_OK)
        rpc_reply_error(c, eddy_err_to_grpc(err), "category top: %s", eddy_strerror(err));
    free(items);
    free(sums);
}

static void handle_neighbours(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, false))
        return;
    const Eddy__State__V1__NeighboursRequest *req = (const Eddy__State__V1__NeighboursRequest *)msg;
    size_t k = req->k && req->k < MAX_K ? req->k : MAX_K, n = 0;
    struct scored_product *items = calloc(k, sizeof(*items));
    eddy_err err = !items ? EDDY_ERR_NOMEM : engine_read_barrier(svc->eng, -1);
    if (err == EDDY_OK)
        err = stage2cache_neighbours(svc->local, req->product_id, items, k, &n);
    if (err == EDDY_OK)
        err = reply_scored(c, items, NULL, n, true);
    if (err != EDDY_OK)
        rpc_reply_error(c, eddy_err_to_grpc(err), "neighbours: %s", eddy_strerror(err));
    free(items);
}

/* ---- a move's source: FetchCheckpoint, FetchLog ---------------------------------------- */

#define LOG_DEFAULT_RECORDS 1000u
#define LOG_MAX_RECORDS 10000u
#define LOG_MAX_BYTES (8u << 20)

static void freeze(struct state_service *svc, uint32_t p, uint64_t move_id)
{
    atomic_store(&svc->freeze_until[p], clock_mono_ms() + svc->freeze_ms);
    atomic_store(&svc->freeze_id[p], move_id);
}

struct fetch_ckpt {
    struct state_service *svc;
    rpc_call *call;
    uint32_t p;
    uint64_t epoch, move_id;
};

static void *fetch_ckpt_main(void *arg)
{
    thread_name("ckpt-send");
    struct fetch_ckpt *fc = arg;
    struct state_service *svc = fc->svc;
    uint64_t epoch = 0;
    grpc_status_code code = GRPC_STATUS_OK;
    const char *msg = NULL;
    if (!membership_owns(svc->mem, fc->p, &epoch) || epoch != fc->epoch) {
        rpc_stream_finish(fc->call, GRPC_STATUS_FAILED_PRECONDITION,
                          "not owner of the partition at this epoch");
        free(fc);
        return NULL;
    }
    /* Freeze first, then let every job that may have applied the partition's stage 2
     * locally commit: the snapshot below then holds all of it, and what follows is in
     * the log (the target replays it) or waits in OUTBOXes. */
    atomic_store(&svc->freeze_until[fc->p], INT64_MAX); /* held while this copy runs */
    atomic_store(&svc->freeze_id[fc->p], fc->move_id);
    int64_t t0 = clock_mono_ms();
    engine_flush(svc->eng);
    int64_t t1 = clock_mono_ms();
    struct checkpoint_info info;
    eddy_err err = ckptcopy_send(svc->eng, fc->p, fc->call, NULL, &info);
    int64_t t2 = clock_mono_ms();
    /* The freeze's time runs from when the target has the stream, not from when the last
     * chunk was queued here: a target a send queue behind (16 MiB, loading at a busy
     * writer's pace) lapsed 10 s later while still loading and copied again, forever
     * under heavy ingest. A target that stops reading for --move-freeze ends the wait. */
    if (err == EDDY_OK)
        ckptcopy_drain(fc->call, NULL, svc->freeze_ms);
    freeze(svc, fc->p, fc->move_id); /* now the target's FetchLog calls keep it */
    if (err != EDDY_OK) {
        code = eddy_err_to_grpc(err);
        msg = eddy_strerror(err);
        log_warn("msg=\"checkpoint for a move not sent\" partition=%u error=\"%s\"", fc->p, msg);
    } else {
        /* where the source's time went: the writer's queue before the snapshot, the
         * snapshot's scan and encoding at the stream's pace, the target taking the rest */
        log_info("msg=\"checkpoint sent for a move\" partition=%u seq=%" PRIu64 " bytes=%" PRIu64
                 " records=%" PRIu64 " flush_ms=%" PRId64 " stream_ms=%" PRId64
                 " drain_ms=%" PRId64,
                 fc->p, info.seq, info.bytes, info.records, t1 - t0, t2 - t1,
                 clock_mono_ms() - t2);
    }
    rpc_stream_finish(fc->call, code, msg);
    free(fc);
    return NULL;
}

/* Writing and streaming a checkpoint takes long: a thread of its own, not a handler's. */
static void handle_fetch_checkpoint(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, true))
        return;
    const Eddy__State__V1__FetchCheckpointRequest *req =
        (const Eddy__State__V1__FetchCheckpointRequest *)msg;
    if (req->partition >= membership_partitions(svc->mem) || req->move_id == 0) {
        rpc_stream_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "bad partition or move_id 0");
        return;
    }
    if (svc->rebuild_busy && svc->rebuild_busy(svc->rebuild_ud)) {
        rpc_stream_finish(c, GRPC_STATUS_UNAVAILABLE,
                          "a rebuild (eddy reprocess) runs on this node: copy later");
        return;
    }
    struct fetch_ckpt *fc = malloc(sizeof(*fc));
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (fc) {
        *fc = (struct fetch_ckpt){svc, c, req->partition, req->epoch, req->move_id};
        if (pthread_create(&t, &attr, fetch_ckpt_main, fc) != 0) {
            free(fc);
            fc = NULL;
        }
    }
    pthread_attr_destroy(&attr);
    if (!fc)
        rpc_stream_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "cannot start the checkpoint copy");
}

static void fence_done(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    (void)err; /* NOT_OWNER: a newer epoch is already recorded, which fences as well */
    (void)r;
    completion_signal(ud, EDDY_OK, 0);
}

/* Record 'epoch' as the partition's highest: every write queued before is committed when
 * this returns, every later one with an older epoch is refused by the engine. */
static eddy_err fence(struct state_service *svc, uint32_t p, uint64_t epoch)
{
    struct completion w;
    completion_init(&w);
    return completion_wait(&w, engine_apply(svc->eng, p, epoch, NULL, 0, fence_done, &w));
}

struct log_page {
    Eddy__State__V1__LogEntry *e;   /* [LOG_MAX_RECORDS] */
    Eddy__State__V1__LogEntry **ep;
    size_t n, max, bytes;
    uint64_t last;
};

static int collect_log(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct log_page *lp = ud;
    size_t off = 3; /* partition u16, table byte */
    uint64_t seq;
    if (lp->n == lp->max || (lp->n > 0 && lp->bytes + vlen > LOG_MAX_BYTES))
        return 1;
    if (!key_get_u64(k, klen, &off, &seq))
        return 0;
    Eddy__State__V1__LogEntry *e = &lp->e[lp->n];
    eddy__state__v1__log_entry__init(e);
    e->seq = seq;
    e->record.data = malloc(vlen ? vlen : 1);
    if (!e->record.data)
        return 1;
    memcpy(e->record.data, v, vlen);
    e->record.len = vlen;
    lp->ep[lp->n++] = e;
    lp->bytes += vlen;
    lp->last = seq;
    return 0;
}

static void handle_fetch_log(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct state_service *svc = ud;
    if (not_joined(svc, c, false))
        return;
    const Eddy__State__V1__FetchLogRequest *req = (const Eddy__State__V1__FetchLogRequest *)msg;
    uint32_t p = req->partition;
    uint64_t epoch;
    if (p >= membership_partitions(svc->mem)) {
        rpc_reply_error(c, GRPC_STATUS_INVALID_ARGUMENT, "partition %u out of range", p);
        return;
    }
    if (req->fence_epoch) {
        eddy_err err = fence(svc, p, req->fence_epoch);
        if (err != EDDY_OK) {
            rpc_reply_error(c, eddy_err_to_grpc(err), "fence: %s", eddy_strerror(err));
            return;
        }
    } else if (!membership_owns(svc->mem, p, &epoch)) {
        rpc_reply_error(c, GRPC_STATUS_FAILED_PRECONDITION, "not owner of partition %u", p);
        return;
    } else if (atomic_load(&svc->freeze_id[p]) != req->move_id || !frozen(svc, p)) {
        rpc_reply_error(c, GRPC_STATUS_ABORTED,
                        "the move's freeze of partition %u lapsed: copy it again", p);
        return;
    } else {
        freeze(svc, p, req->move_id);
    }
    /* everything below the published next seq is committed: read up to it */
    struct engine_partition_view v;
    engine_partition(svc->eng, p, &v);
    size_t max = req->max_records ? req->max_records : LOG_DEFAULT_RECORDS;
    if (max > LOG_MAX_RECORDS)
        max = LOG_MAX_RECORDS;
    struct log_page lp = {calloc(max, sizeof(*lp.e)), calloc(max, sizeof(*lp.ep)), 0, max, 0, 0};
    Eddy__State__V1__FetchLogResponse r = EDDY__STATE__V1__FETCH_LOG_RESPONSE__INIT;
    if (!lp.e || !lp.ep) {
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if (req->from_seq < v.next_seq) {
        struct store_key start, end;
        key_init(&start, p, T_LOG);
        key_u64(&start, req->from_seq);
        key_init(&end, p, T_LOG);
        key_u64(&end, v.next_seq);
        store_scan(engine_store(svc->eng), &start, &end, collect_log, &lp);
    }
    r.entries = lp.ep;
    r.n_entries = lp.n;
    r.head_seq = v.next_seq;
    /* a full page: continue after it; otherwise everything up to the head was read */
    bool full = lp.n == lp.max || (lp.n > 0 && lp.bytes >= LOG_MAX_BYTES / 2);
    r.next_seq = full ? lp.last + 1 : (req->from_seq > v.next_seq ? req->from_seq : v.next_seq);
    rpc_reply(c, &r.base);
out:
    for (size_t i = 0; i < lp.n; i++)
        free(lp.e[i].record.data);
    free(lp.e);
    free(lp.ep);
}

eddy_err state_service_register(struct state_service *svc, rpc_server *s)
{
    static const struct {
        const char *path;
        const ProtobufCMessageDescriptor *desc;
        rpc_handler_fn *fn;
        int lane; /* see rpc_server.h "Lanes": only call methods of a higher lane */
    } methods[] = {
        {"/eddy.state.v1.State/Apply", &eddy__state__v1__apply_request__descriptor, handle_apply,
         STATE_LANE_LEAF},
        {"/eddy.state.v1.State/Forward", &eddy__state__v1__forward_request__descriptor,
         handle_forward, STATE_LANE_LEAF},
        /* a Recommend here calls CategoryTop/Neighbours on every node, this one included */
        {"/eddy.state.v1.State/User", &eddy__state__v1__user_request__descriptor, handle_user,
         STATE_LANE_USER},
        {"/eddy.state.v1.State/Partial", &eddy__state__v1__partial_request__descriptor,
         handle_partial, STATE_LANE_LEAF},
        {"/eddy.state.v1.State/CategoryTop", &eddy__state__v1__category_top_request__descriptor,
         handle_category_top, STATE_LANE_LEAF},
        {"/eddy.state.v1.State/Neighbours", &eddy__state__v1__neighbours_request__descriptor,
         handle_neighbours, STATE_LANE_LEAF},
        /* the fence waits for the writer, nothing else */
        {"/eddy.state.v1.State/FetchLog", &eddy__state__v1__fetch_log_request__descriptor,
         handle_fetch_log, STATE_LANE_LEAF},
    };
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        eddy_err err = rpc_server_add_unary_lane(s, methods[i].path, methods[i].desc,
                                                 methods[i].fn, svc, methods[i].lane);
        if (err != EDDY_OK)
            return err;
    }
    /* its handler only starts the thread that writes and streams the checkpoint */
    return rpc_server_add_stream(s, "/eddy.state.v1.State/FetchCheckpoint",
                                 &eddy__state__v1__fetch_checkpoint_request__descriptor,
                                 handle_fetch_checkpoint, NULL, svc);
}
