/* The replicated log: leaders serve ReplicaFetch and hold acknowledgements back until
 * min-insync copies have the records; followers pull and replay their leaders' logs.
 *
 * DESIGN (Kafka's model: followers pull, a follower's fetch position is its ack). Every
 * copy of a partition has the same log under the same seqs: the leader's group commit
 * appends records, a follower's fetch thread asks the leader for the records from its
 * position on and appends them through engine_replay (the same deterministic apply), so
 * at the same seq its state is byte-identical to the leader's. The batches of every
 * partition in one answer go to the engine together and share its group commits: one
 * synced write per answer, not one per partition (a failover's new follower copies ~P/N
 * partitions at once). The position a follower asks from next says that everything below
 * it is durable there: acknowledgements ride on the next fetch, one round trip per batch
 * of records, not a call per event.
 *
 * Leader side. An Apply's job is durable locally, then the state service waits
 * (replica_wait) for the partition's log end at that moment to be on min-insync copies,
 * counting the leader: a duplicate's retry waits for everything before it too, so an
 * event whose first copy is not replicated yet is not acknowledged by its retry either.
 * A follower is in sync while its position keeps reaching the log end the leader had at
 * its previous fetch (Kafka's lastCaughtUpTime); one that has not for
 * --replica-lag-timeout leaves the in-sync set, and comes back once it caught up. New
 * followers start out of sync. With fewer in-sync copies than min-insync the partition
 * refuses writes (replica_writable) and the waiting acknowledgements fail UNAVAILABLE:
 * never a single-copy acknowledgement. Changes of the set are recorded in etcd
 * (/eddy/<cluster>/isr/<p>, compare-and-swap, never over a newer epoch's record) for the
 * coordinator's failover, and a follower counts as a copy only once recorded: the
 * coordinator promotes nothing else. A promoted leader in sync alone keeps the set it was
 * promoted from in its record (promoted_from, replica_isr_next): those copies hold every
 * acknowledged event, so losing it too leaves the partition waiting for them, not given
 * to its new, empty follower.
 *
 * Divergence. An old leader may hold records its successor never had (its unacknowledged
 * suffix, written before it learned it was deposed), and a follower of that old leader
 * may too; the new leader writes other records under the same seqs. A copy that starts
 * following (a new leader, a new epoch, a restart) sends its last record's seq and CRC
 * with its first fetch; the leader compares them with its own record there, and a copy
 * that is past the leader's log end or differs is answered 'diverged' (and never counted
 * as a copy). Such a copy, and one whose position the leader's log no longer holds, is
 * replaced by the leader's checkpoint (ReplicaSnapshot, streamed as a move's is) and
 * fetches on from its seq: no record of a log that went another way survives, and a
 * partition's state stays a function of the leader's log.
 *
 * Threads. A fetch with nothing new is parked (long poll), never held on a handler
 * thread: the replica thread answers it when records arrive (replica_wait wakes it) or at
 * its deadline, and runs the in-sync clock and the etcd writes. Fetch handlers update the
 * positions and complete the acknowledgements they allow. Followers run one fetch thread
 * per leader they follow partitions from (a bounded set: one per node), each with one
 * call in flight and a backoff after errors. Everything shared is under 'mu'; callbacks
 * and engine calls run outside it. */
#include "node/cluster/replica.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/completion.h"
#include "common/crc32c.h"
#include "common/etcd.h"
#include "common/log.h"
#include "common/thread.h"
#include "node/cluster/ckptcopy.h"
#include "node/cluster/state_service.h"
#include "node/state/store.h"

#define FETCHERS_MAX 64             /* leaders a node follows from: one per other node */
#define FETCH_DEFAULT_RECORDS 1000u
#define FETCH_MAX_RECORDS 10000u
#define FETCH_MAX_BYTES (4u << 20)  /* records per answer, all partitions together */
#define FETCH_MAX_WAIT_MS 5000
#define TICK_MS 50                  /* the replica thread's clock when nothing wakes it */
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define ISR_WRITES_MAX 64           /* etcd records written per tick; the rest wait a tick */

static const char FETCH_METHOD[] = "/eddy.state.v1.State/ReplicaFetch";
static const char SNAPSHOT_METHOD[] = "/eddy.state.v1.State/ReplicaSnapshot";

/* A follower of a partition this node leads. */
struct follower {
    char id[CLUSTER_ID_MAX];
    uint64_t pos;          /* its last fetch position: every record below is durable there */
    uint64_t prev_end;     /* the leader's log end when its previous fetch arrived */
    int64_t prev_ms;       /* when that was */
    int64_t caught_up_ms;  /* the last time its position reached a log end the leader had */
    bool in_sync;
    bool recorded;         /* in the in-sync set as last recorded in etcd */
    bool fetched;          /* it fetched since the map named it (the failover timeline) */
    int64_t added_ms;      /* when the map named it a follower here */
};

/* An acknowledgement waiting for copies. */
struct waiter {
    uint64_t seq;
    replica_ack_fn *done;
    void *ud;
    eddy_err err;          /* set when it is taken off the list */
    struct waiter *next;
};

struct part {
    struct replica_part map;
    /* leader side */
    bool leading;          /* this node is the leader and R > 1 or min-insync > 1 */
    struct follower f[REPLICA_MAX - 1];
    uint32_t nf;
    struct waiter *waiters;
    struct held *held;     /* writes waiting for min-insync copies */
    bool isr_dirty;        /* the in-sync set changed since it was written to etcd */
    uint64_t gen;          /* the state generation (replica_invalidate), 0 at each epoch */
    /* follower side */
    bool following;        /* this node is a follower */
    uint64_t pos;          /* the next seq it needs */
    bool applying;         /* a fetch thread has a batch of it in flight */
    bool check_last;       /* started following: the next fetch sends its last record */
    bool has_last;         /* last_seq/last_crc read (none: an empty log below pos) */
    uint64_t last_seq;
    uint32_t last_crc;
    bool resync;           /* the leader's log cannot continue this copy: copy a checkpoint */
    uint64_t fgen;         /* the leader's generation this copy holds */
    uint64_t resync_gen;   /* the generation the checkpoint being copied has at least */
    /* What the leader said in its last answer for this partition (stale reads: how far
     * behind this copy is): its log end then, and when it arrived (CLOCK_MONOTONIC ms; 0:
     * no answer since this copy started following). */
    uint64_t leader_end;
    int64_t heard_ms;
    /* The catch-up after it started following (the failover timeline): when, from which
     * position, the time spent in engine_replay, and whether it reached the leader's log
     * end since. */
    int64_t follow_ms;
    uint64_t follow_pos;
    int64_t replay_ms;
    bool caught_up;
};

/* A write held until its partition has min-insync copies (replica_when_writable). */
struct held {
    int64_t deadline_ms;
    replica_writable_fn *done;
    void *ud;
    bool writable;         /* set when it is taken off the list */
    struct held *next;
};

/* A fetch waiting for records (long poll). The request belongs to the call. */
struct parked {
    rpc_call *call;
    const Eddy__State__V1__ReplicaFetchRequest *req;
    int64_t deadline_ms;
    struct parked *next;
};

struct fetcher {
    replica *r;
    char leader[CLUSTER_ID_MAX];
    pthread_t t;
};

struct replica {
    struct replica_opts o;
    char self[CLUSTER_ID_MAX];
    char cluster[CLUSTER_ID_MAX];
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* the replica thread: a fetch parked, records arrived, stop */
    pthread_cond_t fcv;    /* the fetch threads: the map changed, stop */
    struct part *parts;    /* [o.partitions] */
    uint32_t min_insync;
    struct parked *parked;
    bool running, stopping, kicked;
    pthread_t thread;
    struct fetcher *fetchers[FETCHERS_MAX];
    size_t nfetchers;
    size_t snapshots;      /* ReplicaSnapshot streams being sent (threads of their own) */
    atomic_bool cancel;    /* replica_stop: the streams end at their next piece */
    pthread_cond_t scv;    /* signalled when one ends */
};

/* ---- helpers (under mu unless said) ---------------------------------------------------- */

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(cv, mu, &ts);
}

/* A log record's CRC-32C as ReplicaRecord carries it: its seq as 8 little-endian bytes,
 * then the record. */
static uint32_t record_crc(uint64_t seq, const void *rec, size_t len)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(seq >> (8 * i));
    return crc32c_update(crc32c(le, sizeof(le)), rec, len);
}

/* Copies an acknowledgement of the partition needs, the leader included: min-insync,
 * whatever the map lists. A map that lists fewer copies (R capped by the state nodes
 * there are, a move's source listed alone) leaves the partition unwritable, never
 * acknowledged with fewer copies than promised (Kafka's NotEnoughReplicas). */
static uint32_t need(const replica *r)
{
    return r->min_insync ? r->min_insync : 1;
}

static uint32_t insync(const struct part *pt)
{
    uint32_t n = 1;
    for (uint32_t i = 0; i < pt->nf; i++)
        n += pt->f[i].in_sync;
    return n;
}

/* Whether follower 'f' bounds the high watermark: it is in the in-sync set, or it left
 * it but etcd still records it there, so the coordinator may still promote it (until the
 * shrink is recorded, what it lacks must not be acknowledged). */
static bool bounds(const replica *r, const struct follower *f)
{
    return f->in_sync || (r->o.etcd && f->recorded);
}

/* Whether follower 'f' counts as a copy towards min-insync: etcd records it in sync (the
 * coordinator promotes only what the record names), or, with no etcd, it is in sync. A
 * follower that joined but is not recorded yet is no copy the coordinator knows of: an
 * acknowledgement counting it could be lost with the leader, the record naming the
 * leader alone (or the set it was promoted from, which lacks what was acknowledged
 * since). */
static bool counts(const replica *r, const struct follower *f)
{
    return r->o.etcd ? f->recorded : f->in_sync;
}

/* The high watermark, Kafka's: the highest seq such that every record below it is on the
 * leader (its position 'leader_pos') and on every follower that bounds it, so any
 * follower the coordinator may promote has every acknowledged record; 0 with fewer than
 * 'k' copies that count among them. Counting any k copies instead lost acknowledged
 * records with R = 3 and min-insync 2 when the in-sync follower that lacked them was
 * promoted. */
static uint64_t watermark(const replica *r, const struct part *pt, uint32_t k,
                          uint64_t leader_pos)
{
    uint64_t hw = leader_pos;
    uint32_t n = 1;
    for (uint32_t i = 0; i < pt->nf; i++) {
        if (!bounds(r, &pt->f[i]))
            continue;
        n += counts(r, &pt->f[i]);
        if (pt->f[i].pos < hw)
            hw = pt->f[i].pos;
    }
    return k == 0 || n < k ? 0 : hw;
}

/* Move the waiters of 'pt' that are acknowledged (or can no longer be) to *out. */
static void settle(replica *r, struct part *pt, struct waiter **out)
{
    uint32_t k = need(r);
    uint64_t hw = watermark(r, pt, k, UINT64_MAX);
    bool short_of_copies = insync(pt) < k;
    struct waiter **wp = &pt->waiters;
    while (*wp) {
        struct waiter *w = *wp;
        if (w->seq <= hw || short_of_copies) {
            w->err = w->seq <= hw ? EDDY_OK : EDDY_ERR_UNAVAILABLE;
            *wp = w->next;
            w->next = *out;
            *out = w;
        } else {
            wp = &w->next;
        }
    }
}

static void fail_all(struct part *pt, struct waiter **out)
{
    while (pt->waiters) {
        struct waiter *w = pt->waiters;
        pt->waiters = w->next;
        w->err = EDDY_ERR_UNAVAILABLE;
        w->next = *out;
        *out = w;
    }
}

/* Move the held writes of 'pt' that may go on (writable) or not (not led here, past their
 * deadline, every one with 'all') to *out. */
static void release_held(replica *r, struct part *pt, int64_t now, bool all, struct held **out)
{
    bool writable = pt->leading && insync(pt) >= need(r);
    struct held **hp = &pt->held;
    while (*hp) {
        struct held *h = *hp;
        if (writable || all || !pt->leading || now >= h->deadline_ms) {
            h->writable = writable && !all;
            *hp = h->next;
            h->next = *out;
            *out = h;
        } else {
            hp = &h->next;
        }
    }
}

/* Outside mu. */
static void run_held(struct held *h)
{
    while (h) {
        struct held *next = h->next;
        h->done(h->ud, h->writable);
        free(h);
        h = next;
    }
}

/* Outside mu. */
static void run_waiters(struct waiter *w)
{
    while (w) {
        struct waiter *next = w->next;
        w->done(w->ud, w->err);
        free(w);
        w = next;
    }
}

static struct follower *find_follower(struct part *pt, const char *id)
{
    for (uint32_t i = 0; i < pt->nf; i++)
        if (strcmp(pt->f[i].id, id) == 0)
            return &pt->f[i];
    return NULL;
}

static bool is_follower_in(const struct replica_part *m, const char *id)
{
    for (uint32_t i = 1; i < m->nreplicas && i < REPLICA_MAX; i++)
        if (strcmp(m->replicas[i], id) == 0)
            return true;
    return false;
}

/* The in-sync clock of one follower at a fetch (or a tick: pos unchanged). */
static void follower_check(replica *r, struct part *pt, struct follower *f, uint32_t p,
                           int64_t now)
{
    if (!f->in_sync)
        return;
    if (now - f->caught_up_ms > r->o.lag_timeout_ms) {
        f->in_sync = false;
        pt->isr_dirty = true;
        if (r->o.metrics.isr_shrinks)
            metric_counter_add(r->o.metrics.isr_shrinks, 1);
        log_warn("msg=\"follower left the in-sync set\" partition=%u follower=%s "
                 "position=%" PRIu64 " lag_timeout_ms=%" PRId64,
                 p, f->id, f->pos, r->o.lag_timeout_ms);
    }
}

/* ---- map ---------------------------------------------------------------------------------- */

static void *fetch_main(void *arg);

/* Start a fetch thread for 'leader' unless there is one. Under mu, once running. */
static void ensure_fetcher(replica *r, const char *leader)
{
    for (size_t i = 0; i < r->nfetchers; i++)
        if (strcmp(r->fetchers[i]->leader, leader) == 0)
            return;
    if (r->nfetchers == FETCHERS_MAX) {
        log_error("msg=\"too many leaders to follow\" max=%d", FETCHERS_MAX);
        return;
    }
    struct fetcher *f = calloc(1, sizeof(*f));
    if (!f)
        return;
    f->r = r;
    snprintf(f->leader, sizeof(f->leader), "%s", leader);
    if (pthread_create(&f->t, NULL, fetch_main, f) != 0) {
        log_error("msg=\"cannot start a replica fetch thread\" leader=%s", leader);
        free(f);
        return;
    }
    r->fetchers[r->nfetchers++] = f;
}

static void ensure_fetchers(replica *r)
{
    for (uint32_t p = 0; p < r->o.partitions; p++)
        if (r->parts[p].following)
            ensure_fetcher(r, r->parts[p].map.replicas[0]);
}

void replica_set_map(replica *r, const struct replica_part *parts, uint32_t min_insync)
{
    uint32_t P = r->o.partitions;
    uint64_t *ends = calloc(P ? P : 1, sizeof(*ends));
    if (!ends) {
        log_error("msg=\"replica map not taken: out of memory\"");
        return;
    }
    for (uint32_t p = 0; p < P; p++) { /* engine reads before mu: never both locks */
        struct engine_partition_view v;
        engine_partition(r->o.eng, p, &v);
        ends[p] = v.next_seq;
    }
    int64_t now = clock_mono_ms();
    struct waiter *done = NULL;
    struct held *held = NULL;
    pthread_mutex_lock(&r->mu);
    r->min_insync = min_insync;
    for (uint32_t p = 0; p < P; p++) {
        struct part *pt = &r->parts[p];
        const struct replica_part *m = &parts[p];
        uint32_t R = m->nreplicas < REPLICA_MAX ? m->nreplicas : REPLICA_MAX;
        /* a leader listed alone leads too when min-insync needs more copies: it refuses */
        bool leading = (R > 1 || min_insync > 1) && strcmp(m->replicas[0], r->self) == 0;
        bool following = R > 1 && is_follower_in(m, r->self);
        bool new_leader = strcmp(m->replicas[0], pt->map.replicas[0]) != 0;
        bool new_epoch = m->epoch != pt->map.epoch;
        if (pt->leading && !leading)
            fail_all(pt, &done);
        if (leading) {
            struct follower f[REPLICA_MAX - 1];
            uint32_t nf = 0;
            for (uint32_t i = 1; i < R; i++) {
                struct follower *old = pt->leading ? find_follower(pt, m->replicas[i]) : NULL;
                if (old) {
                    f[nf++] = *old;
                    continue;
                }
                f[nf] = (struct follower){.prev_end = ends[p], .prev_ms = now,
                                          .caught_up_ms = now, .in_sync = false,
                                          .added_ms = now};
                snprintf(f[nf].id, sizeof(f[nf].id), "%s", m->replicas[i]);
                nf++;
            }
            pt->isr_dirty |= !pt->leading || nf != pt->nf || m->epoch != pt->map.epoch;
            if (!pt->leading || m->epoch != pt->map.epoch)
                pt->gen = 0; /* every copy starting to follow checks its log anyway */
            memcpy(pt->f, f, sizeof(f));
            pt->nf = nf;
        } else {
            pt->nf = 0;
        }
        if (following && (!pt->following || new_leader || m->epoch != pt->map.epoch)) {
            pt->pos = ends[p]; /* a new leader's log goes on from this copy's end, */
            pt->check_last = true; /* if this copy's log is a prefix of the leader's */
            pt->has_last = false;
            pt->resync = false;
            pt->fgen = 0;
            pt->leader_end = 0;
            pt->heard_ms = 0; /* no stale read until this leader answered */
            pt->follow_ms = now;
            pt->follow_pos = ends[p];
            pt->replay_ms = 0;
            pt->caught_up = false;
        }
        pt->leading = leading;
        pt->following = following;
        pt->map = *m;
        pt->map.nreplicas = R;
        if (leading)
            settle(r, pt, &done);
        /* held writes name the epoch they were fenced under: a new one refuses them */
        release_held(r, pt, now, new_epoch, &held);
    }
    /* A parked fetch names the partitions its follower followed before this map: answer
     * it at the next tick, so that the follower's next fetch names the partitions it
     * follows now (a new follower after a failover would otherwise start up to a long
     * poll later, and the partition stay short of min-insync that long). */
    for (struct parked *k = r->parked; k; k = k->next)
        k->deadline_ms = 0;
    if (r->running)
        ensure_fetchers(r);
    pthread_cond_broadcast(&r->fcv);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    run_waiters(done);
    run_held(held);
    free(ends);
}

void replica_set_membership(replica *r, membership *m)
{
    uint32_t P = r->o.partitions;
    struct replica_part *parts = calloc(P ? P : 1, sizeof(*parts));
    if (!parts) {
        log_error("msg=\"replica map not taken: out of memory\"");
        return;
    }
    for (uint32_t p = 0; p < P; p++) {
        struct cluster_part cp;
        if (!membership_part(m, p, &cp) || cp.nreplicas == 0)
            continue;
        parts[p].epoch = cp.epoch;
        parts[p].nreplicas = cp.nreplicas;
        memcpy(parts[p].replicas, cp.replicas, sizeof(parts[p].replicas));
        membership_addr(m, cp.replicas[0], parts[p].leader_addr);
    }
    pthread_mutex_lock(&r->mu); /* the node's id and etcd are known once it joined */
    snprintf(r->self, sizeof(r->self), "%s", membership_self(m));
    if (!r->o.etcd)
        r->o.etcd = membership_etcd(m);
    pthread_mutex_unlock(&r->mu);
    replica_set_map(r, parts, membership_min_insync(m));
    free(parts);
}

/* ---- leader side: acknowledgements -------------------------------------------------------- */

bool replica_writable(replica *r, uint32_t p)
{
    if (p >= r->o.partitions)
        return true;
    pthread_mutex_lock(&r->mu);
    struct part *pt = &r->parts[p];
    bool ok = !pt->leading || insync(pt) >= need(r);
    pthread_mutex_unlock(&r->mu);
    return ok;
}

eddy_err replica_when_writable(replica *r, uint32_t p, replica_writable_fn *done, void *ud)
{
    struct held *h = malloc(sizeof(*h));
    if (!h)
        return EDDY_ERR_NOMEM;
    *h = (struct held){clock_mono_ms() + r->o.writable_wait_ms, done, ud, false, NULL};
    pthread_mutex_lock(&r->mu);
    struct part *pt = p < r->o.partitions ? &r->parts[p] : NULL;
    bool ok = !pt || !pt->leading || insync(pt) >= need(r);
    bool hold = !ok && !r->stopping && r->o.writable_wait_ms > 0;
    if (hold) {
        h->next = pt->held;
        pt->held = h;
    }
    pthread_mutex_unlock(&r->mu);
    if (!hold) {
        done(ud, ok);
        free(h);
    }
    return EDDY_OK;
}

uint64_t replica_committed(replica *r, uint32_t p)
{
    if (p >= r->o.partitions)
        return 0;
    pthread_mutex_lock(&r->mu);
    const struct part *pt = &r->parts[p];
    uint64_t c = pt->leading            ? watermark(r, pt, need(r), UINT64_MAX)
                 : pt->map.nreplicas <= 1 ? UINT64_MAX
                                          : 0;
    pthread_mutex_unlock(&r->mu);
    return c;
}

uint32_t replica_insync(replica *r, uint32_t p)
{
    if (p >= r->o.partitions)
        return 1;
    pthread_mutex_lock(&r->mu);
    uint32_t n = r->parts[p].leading ? insync(&r->parts[p]) : 1;
    pthread_mutex_unlock(&r->mu);
    return n;
}

eddy_err replica_wait(replica *r, uint32_t p, uint64_t seq, replica_ack_fn *done, void *ud)
{
    struct waiter *w = malloc(sizeof(*w));
    if (!w)
        return EDDY_ERR_NOMEM;
    *w = (struct waiter){seq, done, ud, EDDY_OK, NULL};
    struct waiter *ready = NULL;
    pthread_mutex_lock(&r->mu);
    struct part *pt = p < r->o.partitions ? &r->parts[p] : NULL;
    if (!pt || (pt->map.nreplicas <= 1 && !pt->leading)) {
        w->next = ready; /* not replicated: acknowledged as before replication */
        ready = w;
    } else if (!pt->leading || r->stopping) {
        w->err = EDDY_ERR_UNAVAILABLE; /* the map moved the leadership away meanwhile */
        ready = w;
    } else {
        w->next = pt->waiters;
        pt->waiters = w;
        settle(r, pt, &ready);
        r->kicked = true; /* new records: answer the parked fetches */
        pthread_cond_signal(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    run_waiters(ready);
    return EDDY_OK;
}

void replica_invalidate(replica *r, uint32_t p)
{
    if (p >= r->o.partitions)
        return;
    pthread_mutex_lock(&r->mu);
    struct part *pt = &r->parts[p];
    if (pt->leading) {
        pt->gen++;
        log_info("msg=\"partition state changed outside its log: followers copy a checkpoint\" "
                 "partition=%" PRIu32 " generation=%" PRIu64,
                 p, pt->gen);
        r->kicked = true; /* answer the parked fetches: they are behind now */
        pthread_cond_signal(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

/* ---- leader side: ReplicaFetch ------------------------------------------------------------ */

struct page {
    Eddy__State__V1__ReplicaRecord *rec;   /* [max] */
    Eddy__State__V1__ReplicaRecord **rp;
    size_t n, max, *bytes;
    uint64_t last;
    bool cut;              /* stopped at a limit: the page ends after 'last' */
    bool oom;
};

static int collect(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct page *pg = ud;
    size_t off = 3; /* partition u16, table byte */
    uint64_t seq;
    if (pg->n == pg->max || (pg->n > 0 && *pg->bytes + vlen > FETCH_MAX_BYTES)) {
        pg->cut = true;
        return 1;
    }
    if (!key_get_u64(k, klen, &off, &seq))
        return 0;
    Eddy__State__V1__ReplicaRecord *e = &pg->rec[pg->n];
    eddy__state__v1__replica_record__init(e);
    e->seq = seq;
    e->record.data = malloc(vlen ? vlen : 1);
    if (!e->record.data) {
        pg->oom = true;
        return 1;
    }
    memcpy(e->record.data, v, vlen);
    e->record.len = vlen;
    e->crc32c = record_crc(seq, v, vlen);
    pg->rp[pg->n++] = e;
    *pg->bytes += vlen;
    pg->last = seq;
    return 0;
}

/* Whether partition p, led here by the map, is still being taken over (a move's final
 * tail not applied yet): its fetches are left unanswered until it is complete. */
static bool taking_over(const replica *r, uint32_t p)
{
    return r->o.ready && !r->o.ready(r->o.ready_ud, p);
}

/* Answer a fetch with the records past each position (any thread but under no lock);
 * 'div' (NULL: none) marks the partitions whose copy diverged from this log. */
static void answer(replica *r, rpc_call *c, const Eddy__State__V1__ReplicaFetchRequest *req,
                   const bool *div)
{
    size_t n = req->n_partitions, bytes = 0;
    size_t max = req->max_records ? req->max_records : FETCH_DEFAULT_RECORDS;
    if (max > FETCH_MAX_RECORDS)
        max = FETCH_MAX_RECORDS;
    Eddy__State__V1__ReplicaPartitionData *d = calloc(n ? n : 1, sizeof(*d));
    Eddy__State__V1__ReplicaPartitionData **dp = calloc(n ? n : 1, sizeof(*dp));
    struct page *pg = calloc(n ? n : 1, sizeof(*pg));
    uint64_t *gen = calloc(n ? n : 1, sizeof(*gen));
    bool oom = !d || !dp || !pg || !gen;
    pthread_mutex_lock(&r->mu); /* the generations as of this answer */
    for (size_t i = 0; i < n && !oom; i++) {
        uint32_t p = req->partitions[i]->partition;
        gen[i] = p < r->o.partitions && r->parts[p].leading ? r->parts[p].gen : 0;
    }
    pthread_mutex_unlock(&r->mu);
    size_t m = 0; /* partitions in the answer */
    for (size_t i = 0; i < n && !oom; i++) {
        const Eddy__State__V1__ReplicaFetchPartition *q = req->partitions[i];
        struct engine_partition_view v;
        eddy__state__v1__replica_partition_data__init(&d[i]);
        if (taking_over(r, q->partition))
            continue; /* left out: asked again once it is complete */
        engine_partition(r->o.eng, q->partition, &v);
        dp[m++] = &d[i];
        d[i].partition = q->partition;
        d[i].epoch = q->epoch; /* checked against the map when the fetch arrived */
        d[i].from_seq = q->next_seq;
        d[i].next_seq = q->next_seq;
        d[i].log_end = v.next_seq;
        d[i].generation = gen[i];
        if ((div && div[i]) || q->generation < gen[i]) {
            d[i].diverged = true;
            continue;
        }
        if (q->next_seq < v.log_first_seq && q->next_seq < v.next_seq) {
            d[i].log_truncated = true;
            continue;
        }
        if (q->next_seq >= v.next_seq)
            continue;
        pg[i] = (struct page){calloc(max, sizeof(*pg[i].rec)), calloc(max, sizeof(*pg[i].rp)),
                              0, max, &bytes, 0, false, false};
        if (!pg[i].rec || !pg[i].rp) {
            oom = true;
            break;
        }
        struct store_key start, end;
        key_init(&start, q->partition, T_LOG);
        key_u64(&start, q->next_seq);
        key_init(&end, q->partition, T_LOG);
        key_u64(&end, v.next_seq);
        eddy_err err = store_scan(engine_store(r->o.eng), &start, &end, collect, &pg[i]);
        oom = pg[i].oom;
        if (err != EDDY_OK) {
            rpc_reply_error(c, eddy_err_to_grpc(err), "reading the log of partition %u: %s",
                            q->partition, eddy_strerror(err));
            c = NULL;
            break;
        }
        d[i].records = pg[i].rp;
        d[i].n_records = pg[i].n;
        /* a page cut short continues after its last record; else it reached the end */
        d[i].next_seq = pg[i].cut && pg[i].n ? pg[i].last + 1 : v.next_seq;
    }
    if (c) {
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < n && !oom; i++) {
            uint32_t p = req->partitions[i]->partition;
            struct part *pt = &r->parts[p];
            d[i].high_watermark = pt->leading ? watermark(r, pt, need(r), d[i].log_end)
                                              : d[i].log_end;
        }
        pthread_mutex_unlock(&r->mu);
        if (oom) {
            rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "replica fetch: out of memory");
        } else {
            Eddy__State__V1__ReplicaFetchResponse resp =
                EDDY__STATE__V1__REPLICA_FETCH_RESPONSE__INIT;
            resp.partitions = dp;
            resp.n_partitions = m;
            rpc_reply(c, &resp.base);
        }
    }
    for (size_t i = 0; pg && i < n; i++) {
        for (size_t k = 0; k < pg[i].n; k++)
            free(pg[i].rec[k].record.data);
        free(pg[i].rec);
        free(pg[i].rp);
    }
    free(pg);
    free(d);
    free(dp);
    free(gen);
}

/* Why the fetch of partition 'q' is refused (NULL: it is not). Under mu. */
static const char *refusal(replica *r, const char *follower,
                           const Eddy__State__V1__ReplicaFetchPartition *q, char *buf,
                           size_t len)
{
    if (q->partition >= r->o.partitions) {
        snprintf(buf, len, "partition %u out of range", q->partition);
        return buf;
    }
    const struct part *pt = &r->parts[q->partition];
    if (!pt->leading)
        snprintf(buf, len, "partition %u: this node (%s) is not its leader in its map",
                 q->partition, r->self);
    else if (q->epoch != pt->map.epoch)
        snprintf(buf, len, "partition %u: stale epoch %" PRIu64 ": the leader's is %" PRIu64,
                 q->partition, q->epoch, pt->map.epoch);
    else if (!is_follower_in(&pt->map, follower))
        snprintf(buf, len, "partition %u: node '%s' is not a follower in the leader's map",
                 q->partition, follower);
    else
        return NULL;
    return buf;
}

/* Whether the copy asking 'q' went another way than this log: its position is past the
 * log end 'end', or the last record it sent differs from this log's at that seq (one this
 * log swept by retention is old and was on every copy: taken as the same). No lock. */
static bool diverged(replica *r, const Eddy__State__V1__ReplicaFetchPartition *q, uint64_t end,
                     uint64_t first)
{
    if (q->next_seq > end)
        return true;
    if (!q->check_last || q->last_seq >= q->next_seq || q->last_seq < first)
        return false;
    struct store_key k;
    key_init(&k, q->partition, T_LOG);
    key_u64(&k, q->last_seq);
    char *v = NULL;
    size_t vlen = 0;
    if (store_get(engine_store(r->o.eng), &k, &v, &vlen) != EDDY_OK)
        return false; /* a read error says nothing about the copy: asked again next time */
    bool differs = !v || record_crc(q->last_seq, v, vlen) != q->last_crc32c;
    free(v);
    return differs;
}

static void handle_fetch(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    replica *r = ud;
    const Eddy__State__V1__ReplicaFetchRequest *req =
        (const Eddy__State__V1__ReplicaFetchRequest *)msg;
    size_t n = req->n_partitions;
    uint64_t ends[64], first[64];
    bool divs[64], overs[64];
    uint64_t *end = n <= 64 ? ends : calloc(n, sizeof(*end));
    uint64_t *lfirst = n <= 64 ? first : calloc(n, sizeof(*lfirst));
    bool *div = n <= 64 ? divs : calloc(n, sizeof(*div));
    bool *over = n <= 64 ? overs : calloc(n, sizeof(*over));
    struct waiter *done = NULL;
    struct held *held = NULL;
    struct parked *pk = NULL;
    char why[256];
    const char *refused = NULL;
    bool records_ready = false;
    if (!end || !lfirst || !div || !over) {
        rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "replica fetch: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) { /* engine and store reads before mu */
        struct engine_partition_view v = {0};
        if (req->partitions[i]->partition < r->o.partitions)
            engine_partition(r->o.eng, req->partitions[i]->partition, &v);
        end[i] = v.next_seq;
        lfirst[i] = v.log_first_seq;
        /* a partition still being taken over is not judged: its log is not complete */
        over[i] = req->partitions[i]->partition < r->o.partitions &&
                  taking_over(r, req->partitions[i]->partition);
        div[i] = req->partitions[i]->partition < r->o.partitions && !over[i] &&
                 diverged(r, req->partitions[i], end[i], lfirst[i]);
    }
    int64_t t = clock_mono_ms();
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < n && !refused; i++)
        refused = refusal(r, req->follower, req->partitions[i], why, sizeof(why));
    if (refused || r->stopping) {
        pthread_mutex_unlock(&r->mu);
        if (refused)
            rpc_reply_error(c, GRPC_STATUS_FAILED_PRECONDITION, "replica fetch refused: %s",
                            refused);
        else
            rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "node stopping");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const Eddy__State__V1__ReplicaFetchPartition *q = req->partitions[i];
        struct part *pt = &r->parts[q->partition];
        struct follower *f = find_follower(pt, req->follower);
        if (over[i])
            continue; /* neither its position nor its copy counts yet */
        div[i] = div[i] || q->generation < pt->gen; /* the state changed outside the log */
        if (div[i]) {
            /* Records the leader does not have (an old leader's unacknowledged suffix):
             * no copy of this log. Told so at once; it copies a checkpoint and comes back
             * as a new follower. */
            log_warn("msg=\"follower's log diverged from the leader's: not counted as a "
                     "copy until it copied a checkpoint\" partition=%u follower=%s "
                     "position=%" PRIu64 " log_end=%" PRIu64,
                     q->partition, f->id, q->next_seq, end[i]);
            f->pos = 0;
            f->prev_end = UINT64_MAX;
            f->caught_up_ms = t - r->o.lag_timeout_ms - 1; /* out of the set at once */
            follower_check(r, pt, f, q->partition, t);
            settle(r, pt, &done);
            records_ready = true;
            continue;
        }
        if (!f->fetched && !f->in_sync)
            log_info("msg=\"new follower's first fetch\" partition=%u follower=%s "
                     "position=%" PRIu64 " log_end=%" PRIu64 " lacked=%" PRIu64
                     " since_map_ms=%" PRId64,
                     q->partition, f->id, q->next_seq, end[i],
                     end[i] > q->next_seq ? end[i] - q->next_seq : 0, t - f->added_ms);
        f->fetched = true;
        f->pos = q->next_seq;
        /* it reached the log end as it is now, or as it was at its previous fetch */
        if (q->next_seq >= end[i] || q->next_seq >= f->prev_end) {
            f->caught_up_ms = q->next_seq >= end[i] ? t : f->prev_ms;
            /* a follower back after a long absence reached only an old end: it joins once
             * it is caught up within the lag timeout, not to leave again at the next tick */
            if (!f->in_sync && t - f->caught_up_ms <= r->o.lag_timeout_ms) {
                f->in_sync = true;
                pt->isr_dirty = true;
                if (r->o.metrics.isr_expands)
                    metric_counter_add(r->o.metrics.isr_expands, 1);
                log_info("msg=\"follower joined the in-sync set\" partition=%u follower=%s "
                         "position=%" PRIu64 " since_map_ms=%" PRId64,
                         q->partition, f->id, f->pos, t - f->added_ms);
            }
        }
        f->prev_end = end[i];
        f->prev_ms = t;
        follower_check(r, pt, f, q->partition, t);
        settle(r, pt, &done);
        if (q->next_seq < end[i] || (q->next_seq < lfirst[i]))
            records_ready = true;
    }
    for (size_t i = 0; i < n; i++) /* a follower that joined: the held writes go on */
        release_held(r, &r->parts[req->partitions[i]->partition], t, false, &held);
    if (!records_ready) {
        pk = malloc(sizeof(*pk));
        if (pk) {
            int64_t wait = req->max_wait_ms < FETCH_MAX_WAIT_MS ? req->max_wait_ms
                                                                 : FETCH_MAX_WAIT_MS;
            *pk = (struct parked){c, req, t + wait, r->parked};
            r->parked = pk;
            pthread_cond_signal(&r->cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
    run_waiters(done);
    run_held(held);
    if (!pk)
        answer(r, c, req, div); /* records ready (or no memory to park: answer empty) */
out:
    if (end != ends)
        free(end);
    if (lfirst != first)
        free(lfirst);
    if (div != divs)
        free(div);
    if (over != overs)
        free(over);
}

/* ---- leader side: ReplicaSnapshot ---------------------------------------------------------- */

struct snapshot_send {
    replica *r;
    rpc_call *call;
    uint32_t p;
};

/* Streaming a checkpoint takes long: a thread of its own, not a handler's. */
static void *snapshot_main(void *arg)
{
    thread_name("repl-snapshot");
    struct snapshot_send *ss = arg;
    replica *r = ss->r;
    struct checkpoint_info info;
    eddy_err err = ckptcopy_send(r->o.eng, ss->p, ss->call, &r->cancel, &info);
    if (err == EDDY_OK)
        log_info("msg=\"checkpoint sent to a follower\" partition=%" PRIu32 " seq=%" PRIu64
                 " bytes=%" PRIu64,
                 ss->p, info.seq, info.bytes);
    else
        log_warn("msg=\"checkpoint for a follower not sent\" partition=%" PRIu32
                 " error=\"%s\"",
                 ss->p, eddy_strerror(err));
    rpc_stream_finish(ss->call, err == EDDY_OK ? GRPC_STATUS_OK : eddy_err_to_grpc(err),
                      err == EDDY_OK ? NULL : eddy_strerror(err));
    free(ss);
    pthread_mutex_lock(&r->mu);
    r->snapshots--;
    pthread_cond_broadcast(&r->scv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void handle_snapshot(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    replica *r = ud;
    const Eddy__State__V1__ReplicaSnapshotRequest *req =
        (const Eddy__State__V1__ReplicaSnapshotRequest *)msg;
    Eddy__State__V1__ReplicaFetchPartition q = EDDY__STATE__V1__REPLICA_FETCH_PARTITION__INIT;
    q.partition = req->partition;
    q.epoch = req->epoch;
    char why[256];
    struct snapshot_send *ss = malloc(sizeof(*ss));
    bool over = req->partition < r->o.partitions && taking_over(r, req->partition);
    pthread_mutex_lock(&r->mu);
    const char *refused = refusal(r, req->follower, &q, why, sizeof(why));
    bool go = !refused && !r->stopping && ss && !over;
    if (go)
        r->snapshots++;
    pthread_mutex_unlock(&r->mu);
    if (!go) {
        free(ss);
        if (refused)
            rpc_stream_finish(c, GRPC_STATUS_FAILED_PRECONDITION, refused);
        else
            rpc_stream_finish(c, GRPC_STATUS_UNAVAILABLE,
                              !ss ? "out of memory"
                              : over ? "partition still being taken over here: retry"
                                     : "node stopping");
        return;
    }
    *ss = (struct snapshot_send){r, c, req->partition};
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, snapshot_main, ss) != 0) {
        free(ss);
        rpc_stream_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "cannot start the checkpoint copy");
        pthread_mutex_lock(&r->mu);
        r->snapshots--;
        pthread_cond_broadcast(&r->scv);
        pthread_mutex_unlock(&r->mu);
    }
    pthread_attr_destroy(&attr);
}

eddy_err replica_register(replica *r, rpc_server *s)
{
    /* a leaf: the handler never calls another handler and never blocks (long polls park) */
    eddy_err err = rpc_server_add_unary_lane(s, FETCH_METHOD,
                                             &eddy__state__v1__replica_fetch_request__descriptor,
                                             handle_fetch, r, STATE_LANE_LEAF);
    if (err == EDDY_OK)
        err = rpc_server_add_stream(s, SNAPSHOT_METHOD,
                                    &eddy__state__v1__replica_snapshot_request__descriptor,
                                    handle_snapshot, NULL, r);
    return err;
}

/* ---- the replica thread ------------------------------------------------------------------- */

void replica_isr_next(const struct cluster_isr *stored, struct cluster_isr *next,
                      uint32_t min_insync)
{
    next->npromoted = 0;
    if (!stored || stored->epoch > next->epoch || !cluster_isr_holds(stored, next->leader))
        return;
    if (next->nisr != 1 && next->nisr >= min_insync)
        return; /* whole: the in-sync copies hold everything from here on */
    bool own = stored->epoch == next->epoch;
    uint32_t holders = cluster_isr_nholders(stored), from = 0;
    if (own && stored->npromoted > 0)
        from = stored->nisr; /* this epoch's record carries its set on, as it is */
    else if (own ? next->nisr >= min_insync || holders <= next->nisr : holders < 2)
        return;
    /* else an older epoch's record naming two copies or more is the set this leader was
     * promoted from; or this epoch's set shrank below min-insync, so from the record on
     * nothing more is acknowledged and every copy the stored record names holds every
     * acknowledged event (Kafka's eligible leader replicas) */
    for (uint32_t i = from; i < stored->nisr + stored->npromoted; i++) {
        const char *id = i < stored->nisr ? stored->isr[i]
                                          : stored->promoted_from[i - stored->nisr];
        bool named = false;
        for (uint32_t k = 0; k < next->npromoted; k++)
            named |= strcmp(next->promoted_from[k], id) == 0;
        if (!named && next->npromoted < CLUSTER_REPLICAS_MAX)
            snprintf(next->promoted_from[next->npromoted++], CLUSTER_ID_MAX, "%s", id);
    }
}

/* Record the in-sync set of a partition in etcd (with what replica_isr_next keeps of the
 * stored record): EDDY_ERR_NOT_OWNER when a newer epoch's record is there (the coordinator
 * moved on; nothing written). */
static eddy_err write_isr(replica *r, etcd_client *etcd, uint32_t p, struct cluster_isr *x,
                          uint32_t min_insync)
{
    char key[CLUSTER_KEY_MAX];
    snprintf(key, sizeof(key), CLUSTER_PREFIX "%s/isr/%u", r->cluster, p);
    struct etcd_kv kv = {0};
    bool found = false, ok = false;
    char *val = NULL;
    eddy_err err = etcd_get(etcd, key, &kv, &found);
    if (err != EDDY_OK)
        goto out;
    struct cluster_isr cur;
    bool decoded = found && cluster_isr_from_json(kv.value, kv.value_len, &cur) == EDDY_OK;
    if (decoded && cur.epoch > x->epoch) {
        err = EDDY_ERR_NOT_OWNER; /* the coordinator moved on: this leader's view is stale */
        goto out;
    }
    replica_isr_next(decoded ? &cur : NULL, x, min_insync);
    err = EDDY_ERR_NOMEM;
    if (!(val = cluster_isr_to_json(x)))
        goto out;
    err = etcd_txn_cas(etcd, key, found ? kv.mod_revision : 0, val, strlen(val), 0, &ok,
                       NULL);
    if (err == EDDY_OK && !ok)
        err = EDDY_ERR_CONFLICT;
out:
    etcd_kv_release(&kv);
    free(val);
    return err;
}

static void *replica_main(void *arg)
{
    thread_name("replica");
    replica *r = arg;
    uint32_t P = r->o.partitions;
    uint64_t *ends = calloc(P ? P : 1, sizeof(*ends));
    uint32_t *led = calloc(P ? P : 1, sizeof(*led));
    struct cluster_isr *recs = calloc(ISR_WRITES_MAX, sizeof(*recs));
    uint32_t recp[ISR_WRITES_MAX];
    if (!ends || !led || !recs) {
        log_error("msg=\"replica thread: out of memory\"");
        free(ends);
        free(led);
        free(recs);
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    while (!r->stopping) {
        size_t nled = 0; /* only the log ends of the partitions led here are read */
        for (uint32_t p = 0; p < P; p++)
            if (r->parts[p].leading)
                led[nled++] = p;
        pthread_mutex_unlock(&r->mu);
        for (size_t i = 0; i < nled; i++) {
            struct engine_partition_view v;
            engine_partition(r->o.eng, led[i], &v);
            ends[led[i]] = v.next_seq;
        }
        int64_t now = clock_mono_ms();
        struct waiter *done = NULL;
        struct held *held = NULL;
        struct parked *ready = NULL;
        size_t nrecs = 0;
        double lag = 0, under = 0;
        pthread_mutex_lock(&r->mu);
        etcd_client *etcd = r->o.etcd;
        uint32_t min_insync = need(r);
        r->kicked = false;
        for (uint32_t p = 0; p < P; p++) {
            struct part *pt = &r->parts[p];
            if (!pt->leading)
                continue;
            for (uint32_t i = 0; i < pt->nf; i++) {
                follower_check(r, pt, &pt->f[i], p, now);
                lag += pt->f[i].pos < ends[p] ? (double)(ends[p] - pt->f[i].pos) : 0;
            }
            under += insync(pt) < pt->map.nreplicas;
            settle(r, pt, &done);
            release_held(r, pt, now, false, &held); /* those past --replica-writable-wait */
            if (pt->isr_dirty && r->o.etcd && nrecs < ISR_WRITES_MAX) {
                recp[nrecs] = p;
                struct cluster_isr *x = &recs[nrecs++];
                x->epoch = pt->map.epoch;
                snprintf(x->leader, sizeof(x->leader), "%s", r->self);
                snprintf(x->isr[0], sizeof(x->isr[0]), "%s", r->self);
                x->nisr = 1;
                for (uint32_t i = 0; i < pt->nf; i++)
                    if (pt->f[i].in_sync)
                        snprintf(x->isr[x->nisr++], sizeof(x->isr[0]), "%s", pt->f[i].id);
                pt->isr_dirty = false;
            }
        }
        struct parked **pp = &r->parked;
        while (*pp) {
            struct parked *k = *pp;
            bool go = now >= k->deadline_ms;
            for (size_t i = 0; i < k->req->n_partitions && !go; i++) {
                const Eddy__State__V1__ReplicaFetchPartition *q = k->req->partitions[i];
                go = q->partition < P && (q->next_seq < ends[q->partition] ||
                                          q->generation < r->parts[q->partition].gen);
            }
            if (go) {
                *pp = k->next;
                k->next = ready;
                ready = k;
            } else {
                pp = &k->next;
            }
        }
        pthread_mutex_unlock(&r->mu);
        if (r->o.metrics.lag_records)
            metric_gauge_set(r->o.metrics.lag_records, lag);
        if (r->o.metrics.under_replicated)
            metric_gauge_set(r->o.metrics.under_replicated, under);
        run_waiters(done);
        run_held(held);
        while (ready) {
            struct parked *k = ready;
            ready = k->next;
            answer(r, k->call, k->req, NULL); /* parked: no copy of it diverged */
            free(k);
        }
        for (size_t i = 0; i < nrecs; i++) {
            eddy_err err = write_isr(r, etcd, recp[i], &recs[i], min_insync);
            if (err == EDDY_OK) { /* what etcd says now bounds the high watermark */
                struct waiter *acked = NULL;
                pthread_mutex_lock(&r->mu);
                struct part *pt = &r->parts[recp[i]];
                if (pt->leading && pt->map.epoch == recs[i].epoch) {
                    for (uint32_t f = 0; f < pt->nf; f++)
                        pt->f[f].recorded = cluster_isr_has(&recs[i], pt->f[f].id);
                    settle(r, pt, &acked);
                }
                pthread_mutex_unlock(&r->mu);
                run_waiters(acked);
            } else if (err != EDDY_ERR_NOT_OWNER) { /* stale: the next map says so */
                log_warn("msg=\"in-sync set not recorded in etcd; retrying\" partition=%u "
                         "error=\"%s\"",
                         recp[i], eddy_strerror(err));
                pthread_mutex_lock(&r->mu);
                r->parts[recp[i]].isr_dirty = true;
                pthread_mutex_unlock(&r->mu);
            }
        }
        pthread_mutex_lock(&r->mu);
        if (!r->kicked && !r->stopping)
            cond_wait_ms(&r->cv, &r->mu, TICK_MS);
    }
    pthread_mutex_unlock(&r->mu);
    free(ends);
    free(led);
    free(recs);
    return NULL;
}

/* ---- follower side -------------------------------------------------------------------------- */

static void replayed(void *ud, eddy_err err, uint64_t next_seq)
{
    completion_signal(ud, err, next_seq);
}

eddy_err replica_batch_check(const Eddy__State__V1__ReplicaPartitionData *d, uint64_t pos)
{
    uint32_t p = d->partition;
    if (d->from_seq != pos || d->next_seq < d->from_seq) {
        log_warn("msg=\"replica batch refused: gap\" partition=%u from_seq=%" PRIu64
                 " position=%" PRIu64,
                 p, d->from_seq, pos);
        return EDDY_ERR_INVALID;
    }
    uint64_t min = d->from_seq;
    for (size_t i = 0; i < d->n_records; i++) {
        const Eddy__State__V1__ReplicaRecord *x = d->records[i];
        if (x->seq < min || x->seq >= d->next_seq) {
            log_warn("msg=\"replica batch refused: record out of order\" partition=%u "
                     "seq=%" PRIu64 " expected_at_least=%" PRIu64 " batch_end=%" PRIu64,
                     p, x->seq, min, d->next_seq);
            return EDDY_ERR_INVALID;
        }
        if (record_crc(x->seq, x->record.data, x->record.len) != x->crc32c) {
            log_warn("msg=\"replica batch refused: bad checksum\" partition=%u seq=%" PRIu64, p,
                     x->seq);
            return EDDY_ERR_CORRUPT;
        }
        min = x->seq + 1;
    }
    return EDDY_OK;
}

/* One partition's batch of a fetch answer on its way through engine_replay. The batches
 * of every partition in an answer are handed to the engine before the first is waited for,
 * so they share its group commits (one synced write for many partitions, not one each: a
 * new follower copies ~P/N partitions at once after a failover). */
struct follow_job {
    const Eddy__State__V1__ReplicaPartitionData *d; /* borrowed from the answer */
    struct engine_log_entry *e;
    uint64_t epoch, pos;
    int64_t t0;
    bool started;          /* in the engine: the claim is held, 'w' will be signalled */
    struct completion w;
};

/* Check d's batch and hand it to the engine (follow_finish waits for it). An error means
 * nothing was handed over. Not concurrently for the same partition. */
static eddy_err follow_start(replica *r, struct follow_job *j,
                             const Eddy__State__V1__ReplicaPartitionData *d)
{
    uint32_t p = d->partition;
    *j = (struct follow_job){.d = d, .t0 = clock_mono_ms()};
    if (p >= r->o.partitions)
        return EDDY_ERR_INVALID;
    pthread_mutex_lock(&r->mu);
    struct part *pt = &r->parts[p];
    bool following = pt->following;
    j->epoch = pt->map.epoch;
    j->pos = pt->pos;
    pthread_mutex_unlock(&r->mu);
    if (!following || d->epoch != j->epoch) {
        log_warn("msg=\"replica batch refused: stale epoch\" partition=%u batch_epoch=%" PRIu64
                 " epoch=%" PRIu64 " following=%d",
                 p, d->epoch, j->epoch, following);
        return EDDY_ERR_NOT_OWNER;
    }
    eddy_err err = replica_batch_check(d, j->pos);
    if (err != EDDY_OK || d->n_records == 0)
        return err;
    j->e = calloc(d->n_records, sizeof(*j->e));
    if (!j->e)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < d->n_records; i++) {
        const Eddy__State__V1__ReplicaRecord *x = d->records[i];
        j->e[i] = (struct engine_log_entry){x->seq, x->record.data, x->record.len};
    }
    if (!engine_claim_partition(r->o.eng, p)) {
        err = EDDY_ERR_CONFLICT; /* a move writes the partition here: not ours to follow */
        goto fail;
    }
    completion_init(&j->w);
    err = engine_replay(r->o.eng, p, j->e, d->n_records, replayed, &j->w);
    if (err != EDDY_OK) {
        completion_wait(&j->w, err); /* destroys it */
        engine_release_partition(r->o.eng, p);
        goto fail;
    }
    j->started = true;
    return EDDY_OK;
fail:
    free(j->e);
    j->e = NULL;
    return err;
}

/* Wait for the batch follow_start handed over (if any), then move the partition's
 * position past it. */
static eddy_err follow_finish(replica *r, struct follow_job *j)
{
    const Eddy__State__V1__ReplicaPartitionData *d = j->d;
    uint32_t p = d->partition;
    uint64_t next = j->pos;
    if (j->started) {
        eddy_err err = completion_wait(&j->w, EDDY_OK);
        engine_release_partition(r->o.eng, p);
        free(j->e);
        j->e = NULL;
        j->started = false;
        if (err != EDDY_OK)
            return err;
        next = j->w.value;
    }
    if (next < d->next_seq) /* the leader's log has holes (DeleteUser) up to its end */
        next = d->next_seq;
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&r->mu);
    struct part *pt = &r->parts[p];
    if (pt->following && pt->map.epoch == j->epoch && pt->pos == j->pos) {
        pt->pos = next;
        pt->check_last = false; /* this leader answered from this copy's position */
        pt->replay_ms += now - j->t0;
        if (!pt->caught_up && next >= d->log_end) {
            pt->caught_up = true;
            log_info("msg=\"follower reached its leader's log end\" partition=%u "
                     "records=%" PRIu64 " replay_ms=%" PRId64 " since_follow_ms=%" PRId64,
                     p, next - pt->follow_pos, pt->replay_ms, now - pt->follow_ms);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return EDDY_OK;
}

eddy_err replica_follow_apply(replica *r, const Eddy__State__V1__ReplicaPartitionData *d)
{
    struct follow_job j;
    eddy_err err = follow_start(r, &j, d);
    return err == EDDY_OK ? follow_finish(r, &j) : err;
}

uint64_t replica_position(replica *r, uint32_t p)
{
    if (p >= r->o.partitions)
        return 0;
    pthread_mutex_lock(&r->mu);
    uint64_t pos = r->parts[p].pos;
    pthread_mutex_unlock(&r->mu);
    return pos;
}

struct last_rec {
    uint64_t seq;
    uint32_t crc;
};

static int take_last(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct last_rec *l = ud;
    size_t off = 3; /* partition u16, table byte */
    if (key_get_u64(k, klen, &off, &l->seq))
        l->crc = record_crc(l->seq, v, vlen);
    return 1;
}

/* This copy's last log record of partition p below 'below' (for its first fetch from a
 * leader). False when there is none or it cannot be read: nothing to compare then. */
static bool last_record(replica *r, uint32_t p, uint64_t below, struct last_rec *out)
{
    struct store_key start, end;
    key_init(&start, p, T_LOG);
    key_init(&end, p, T_LOG);
    key_u64(&end, below);
    bool found = false;
    *out = (struct last_rec){0, 0};
    return store_last(engine_store(r->o.eng), &start, &end, take_last, out, &found) == EDDY_OK &&
           found;
}

/* The first fetch after this copy started following sends its last record: read those
 * not read yet (store reads outside mu). Fetch thread of 'leader'. */
static void read_last_records(replica *r, const char *leader)
{
    pthread_mutex_lock(&r->mu); /* one lock for the scan; released only for a read */
    for (uint32_t p = 0; p < r->o.partitions; p++) {
        struct part *pt = &r->parts[p];
        if (!pt->following || !pt->check_last || pt->has_last || pt->applying ||
            strcmp(pt->map.replicas[0], leader) != 0)
            continue;
        uint64_t pos = pt->pos, epoch = pt->map.epoch;
        pthread_mutex_unlock(&r->mu);
        struct last_rec l;
        bool found = last_record(r, p, pos, &l);
        pthread_mutex_lock(&r->mu);
        if (pt->following && pt->check_last && pt->pos == pos && pt->map.epoch == epoch) {
            pt->has_last = true; /* found or not: an empty log has nothing to compare */
            pt->last_seq = found ? l.seq : pos;
            pt->last_crc = l.crc;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

/* The leader answered for d's partition and its records are applied: remember its log end
 * and when, for replica_follower_lag. */
static void heard(replica *r, const Eddy__State__V1__ReplicaPartitionData *d)
{
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&r->mu);
    struct part *pt = &r->parts[d->partition];
    if (pt->following && pt->map.epoch == d->epoch) {
        pt->leader_end = d->log_end;
        pt->heard_ms = now;
    }
    pthread_mutex_unlock(&r->mu);
}

bool replica_follower_lag(replica *r, uint32_t p, uint64_t *lag_records, uint64_t *lag_ms)
{
    *lag_records = 0;
    *lag_ms = 0;
    if (!r || p >= r->o.partitions)
        return false;
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&r->mu);
    const struct part *pt = &r->parts[p];
    bool known = pt->following && pt->heard_ms > 0 && !pt->resync;
    if (known) {
        *lag_records = pt->leader_end > pt->pos ? pt->leader_end - pt->pos : 0;
        *lag_ms = now > pt->heard_ms ? (uint64_t)(now - pt->heard_ms) : 0;
    }
    pthread_mutex_unlock(&r->mu);
    return known;
}

/* Replace this copy of partition p with the leader's checkpoint (ReplicaSnapshot) and go
 * on fetching from its seq. A failed copy leaves the partition empty, position 0: the
 * next fetch starts over (from the log's start, or with another copy). Fetch thread. */
static eddy_err resync(replica *r, uint32_t p, uint64_t epoch, const char *addr)
{
    Eddy__State__V1__ReplicaSnapshotRequest req = EDDY__STATE__V1__REPLICA_SNAPSHOT_REQUEST__INIT;
    req.follower = r->self;
    req.partition = p;
    req.epoch = epoch;
    char what[64];
    snprintf(what, sizeof(what), "resync-p%" PRIu32, p);
    struct ckptcopy_stats st;
    uint64_t next = 0;
    rpc_channel *ch = peers_get(r->o.peers, addr);
    if (!engine_claim_partition(r->o.eng, p))
        return EDDY_ERR_CONFLICT; /* a move brings the partition here: nothing to do now */
    eddy_err err = ch ? ckptcopy_receive(r->o.eng, p, ch, SNAPSHOT_METHOD, &req.base,
                                         r->o.snapshot_timeout_ms, what, &st, &next)
                      : EDDY_ERR_UNAVAILABLE;
    engine_release_partition(r->o.eng, p);
    if (err != EDDY_OK) {
        engine_drop_partition(r->o.eng, p, NULL); /* never a partial copy */
        log_warn("msg=\"replica resync failed; retrying\" partition=%" PRIu32 " leader=%s "
                 "error=\"%s\" code=%d details=\"%s\"",
                 p, addr, eddy_strerror(err), ch ? (int)st.code : -1, ch ? st.details : "");
    } else {
        log_info("msg=\"replica copy replaced by the leader's checkpoint\" partition=%" PRIu32
                 " leader=%s seq=%" PRIu64 " records=%" PRIu64 " bytes=%" PRIu64
                 " copy_ms=%" PRId64,
                 p, addr, st.info.seq, st.info.records, st.info.bytes, st.total_ns / 1000000);
        if (r->o.metrics.resyncs)
            metric_counter_add(r->o.metrics.resyncs, 1);
    }
    pthread_mutex_lock(&r->mu);
    struct part *pt = &r->parts[p];
    if (pt->following && pt->map.epoch == epoch) {
        pt->pos = err == EDDY_OK ? next : 0;
        if (err == EDDY_OK && pt->resync_gen > pt->fgen)
            pt->fgen = pt->resync_gen;
        pt->check_last = false; /* the leader's own state at 'next' */
        pt->has_last = false;
        pt->resync = err != EDDY_OK;
    }
    pthread_mutex_unlock(&r->mu);
    return err;
}

/* The leader answered that this copy of d's partition cannot go on from its log. */
static void mark_resync(replica *r, const Eddy__State__V1__ReplicaPartitionData *d)
{
    if (d->partition >= r->o.partitions)
        return;
    pthread_mutex_lock(&r->mu);
    struct part *pt = &r->parts[d->partition];
    if (pt->following && pt->map.epoch == d->epoch && pt->pos == d->from_seq) {
        pt->resync = true;
        pt->resync_gen = d->generation; /* the checkpoint copied next has at least this */
    }
    pthread_mutex_unlock(&r->mu);
}

/* Resync the partitions of 'leader' the last answer said need it, one at a time. */
static eddy_err resync_pending(replica *r, const char *leader)
{
    eddy_err worst = EDDY_OK;
    pthread_mutex_lock(&r->mu); /* one lock for the scan; released only for a copy */
    for (uint32_t p = 0; p < r->o.partitions && !r->stopping; p++) {
        struct part *pt = &r->parts[p];
        if (!pt->following || !pt->resync || pt->applying ||
            strcmp(pt->map.replicas[0], leader) != 0 || !pt->map.leader_addr[0])
            continue;
        char addr[CLUSTER_ADDR_MAX];
        uint64_t epoch = pt->map.epoch;
        snprintf(addr, sizeof(addr), "%s", pt->map.leader_addr);
        pt->applying = true;
        pthread_mutex_unlock(&r->mu);
        eddy_err err = resync(r, p, epoch, addr);
        if (err != EDDY_OK)
            worst = err;
        pthread_mutex_lock(&r->mu);
        pt->applying = false;
    }
    pthread_mutex_unlock(&r->mu);
    return worst;
}

static void *fetch_main(void *arg)
{
    thread_name("repl-fetch");
    struct fetcher *ft = arg;
    replica *r = ft->r;
    uint32_t P = r->o.partitions;
    Eddy__State__V1__ReplicaFetchPartition *q = calloc(P ? P : 1, sizeof(*q));
    Eddy__State__V1__ReplicaFetchPartition **qp = calloc(P ? P : 1, sizeof(*qp));
    struct follow_job *jobs = calloc(P ? P : 1, sizeof(*jobs)); /* one per partition asked */
    int64_t backoff = 0;
    uint64_t failures = 0;
    char addr[CLUSTER_ADDR_MAX];
    if (!q || !qp || !jobs) {
        log_error("msg=\"replica fetch thread: out of memory\" leader=%s", ft->leader);
        goto out;
    }
    pthread_mutex_lock(&r->mu);
    while (!r->stopping) {
        pthread_mutex_unlock(&r->mu);
        eddy_err rs = resync_pending(r, ft->leader);
        read_last_records(r, ft->leader);
        pthread_mutex_lock(&r->mu);
        if (rs != EDDY_OK) {
            backoff = backoff ? backoff * 2 : BACKOFF_MIN_MS;
            if (backoff > BACKOFF_MAX_MS)
                backoff = BACKOFF_MAX_MS;
            cond_wait_ms(&r->fcv, &r->mu, backoff);
            continue;
        }
        size_t n = 0;
        for (uint32_t p = 0; p < P; p++) {
            struct part *pt = &r->parts[p];
            if (!pt->following || pt->applying || pt->resync ||
                strcmp(pt->map.replicas[0], ft->leader) != 0)
                continue;
            eddy__state__v1__replica_fetch_partition__init(&q[n]);
            q[n].partition = p;
            q[n].epoch = pt->map.epoch;
            q[n].next_seq = pt->pos;
            q[n].generation = pt->fgen;
            if (pt->check_last && pt->has_last) {
                q[n].check_last = true;
                q[n].last_seq = pt->last_seq;
                q[n].last_crc32c = pt->last_crc;
            }
            qp[n] = &q[n];
            snprintf(addr, sizeof(addr), "%s", pt->map.leader_addr);
            pt->applying = true;
            n++;
        }
        if (n == 0 || !addr[0]) {
            for (size_t i = 0; i < n; i++)
                r->parts[q[i].partition].applying = false;
            cond_wait_ms(&r->fcv, &r->mu, 500);
            continue;
        }
        pthread_mutex_unlock(&r->mu);
        Eddy__State__V1__ReplicaFetchRequest req = EDDY__STATE__V1__REPLICA_FETCH_REQUEST__INIT;
        req.follower = r->self;
        req.partitions = qp;
        req.n_partitions = n;
        req.max_wait_ms = (uint32_t)r->o.fetch_wait_ms;
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        rpc_channel *ch = peers_get(r->o.peers, addr);
        if (ch)
            rpc_invoke(ch, FETCH_METHOD, &req.base,
                       &eddy__state__v1__replica_fetch_response__descriptor,
                       r->o.fetch_wait_ms + r->o.rpc_timeout_ms, &resp, &res);
        else
            res = (struct rpc_result){GRPC_STATUS_RESOURCE_EXHAUSTED, "no channel", 0};
        eddy_err err = EDDY_OK;
        bool left_out = false; /* a partition the leader is still taking over */
        if (res.code == GRPC_STATUS_OK) {
            const Eddy__State__V1__ReplicaFetchResponse *fr =
                (const Eddy__State__V1__ReplicaFetchResponse *)resp;
            left_out = fr->n_partitions < n;
            size_t nj = 0; /* every partition's batch to the engine first, then the waits */
            for (size_t i = 0; i < fr->n_partitions && i < n; i++) {
                const Eddy__State__V1__ReplicaPartitionData *d = fr->partitions[i];
                if (d->log_truncated || d->diverged) {
                    log_warn("msg=\"replica copy cannot continue from the leader's log: "
                             "copying its checkpoint\" partition=%u position=%" PRIu64
                             " reason=%s",
                             d->partition, d->from_seq,
                             d->diverged ? "diverged" : "log_truncated");
                    mark_resync(r, d);
                    continue;
                }
                eddy_err e = follow_start(r, &jobs[nj], d);
                if (e == EDDY_OK)
                    nj++;
                else if (err == EDDY_OK)
                    err = e;
            }
            for (size_t i = 0; i < nj; i++) {
                eddy_err e = follow_finish(r, &jobs[i]);
                if (e == EDDY_OK)
                    heard(r, jobs[i].d);
                else if (err == EDDY_OK)
                    err = e;
            }
        } else if (failures++ % 50 == 0) {
            log_warn("msg=\"replica fetch failed\" leader=%s addr=%s code=%d error=\"%s\"",
                     ft->leader, addr, (int)res.code, res.details);
        }
        protobuf_c_message_free_unpacked(resp, NULL);
        if (res.code == GRPC_STATUS_OK && err == EDDY_OK) {
            backoff = left_out ? BACKOFF_MIN_MS : 0; /* it completes within moments */
        } else {
            backoff = backoff ? backoff * 2 : BACKOFF_MIN_MS;
            if (backoff > BACKOFF_MAX_MS)
                backoff = BACKOFF_MAX_MS;
        }
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < n; i++)
            r->parts[q[i].partition].applying = false;
        if (backoff && !r->stopping)
            cond_wait_ms(&r->fcv, &r->mu, backoff);
    }
    pthread_mutex_unlock(&r->mu);
out:
    free(q);
    free(qp);
    free(jobs);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

replica *replica_new(const struct replica_opts *o)
{
    replica *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->o = *o;
    if (r->o.lag_timeout_ms <= 0)
        r->o.lag_timeout_ms = 10000;
    if (r->o.fetch_wait_ms <= 0)
        r->o.fetch_wait_ms = 500;
    if (r->o.fetch_wait_ms > FETCH_MAX_WAIT_MS)
        r->o.fetch_wait_ms = FETCH_MAX_WAIT_MS;
    if (r->o.rpc_timeout_ms <= 0)
        r->o.rpc_timeout_ms = 5000;
    if (r->o.snapshot_timeout_ms <= 0)
        r->o.snapshot_timeout_ms = 600000;
    snprintf(r->self, sizeof(r->self), "%s", o->self ? o->self : "");
    snprintf(r->cluster, sizeof(r->cluster), "%s", o->cluster ? o->cluster : "");
    r->o.self = r->self;
    r->o.cluster = r->cluster;
    r->min_insync = 1;
    r->parts = calloc(o->partitions ? o->partitions : 1, sizeof(*r->parts));
    if (!r->parts) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    cond_init_mono(&r->cv);
    cond_init_mono(&r->fcv);
    pthread_cond_init(&r->scv, NULL);
    return r;
}

eddy_err replica_start(replica *r)
{
    pthread_mutex_lock(&r->mu);
    eddy_err err = EDDY_OK;
    if (!r->running && !r->stopping) {
        if (pthread_create(&r->thread, NULL, replica_main, r) != 0) {
            err = EDDY_ERR_NOMEM;
        } else {
            r->running = true;
            ensure_fetchers(r);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return err;
}

void replica_stop(replica *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    bool running = r->running;
    r->stopping = true;
    r->running = false;
    pthread_cond_broadcast(&r->cv);
    pthread_cond_broadcast(&r->fcv);
    struct parked *pk = r->parked;
    r->parked = NULL;
    struct waiter *done = NULL;
    struct held *held = NULL;
    int64_t now = clock_mono_ms();
    for (uint32_t p = 0; p < r->o.partitions; p++) {
        fail_all(&r->parts[p], &done);
        release_held(r, &r->parts[p], now, true, &held);
    }
    size_t nf = r->nfetchers;
    r->nfetchers = 0;
    pthread_mutex_unlock(&r->mu);
    if (running)
        pthread_join(r->thread, NULL);
    atomic_store(&r->cancel, true); /* the snapshot streams end at their next piece */
    pthread_mutex_lock(&r->mu);
    while (r->snapshots > 0)
        pthread_cond_wait(&r->scv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < nf; i++) {
        pthread_join(r->fetchers[i]->t, NULL);
        free(r->fetchers[i]);
    }
    while (pk) {
        struct parked *next = pk->next;
        rpc_reply_error(pk->call, GRPC_STATUS_UNAVAILABLE, "node stopping");
        free(pk);
        pk = next;
    }
    run_waiters(done);
    run_held(held);
}

void replica_free(replica *r)
{
    if (!r)
        return;
    replica_stop(r);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    pthread_cond_destroy(&r->fcv);
    pthread_cond_destroy(&r->scv);
    free(r->parts);
    free(r);
}
