/* Live partition moves, node side (see mover.h). */
#include "node/cluster/mover.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/completion.h"
#include "common/etcd.h"
#include "common/log.h"
#include "common/testhook.h"
#include "common/worker.h"
#include "eddy/v1/state.pb-c.h"
#include "node/cluster/ckptcopy.h"
#include "node/state/checkpoint.h"

#define RETRY_MS 500        /* pause after a failed step */
#define TAIL_PAUSE_MS 20    /* between FetchLog calls when caught up */
/* Records per FetchLog page (the source caps it at 10,000 and 8 MiB). The source's default
 * of 1,000 made the tail one round trip and one writer job per 1,000 records, slower than
 * the ingest it follows on a busy machine; larger pages hold the writer longer per job. */
#define TAIL_PAGE_RECORDS 4000

/* The move record of one partition as last seen by the watch. */
struct rec {
    bool present;
    struct cluster_move m;
    int64_t mod;            /* its mod_revision, for compare-and-swap */
};

struct mover {
    struct mover_opts o;
    char prefix[CLUSTER_KEY_MAX];
    uint32_t nparts;
    struct worker worker;   /* the mover thread; kicked when a record changes */
    pthread_mutex_t mu;     /* guards the two arrays below */
    struct rec *recs;       /* [nparts] */
    bool *drop;             /* [nparts]: moved away and done: delete the local copy */
    etcd_watch *w;
    int64_t ready_pause_ms; /* EDDY_TEST_PAUSE_AT=move-ready:MS (pause_once); 0: none */
};

/* --- the records ------------------------------------------------------------------------- */

static bool parse_partition(const mover *mv, const char *key, uint32_t *p)
{
    return cluster_key_partition(key, mv->prefix, mv->nparts, p);
}

/* Take one record (under mu). */
static void put_rec(mover *mv, const struct etcd_kv *kv)
{
    uint32_t p;
    struct cluster_move m;
    if (!parse_partition(mv, kv->key, &p))
        return;
    if (cluster_move_from_json(kv->value, kv->value_len, &m) != EDDY_OK || m.partition != p) {
        log_warn("msg=\"move record does not decode; ignored\" key=%s", kv->key);
        return;
    }
    const char *self = membership_self(mv->o.mem);
    mv->recs[p] = (struct rec){true, m, kv->mod_revision};
    if (strcmp(m.to, self) == 0 && m.phase != MOVE_DONE)
        atomic_store(&mv->o.ss->incoming[p], 1);
    if (strcmp(m.from, self) == 0 && m.phase == MOVE_DONE)
        mv->drop[p] = true;
}

static eddy_err load_all(mover *mv, int64_t *rev)
{
    struct etcd_kvs kvs;
    eddy_err err = etcd_range_prefix(membership_etcd(mv->o.mem), mv->prefix, &kvs, rev);
    if (err != EDDY_OK)
        return err;
    pthread_mutex_lock(&mv->mu);
    for (uint32_t p = 0; p < mv->nparts; p++)
        mv->recs[p].present = false;
    for (size_t i = 0; i < kvs.n; i++)
        put_rec(mv, &kvs.kvs[i]);
    pthread_mutex_unlock(&mv->mu);
    worker_kick(&mv->worker);
    etcd_kvs_release(&kvs);
    return EDDY_OK;
}

static int64_t on_move(const struct etcd_event *ev, void *ud)
{
    mover *mv = ud;
    if (ev->type == ETCD_EVENT_RESYNC) {
        int64_t rev = 0;
        while (load_all(mv, &rev) != EDDY_OK) {
            if (worker_stopping(&mv->worker))
                return 0;
            usleep(RETRY_MS * 1000);
        }
        return rev + 1;
    }
    pthread_mutex_lock(&mv->mu);
    uint32_t p;
    if (ev->type == ETCD_EVENT_PUT)
        put_rec(mv, &ev->kv);
    else if (parse_partition(mv, ev->kv.key, &p))
        mv->recs[p].present = false;
    pthread_mutex_unlock(&mv->mu);
    worker_kick(&mv->worker);
    return 0;
}

/* The record of partition p now (false: none). */
static bool rec_of(mover *mv, uint32_t p, struct rec *out)
{
    pthread_mutex_lock(&mv->mu);
    *out = mv->recs[p];
    pthread_mutex_unlock(&mv->mu);
    return out->present;
}

static bool stopping(mover *mv)
{
    return worker_stopping(&mv->worker);
}

/* Sleep up to 'ms', waking for stop and for record changes. */
static void nap(mover *mv, int64_t ms)
{
    worker_wait(&mv->worker, ms);
}

/* Advance the record's phase from what 'r' saw to 'phase' (compare-and-swap on its
 * mod_revision: a record changed meanwhile is left alone). */
static bool set_phase(mover *mv, const struct rec *r, enum move_phase phase)
{
    struct cluster_move m = r->m;
    m.phase = phase;
    char *json = cluster_move_to_json(&m);
    char suffix[32], key[CLUSTER_KEY_MAX];
    snprintf(suffix, sizeof(suffix), "moves/%" PRIu32, m.partition);
    cluster_key(key, sizeof(key), mv->o.cluster, suffix);
    bool ok = false;
    struct etcd_kv cur = {0};
    if (json && etcd_txn_cas(membership_etcd(mv->o.mem), key, r->mod, json, strlen(json), 0,
                             &ok, &cur) != EDDY_OK)
        ok = false;
    etcd_kv_release(&cur);
    free(json);
    if (ok)
        log_info("msg=\"move phase\" partition=%" PRIu32 " from=%s to=%s phase=%s", m.partition,
                 m.from, m.to, cluster_move_phase_name(phase));
    return ok;
}

/* --- engine calls, waited for ------------------------------------------------------------ */

static void replayed(void *ud, eddy_err err, uint64_t next_seq)
{
    completion_signal(ud, err, next_seq);
}

static void drop_copy(mover *mv, uint32_t p, const char *why);

/* --- what this node's copy is ------------------------------------------------------------- */

/* Whether partition p's in-sync record (isr/<p>, any epoch: the failover rule's) names
 * this node's copy, in its set or in the set its leader was promoted from: then a failover
 * may promote this copy as holding every acknowledged event. An etcd error counts as
 * named (kept, asked again later). */
static bool isr_names_self(mover *mv, uint32_t p)
{
    char suffix[32], key[CLUSTER_KEY_MAX];
    snprintf(suffix, sizeof(suffix), "isr/%" PRIu32, p);
    cluster_key(key, sizeof(key), mv->o.cluster, suffix);
    struct etcd_kv kv = {0};
    bool found = false, named = true;
    struct cluster_isr rec;
    if (etcd_get(membership_etcd(mv->o.mem), key, &kv, &found) == EDDY_OK)
        named = found && cluster_isr_from_json(kv.value, kv.value_len, &rec) == EDDY_OK &&
                cluster_isr_holds(&rec, membership_self(mv->o.mem));
    etcd_kv_release(&kv);
    return named;
}

/* Whether the map lists this node as a follower of the move's partition at the move's
 * epoch (a leader moving to its own follower): its copy is the replicated log's. */
static bool follows_here(mover *mv, const struct cluster_move *m)
{
    struct cluster_part cp;
    const char *self = membership_self(mv->o.mem);
    return mv->o.rep && membership_part(mv->o.mem, m->partition, &cp) &&
           cp.epoch == m->epoch && strcmp(cp.owner, self) != 0 && cluster_part_has(&cp, self);
}

/* --- the copy ----------------------------------------------------------------------------- */

static rpc_channel *source_channel(mover *mv, const char *id)
{
    char addr[CLUSTER_ADDR_MAX];
    return membership_addr(mv->o.mem, id, addr) ? peers_get(mv->o.peers, addr) : NULL;
}

/* Stream the source's fresh checkpoint of p into this node's store; *next_seq is the
 * partition's next seq after the load. */
static eddy_err copy_checkpoint(mover *mv, const struct cluster_move *m, uint64_t move_id,
                                uint64_t *next_seq)
{
    rpc_channel *ch = source_channel(mv, m->from);
    if (!ch)
        return EDDY_ERR_UNAVAILABLE;
    uint32_t p = m->partition;
    char what[64];
    snprintf(what, sizeof(what), "move-p%" PRIu32 "-from-%.32s", p, m->from);
    Eddy__State__V1__FetchCheckpointRequest req = EDDY__STATE__V1__FETCH_CHECKPOINT_REQUEST__INIT;
    req.partition = p;
    req.epoch = m->epoch;
    req.move_id = move_id;
    struct ckptcopy_stats st;
    if (!engine_claim_partition(mv->o.eng, p)) /* the replicated log's copy: it ends soon */
        return EDDY_ERR_UNAVAILABLE;
    eddy_err err = ckptcopy_receive(mv->o.eng, p, ch, "/eddy.state.v1.State/FetchCheckpoint",
                                    &req.base, mv->o.copy_timeout_ms, what, &st, next_seq);
    engine_release_partition(mv->o.eng, p);
    if (st.code != GRPC_STATUS_OK)
        log_warn("msg=\"FetchCheckpoint failed\" partition=%" PRIu32 " from=%s code=%d "
                 "details=\"%s\"",
                 p, m->from, (int)st.code, st.details);
    if (err == EDDY_OK) {
        /* where the copy's time went: receiving and checking the stream, while the
         * batches' LevelDB writes (write_ms) run beside it; the receiver's waits for them
         * (wait_ms), the final sync, the engine taking the partition (take_ms) */
        log_info("msg=\"move: checkpoint loaded\" partition=%" PRIu32 " from=%s seq=%" PRIu64
                 " records=%" PRIu64 " bytes=%" PRIu64 " copy_ms=%" PRId64 " write_ms=%" PRId64
                 " wait_ms=%" PRId64 " batches=%" PRIu64 " sync_ms=%" PRId64 " take_ms=%" PRId64,
                 p, m->from, st.info.seq, st.info.records, st.info.bytes, st.total_ns / 1000000,
                 st.write_ns / 1000000, st.wait_ns / 1000000, st.batches, st.sync_ns / 1000000,
                 st.take_ns / 1000000);
    } else if (err != EDDY_ERR_NOMEM) {
        drop_copy(mv, p, "incomplete checkpoint copy"); /* a partial copy is never kept */
    }
    return err;
}

/* One FetchLog (fence_epoch 0: a tail while the source serves) applied here. *next_seq is
 * where to go on; *lag how far behind the source's head. */
static eddy_err tail_once(mover *mv, const struct cluster_move *m, uint64_t move_id,
                          uint64_t fence_epoch, uint64_t *next_seq, uint64_t *lag, size_t *got)
{
    rpc_channel *ch = source_channel(mv, m->from);
    if (!ch)
        return EDDY_ERR_UNAVAILABLE;
    Eddy__State__V1__FetchLogRequest req = EDDY__STATE__V1__FETCH_LOG_REQUEST__INIT;
    req.partition = m->partition;
    req.from_seq = *next_seq;
    req.move_id = move_id;
    req.fence_epoch = fence_epoch;
    req.max_records = TAIL_PAGE_RECORDS;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_invoke(ch, "/eddy.state.v1.State/FetchLog", &req.base,
               &eddy__state__v1__fetch_log_response__descriptor, mv->o.rpc_timeout_ms, &resp,
               &res);
    if (res.code != GRPC_STATUS_OK) {
        log_warn("msg=\"FetchLog failed\" partition=%" PRIu32 " from=%s code=%d details=\"%s\"",
                 m->partition, m->from, (int)res.code, res.details);
        return res.code == GRPC_STATUS_ABORTED || res.code == GRPC_STATUS_FAILED_PRECONDITION
                   ? EDDY_ERR_CONFLICT /* copy again */
                   : EDDY_ERR_UNAVAILABLE;
    }
    const Eddy__State__V1__FetchLogResponse *r = (const Eddy__State__V1__FetchLogResponse *)resp;
    eddy_err err = EDDY_OK;
    struct engine_log_entry *le = calloc(r->n_entries ? r->n_entries : 1, sizeof(*le));
    if (!le)
        err = EDDY_ERR_NOMEM;
    for (size_t i = 0; le && i < r->n_entries; i++)
        le[i] = (struct engine_log_entry){r->entries[i]->seq, r->entries[i]->record.data,
                                          r->entries[i]->record.len};
    if (err == EDDY_OK && r->n_entries > 0 && !engine_claim_partition(mv->o.eng, m->partition))
        err = EDDY_ERR_UNAVAILABLE; /* the replicated log writes it: tail again later */
    else if (err == EDDY_OK && r->n_entries > 0) {
        struct completion w;
        completion_init(&w);
        err = completion_wait(
            &w, engine_replay(mv->o.eng, m->partition, le, r->n_entries, replayed, &w));
        engine_release_partition(mv->o.eng, m->partition);
    }
    if (err == EDDY_OK) {
        *next_seq = r->next_seq > *next_seq ? r->next_seq : *next_seq;
        *lag = r->head_seq > *next_seq ? r->head_seq - *next_seq : 0;
        *got = r->n_entries;
    }
    free(le);
    protobuf_c_message_free_unpacked(resp, NULL);
    return err;
}

static bool flipped_here(mover *mv, const struct cluster_move *m)
{
    uint64_t epoch;
    return membership_owns(mv->o.mem, m->partition, &epoch) && epoch == m->epoch + 1;
}

/* Whether 'r' still describes the move 'm' (the same source, target and epoch). */
static bool same_move(const struct rec *r, const struct cluster_move *m)
{
    return r->present && r->m.epoch == m->epoch && strcmp(r->m.from, m->from) == 0 &&
           strcmp(r->m.to, m->to) == 0;
}

/* Drop a partition this node holds no copy of in the map (a cancelled copy, or a
 * moved-away original). With R > 1 the source of a move usually stays a follower of the
 * partition: its copy is the replicated log's, and dropping it under the replica module
 * would leave an empty store that fetches on from the old position. */
static void drop_copy(mover *mv, uint32_t p, const char *why)
{
    uint64_t epoch, deleted = 0;
    struct cluster_part cp;
    if (membership_owns(mv->o.mem, p, &epoch) ||
        (membership_part(mv->o.mem, p, &cp) && cluster_part_has(&cp, membership_self(mv->o.mem))))
        return;
    /* a copy the in-sync record names is one a failover may promote (a returning holder
     * before the map naming it arrives, a move's target that was the source's follower):
     * kept until a record no longer names it */
    if (isr_names_self(mv, p)) {
        log_info("msg=\"partition copy kept: the in-sync record names it\" partition=%" PRIu32
                 " why=\"%s\"",
                 p, why);
        return;
    }
    eddy_err err = engine_drop_partition(mv->o.eng, p, &deleted);
    log_info("msg=\"partition copy deleted\" partition=%" PRIu32 " why=\"%s\" keys=%" PRIu64
             " error=\"%s\"",
             p, why, deleted, eddy_strerror(err));
}

/* Whether a move into this node is over before its next step: then *res is what the
 * phase returns (EDDY_OK: flipped here; EDDY_ERR_NOT_FOUND: the move is gone or changed;
 * EDDY_ERR_UNAVAILABLE: stopping); otherwise *r is its record now. */
static bool move_over(mover *mv, const struct cluster_move *m, struct rec *r, eddy_err *res)
{
    if (stopping(mv))
        *res = EDDY_ERR_UNAVAILABLE;
    else if (flipped_here(mv, m))
        *res = EDDY_OK;
    else if (!rec_of(mv, m->partition, r) || !same_move(r, m))
        *res = EDDY_ERR_NOT_FOUND;
    else
        return false;
    return true;
}

/* A target that follows the partition (follows_here) until the flip: the replicated log
 * brings its copy up to the source's; the record goes "ready" once within --move-lag
 * records of the source's log end as the source last answered. Results as copy_phase;
 * EDDY_ERR_UNAVAILABLE when the map stops listing this node (decided again). */
static eddy_err follow_phase(mover *mv, const struct cluster_move *m)
{
    for (;;) {
        struct rec r;
        eddy_err res;
        if (move_over(mv, m, &r, &res))
            return res;
        if (!follows_here(mv, m))
            return EDDY_ERR_UNAVAILABLE;
        uint64_t version = membership_version(mv->o.mem), lag = 0, lag_ms = 0;
        if (r.m.phase == MOVE_COPY &&
            replica_follower_lag(mv->o.rep, m->partition, &lag, &lag_ms) &&
            lag <= (uint64_t)mv->o.lag_records)
            set_phase(mv, &r, MOVE_READY);
        membership_wait_change(mv->o.mem, version, TAIL_PAUSE_MS);
    }
}

/* Test hook (EDDY_TEST_PAUSE_AT=move-ready:MS): the first move in stops tailing for MS once
 * it has written "ready", so that the source acknowledges events the copy lacks until the
 * flip, and this node's forwarder runs after the flip, before the final tail
 * (integration.moves, LostEventAfterFlipTest). A stop ends the pause. */
static void pause_once(mover *mv, uint32_t p)
{
    if (mv->ready_pause_ms == 0)
        return;
    log_warn("msg=\"EDDY_TEST_PAUSE_AT: pausing\" phase=move-ready partition=%" PRIu32
             " ms=%" PRId64, p, mv->ready_pause_ms);
    int64_t until = clock_mono_ms() + mv->ready_pause_ms;
    mv->ready_pause_ms = 0;
    /* record changes (the flip) wake a nap: nap again until the time is up */
    for (int64_t left; !stopping(mv) && (left = until - clock_mono_ms()) > 0;)
        nap(mv, left);
}

/* Copy and tail until the flip. EDDY_OK: flipped here; EDDY_ERR_CANCELLED-like results:
 * EDDY_ERR_NOT_FOUND (the move is gone or changed), anything else: try again. A target
 * the map lists as a follower copies nothing (follow_phase). One it does not list starts
 * by deleting its copy (ckptcopy_receive), even one a stale in-sync record names: while
 * the map lists a leader alone, nobody rewrites its record, so the record cannot tell a
 * live in-sync follower from a node that left; the planner keeps a target that is a
 * replica listed (coordinator/planner.c set_replicas). */
static eddy_err copy_phase(mover *mv, const struct cluster_move *m, uint64_t *next_seq)
{
    struct rec r;
    eddy_err err;
    /* first: an attempt after a failed one must not copy again for a move that went
     * meanwhile (cancelled when its source died: the source that came back refuses the
     * copy, not the owner of the partition any more, for ever) */
    if (move_over(mv, m, &r, &err))
        return err;
    if (follows_here(mv, m))
        return follow_phase(mv, m);
    uint64_t move_id = ((uint64_t)clock_mono_ns() << 8) | (m->partition & 0xff) | 1;
    if ((err = copy_checkpoint(mv, m, move_id, next_seq)) != EDDY_OK)
        return err;
    int64_t t0 = clock_mono_ms();
    uint64_t rounds = 0, records = 0;
    for (;;) {
        if (move_over(mv, m, &r, &err))
            return err;
        uint64_t lag = 0, version = membership_version(mv->o.mem);
        size_t got = 0;
        if ((err = tail_once(mv, m, move_id, 0, next_seq, &lag, &got)) != EDDY_OK)
            return err;
        rounds++;
        records += got;
        if (r.m.phase == MOVE_COPY && lag <= (uint64_t)mv->o.lag_records &&
            set_phase(mv, &r, MOVE_READY)) {
            log_info("msg=\"move: caught up\" partition=%" PRIu32 " from=%s tail_ms=%" PRId64
                     " rounds=%" PRIu64 " records=%" PRIu64 " lag=%" PRIu64,
                     m->partition, m->from, clock_mono_ms() - t0, rounds, records, lag);
            pause_once(mv, m->partition);
        }
        if (lag == 0 && got == 0) /* caught up: wait a little, or for the flip */
            membership_wait_change(mv->o.mem, version, TAIL_PAUSE_MS);
    }
}

static void restored(void *ud, eddy_err err, uint32_t p, uint64_t next_seq)
{
    (void)p;
    completion_signal(ud, err, next_seq);
}

/* Load the newest valid checkpoint of p in the shared directory if it is ahead of 'seq'. */
static bool restore_newer(mover *mv, uint32_t p, uint64_t seq)
{
    struct checkpoint_info info;
    const char *dir = mv->o.ss->checkpoint_dir;
    if (!dir || checkpoint_latest_valid(engine_options(mv->o.eng)->checkpoint_key, dir, p, &info) != EDDY_OK || info.seq <= seq)
        return false;
    struct completion w;
    completion_init(&w);
    return completion_wait(&w, engine_restore(mv->o.eng, p, info.path, restored, &w)) == EDDY_OK;
}

/* After the flip: the final tail (fenced), then serve. Returns the write pause in ms. */
static int64_t final_phase(mover *mv, const struct cluster_move *m)
{
    int64_t t0 = clock_mono_ms();
    struct engine_partition_view v;
    engine_partition(mv->o.eng, m->partition, &v);
    uint64_t next = v.next_seq;
    for (;;) {
        uint64_t lag = 0;
        size_t got = 0;
        eddy_err err = tail_once(mv, m, 0, m->epoch + 1, &next, &lag, &got);
        /* the source answered after its fence: nothing older can follow, so reaching its
         * head ends the tail (one round trip, not two) */
        if (err == EDDY_OK && lag == 0)
            break;
        if (err == EDDY_OK)
            continue;
        if (stopping(mv))
            return -1;
        /* Give up once the source has left the cluster (a graceful stop deregisters after
         * its last checkpoints, which include this partition) and --move-final-wait has
         * passed, or after four times that in any case (a source that is registered but
         * cannot be reached). */
        char addr[CLUSTER_ADDR_MAX];
        int64_t waited = clock_mono_ms() - t0;
        if ((waited > mv->o.final_wait_ms && !membership_addr(mv->o.mem, m->from, addr)) ||
            waited > 4 * mv->o.final_wait_ms) {
            /* the source is gone. A source that stopped gracefully wrote a last checkpoint
             * into the shared directory: it holds everything it acknowledged. Otherwise
             * what it acknowledged after our last tail is lost (one replica, docs/design.md
             * §7): serving what we have beats not serving. */
            if (restore_newer(mv, m->partition, next)) {
                log_warn("msg=\"move: final tail unavailable; restored the source's newer "
                         "checkpoint instead\" partition=%" PRIu32 " from=%s",
                         m->partition, m->from);
            } else {
                log_error("msg=\"move: final tail unavailable; serving without it\" "
                          "partition=%" PRIu32 " from=%s next_seq=%" PRIu64,
                          m->partition, m->from, next);
            }
            metric_counter_inc(mv->o.metrics.failures);
            break;
        }
        usleep(RETRY_MS * 1000);
    }
    state_service_mark_ready(mv->o.ss, m->partition, m->epoch + 1);
    atomic_store(&mv->o.ss->incoming[m->partition], 0); /* served here now */
    return clock_mono_ms() - t0;
}

static void run_move(mover *mv, const struct rec *start)
{
    const struct cluster_move *m = &start->m;
    uint32_t p = m->partition;
    int64_t t0 = clock_mono_ms();
    metric_gauge_add(mv->o.metrics.active, 1);
    log_info("msg=\"move in: start\" partition=%" PRIu32 " from=%s epoch=%" PRIu64 " phase=%s", p,
             m->from, m->epoch, cluster_move_phase_name(m->phase));
    bool flipped = false;
    while (!stopping(mv)) {
        if ((flipped = flipped_here(mv, m))) /* (also when the source died after the flip) */
            break;
        uint64_t next = 0;
        eddy_err err = copy_phase(mv, m, &next);
        if (err == EDDY_OK) {
            flipped = true;
            break;
        }
        if (err == EDDY_ERR_NOT_FOUND) {
            /* the record went or changed: if the flip happened meanwhile (our map may
             * lag the record), wait for the map; otherwise the move is off */
            uint64_t version = membership_version(mv->o.mem);
            membership_wait_change(mv->o.mem, version, 1000);
            if (flipped_here(mv, m)) {
                flipped = true;
                break;
            }
            struct rec r;
            if (!rec_of(mv, p, &r) || !same_move(&r, m)) {
                log_info("msg=\"move in: cancelled\" partition=%" PRIu32 " from=%s", p, m->from);
                drop_copy(mv, p, "move cancelled");
                atomic_store(&mv->o.ss->incoming[p], 0);
                metric_gauge_add(mv->o.metrics.active, -1);
                return;
            }
            continue;
        }
        metric_counter_inc(mv->o.metrics.failures);
        nap(mv, RETRY_MS);
        struct rec r;
        if (!rec_of(mv, p, &r) || !same_move(&r, m))
            continue; /* decided at the top of the next attempt */
    }
    if (!flipped) { /* stopping: the record stays, the next start resumes */
        metric_gauge_add(mv->o.metrics.active, -1);
        return;
    }
    int64_t pause = final_phase(mv, m);
    if (pause < 0) {
        metric_gauge_add(mv->o.metrics.active, -1);
        return;
    }
    metric_histogram_observe(mv->o.metrics.pause, (double)pause / 1000.0);
    metric_histogram_observe(mv->o.metrics.duration, (double)(clock_mono_ms() - t0) / 1000.0);
    log_info("msg=\"move in: serving\" partition=%" PRIu32 " from=%s epoch=%" PRIu64
             " pause_ms=%" PRId64,
             p, m->from, m->epoch + 1, pause);
    if (mv->o.cks && ckptsched_run_one(mv->o.cks, p, NULL) != EDDY_OK)
        log_warn("msg=\"move: checkpoint after the move failed; the source keeps its copy "
                 "until a later one\" partition=%" PRIu32,
                 p);
    for (int tries = 0; tries < 20 && !stopping(mv); tries++) {
        struct rec r;
        if (!rec_of(mv, p, &r) || !same_move(&r, m) || r.m.phase == MOVE_DONE ||
            set_phase(mv, &r, MOVE_DONE))
            break;
        nap(mv, 100); /* the leader was writing "flipped": read it and try again */
    }
    atomic_store(&mv->o.ss->incoming[p], 0);
    metric_gauge_add(mv->o.metrics.active, -1);
}

/* Copies left behind: a source that missed its move's "done" (down at the time, the
 * record gone since) still holds the partition. It is deleted once the owner has written
 * a checkpoint at or past this copy's end (checkpoints/<p> by the owner, seq >= our next
 * seq) that holds this copy's last log record byte for byte (the file must be readable
 * here: a shared directory): then the owner's log continues this copy's and has
 * everything it has. A copy the owner lacks (a failover that restarted from an older or
 * empty state, whose seqs reach ours with other events) is kept: it is the only place
 * the difference is. */
#define GC_INTERVAL_MS 5000

/* Whether the checkpoint file 'path' holds partition p's log record 'seq' with exactly the
 * bytes 'val': then the owner's log continues this copy's (the same lineage, not a
 * failover that restarted from an older state). Log records come first in the file (the
 * LOG table sorts first), so the scan stops early. */
struct lineage {
    struct store_key key;
    const char *val;
    size_t vlen;
    bool same;
};

static eddy_err lineage_record(void *ud, const unsigned char *k, size_t klen,
                               const unsigned char *v, size_t vlen)
{
    struct lineage *l = ud;
    size_t n = klen < l->key.len ? klen : l->key.len;
    int c = memcmp(k, l->key.buf, n);
    if (c < 0 || (c == 0 && klen < l->key.len))
        return EDDY_OK; /* not there yet */
    l->same = c == 0 && klen == l->key.len && vlen == l->vlen && memcmp(v, l->val, vlen) == 0;
    return EDDY_ERR_CONFLICT; /* found or passed: stop reading */
}

static bool same_lineage(mover *mv, uint32_t p, uint64_t last_seq, const char *path)
{
    struct lineage l = {.same = false};
    key_init(&l.key, p, T_LOG);
    key_u64(&l.key, last_seq);
    char *val = NULL;
    if (store_get(engine_store(mv->o.eng), &l.key, &val, &l.vlen) != EDDY_OK || !val)
        return false; /* no such record here (deleted): cannot tell, keep the copy */
    l.val = val;
    FILE *f = fopen(path, "rbe");
    checkpoint_reader *r =
        f ? checkpoint_reader_new(engine_options(mv->o.eng)->checkpoint_key, path, lineage_record, &l)
          : NULL;
    unsigned char buf[65536];
    size_t n;
    while (r && (n = fread(buf, 1, sizeof(buf), f)) > 0 &&
           checkpoint_reader_feed(r, buf, n) == EDDY_OK)
        ;
    checkpoint_reader_free(r);
    if (f)
        fclose(f);
    free(val);
    return l.same;
}

static void collect_garbage(mover *mv)
{
    char prefix[CLUSTER_KEY_MAX];
    cluster_key(prefix, sizeof(prefix), mv->o.cluster, "checkpoints/");
    struct etcd_kvs kvs;
    if (etcd_range_prefix(membership_etcd(mv->o.mem), prefix, &kvs, NULL) != EDDY_OK)
        return;
    const char *self = membership_self(mv->o.mem);
    struct cluster_checkpoint *ck = malloc(sizeof(*ck));
    for (size_t i = 0; ck && i < kvs.n && !stopping(mv); i++) {
        uint32_t p;
        if (!cluster_key_partition(kvs.kvs[i].key, prefix, mv->nparts, &p))
            continue;
        struct engine_partition_view view;
        engine_partition(mv->o.eng, p, &view);
        char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
        uint64_t epoch;
        if (view.next_seq == 0 || atomic_load(&mv->o.ss->incoming[p]) ||
            !membership_owner(mv->o.mem, p, owner, &epoch, addr) || strcmp(owner, self) == 0 ||
            cluster_checkpoint_from_json(kvs.kvs[i].value, kvs.kvs[i].value_len, ck) != EDDY_OK ||
            strcmp(ck->node, owner) != 0 || ck->seq < view.next_seq)
            continue;
        struct rec r;
        if (rec_of(mv, p, &r) && (strcmp(r.m.from, self) == 0 || strcmp(r.m.to, self) == 0))
            continue; /* a move of it involves this node: it decides */
        if (!same_lineage(mv, p, view.next_seq - 1, ck->path))
            continue; /* the owner's log is not this copy's continuation: keep it */
        if (isr_names_self(mv, p))
            continue; /* drop_copy keeps it: asked again every round, not logged each */
        drop_copy(mv, p, "left behind by a move; the owner has checkpointed past it");
    }
    free(ck);
    etcd_kvs_release(&kvs);
}

static void mover_main(struct worker *w, void *arg)
{
    mover *mv = arg;
    const char *self = membership_self(mv->o.mem);
    int64_t next_gc = clock_mono_ms() + 2000; /* first after the view has settled */
    while (!stopping(mv)) {
        if (clock_mono_ms() >= next_gc) {
            collect_garbage(mv);
            next_gc = clock_mono_ms() + GC_INTERVAL_MS;
        }
        struct rec job = {0};
        int64_t drop = -1;
        pthread_mutex_lock(&mv->mu);
        for (uint32_t p = 0; p < mv->nparts && drop < 0; p++) {
            if (mv->drop[p]) {
                mv->drop[p] = false;
                drop = p;
            }
        }
        for (uint32_t p = 0; p < mv->nparts && drop < 0 && !job.present; p++) {
            const struct rec *r = &mv->recs[p];
            if (r->present && strcmp(r->m.to, self) == 0 && r->m.phase != MOVE_DONE &&
                atomic_load(&mv->o.ss->incoming[p]))
                job = *r;
        }
        pthread_mutex_unlock(&mv->mu);
        if (drop >= 0)
            drop_copy(mv, (uint32_t)drop, "moved away: the new owner has checkpointed");
        else if (job.present)
            run_move(mv, &job);
        else
            nap(mv, 1000);
    }
}

eddy_err mover_start(const struct mover_opts *o, mover **out)
{
    mover *mv = calloc(1, sizeof(*mv));
    if (!mv)
        return EDDY_ERR_NOMEM;
    mv->o = *o;
    mv->nparts = membership_partitions(o->mem);
    mv->ready_pause_ms = testhook_pause_ms("move-ready");
    cluster_key(mv->prefix, sizeof(mv->prefix), o->cluster, "moves/");
    pthread_mutex_init(&mv->mu, NULL);
    mv->recs = calloc(mv->nparts, sizeof(*mv->recs));
    mv->drop = calloc(mv->nparts, sizeof(*mv->drop));
    int64_t rev = 0;
    eddy_err err = mv->recs && mv->drop ? load_all(mv, &rev) : EDDY_ERR_NOMEM;
    /* the thread before the watch: the watch's callbacks kick it */
    if (err == EDDY_OK)
        err = worker_start(&mv->worker, "mover", mover_main, mv);
    if (err == EDDY_OK &&
        !(mv->w = etcd_watch_start(membership_etcd(o->mem), mv->prefix, true, rev + 1, on_move,
                                   mv)))
        err = EDDY_ERR_NOMEM;
    if (err != EDDY_OK) {
        mover_stop(mv);
        return err;
    }
    *out = mv;
    return EDDY_OK;
}

void mover_stop(mover *mv)
{
    if (!mv)
        return;
    /* the watch goes before the thread it kicks; a RESYNC retrying its read sees the stop */
    worker_request_stop(&mv->worker);
    etcd_watch_stop(mv->w); /* accepts NULL */
    worker_stop(&mv->worker);
    pthread_mutex_destroy(&mv->mu);
    free(mv->recs);
    free(mv->drop);
    free(mv);
}
