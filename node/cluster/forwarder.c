/* Sending stage-2 OUTBOX records to the owners of their product partitions. */
#include "node/cluster/forwarder.h"

#include <stdlib.h>
#include <string.h>

#include "common/completion.h"
#include "common/log.h"
#include "common/partition.h"
#include "common/testhook.h"
#include "common/worker.h"
#include "eddy/v1/state.pb-c.h"

#define ROUND_MAX 512      /* records read per round */
#define MAX_DESTS 64       /* owners one record may go to */

struct forwarder {
    engine *eng;
    membership *mem;
    peers *peers;
    replica *repl;            /* NULL: every record may go */
    int64_t timeout_ms;
    struct worker worker;     /* kicked when the engine commits OUTBOX records */
    bool failed;              /* the forwarder thread's: the last round left records behind
                                 (refused or failed) */
    int64_t round_pause_ms;   /* EDDY_TEST_PAUSE_AT=forward:MS (forwarder_main); 0: none */
};

/* After a round that left records behind (a destination down, or partitions refused
 * while they move), the next one waits at least this long even when kicked: the records
 * cannot go sooner, and each round reads and decodes them again. */
#define RETRY_PAUSE_MS 200

struct rec {
    struct store_key key;
    Eddy__Store__V1__Stage2Batch *b;
    bool failed;
};

struct round {
    struct rec *recs;
    size_t n;
    uint64_t below;           /* the partition's records from this source seq on wait */
};

static int collect(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct round *r = ud;
    if (r->n == ROUND_MAX || klen > STORE_KEY_MAX)
        return 1;
    Eddy__Store__V1__Stage2Batch *b =
        eddy__store__v1__stage2_batch__unpack(NULL, vlen, (const uint8_t *)v);
    if (!b) {
        log_error("msg=\"undecodable OUTBOX record skipped\"");
        return 0;
    }
    if (b->source_seq >= r->below) { /* not on min-insync copies yet: nor what follows */
        eddy__store__v1__stage2_batch__free_unpacked(b, NULL);
        return 1;
    }
    struct rec *x = &r->recs[r->n++];
    memcpy(x->key.buf, k, klen);
    x->key.len = klen;
    x->b = b;
    x->failed = false;
    return 0;
}

/* The owners of the product partitions as this round sees them: each partition's owner is
 * read from the map once, when a record first touches it, and every decision of the round
 * (where a record goes, which partitions a Forward names, whether the record may be
 * removed) uses that one answer. Reading the map again per decision let a change between
 * two reads (a failover) send a record to no owner of one of its partitions and still
 * count it delivered. */
struct owners {
    int32_t *dest_of;                 /* [P] index in addr, OWNER_UNKNOWN, OWNER_UNREAD */
    char (*addr)[CLUSTER_ADDR_MAX];   /* [MAX_DESTS] distinct owner addresses */
    size_t n;
};

#define OWNER_UNREAD (-2)
#define OWNER_UNKNOWN (-1) /* no live owner now, or more owners than MAX_DESTS */

static int32_t owner_of(forwarder *f, struct owners *o, uint32_t q)
{
    if (o->dest_of[q] != OWNER_UNREAD)
        return o->dest_of[q];
    char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
    uint64_t epoch;
    int32_t d = OWNER_UNKNOWN;
    if (membership_owner(f->mem, q, owner, &epoch, addr)) {
        size_t k = 0;
        while (k < o->n && strcmp(o->addr[k], addr) != 0)
            k++;
        if (k == o->n && o->n < MAX_DESTS)
            snprintf(o->addr[o->n++], CLUSTER_ADDR_MAX, "%s", addr);
        if (k < o->n)
            d = (int32_t)k;
    }
    return o->dest_of[q] = d;
}

static void removed(void *ud, eddy_err err)
{
    completion_signal(ud, err, 0);
}

/* Remove the delivered records (r's records are in partition order) through each
 * partition's log, one OUTBOX_DONE record per partition; 'seqs' is scratch of ROUND_MAX.
 * The records that are not removed (this node stopped leading the partition, the write
 * failed) are sent again by whoever leads then: the receivers' marks drop them. */
static size_t remove_delivered(forwarder *f, const struct round *r, uint64_t *seqs)
{
    size_t done = 0;
    for (size_t i = 0; i < r->n;) {
        uint32_t p = r->recs[i].b->source_partition;
        size_t n = 0;
        for (; i < r->n && r->recs[i].b->source_partition == p; i++)
            if (!r->recs[i].failed)
                seqs[n++] = r->recs[i].b->source_seq;
        if (n == 0)
            continue;
        struct completion c;
        completion_init(&c);
        eddy_err err = completion_wait(&c, engine_outbox_forwarded(f->eng, p, seqs, n,
                                                                   removed, &c));
        if (err == EDDY_OK)
            done += n;
        else
            log_warn("msg=\"delivered stage-2 records not removed; sent again later\" "
                     "partition=%u records=%zu error=\"%s\"", p, n, eddy_strerror(err));
    }
    return done;
}

/* Send the round's records to destination d (one Forward, naming the partitions d owns
 * that they touch) and mark failed the records it did not take. This node is a destination
 * too when it owns a product partition: if it already did when the record was written,
 * the receiver's high-water mark makes the apply a no-op; if the partition moved here
 * since, this applies it. */
static bool send_to(forwarder *f, struct round *r, struct owners *o, int32_t d,
                    const uint32_t *qs, Eddy__Store__V1__Stage2Batch **batch, size_t *idx,
                    uint32_t *parts, bool *named)
{
    uint32_t P = membership_partitions(f->mem);
    size_t nb = 0, np = 0;
    memset(named, 0, P * sizeof(*named));
    for (size_t i = 0, at = 0; i < r->n; i++) {
        size_t total = product_records(r->recs[i].b);
        bool mine = false;
        for (size_t k = 0; k < total; k++) {
            uint32_t q = qs[at + k];
            if (o->dest_of[q] == d) {
                mine = true;
                if (!named[q]) {
                    named[q] = true;
                    parts[np++] = q;
                }
            }
        }
        if (mine) {
            idx[nb] = i;
            batch[nb++] = r->recs[i].b;
        }
        at += total;
    }
    if (nb == 0)
        return true;
    Eddy__State__V1__ForwardRequest req = EDDY__STATE__V1__FORWARD_REQUEST__INIT;
    req.batches = batch;
    req.n_batches = nb;
    req.partitions = parts;
    req.n_partitions = np;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_channel *ch = peers_get(f->peers, o->addr[d]);
    if (ch)
        rpc_invoke(ch, "/eddy.state.v1.State/Forward", &req.base,
                   &eddy__state__v1__forward_response__descriptor, f->timeout_ms, &resp, &res);
    if (!ch || res.code != GRPC_STATUS_OK) {
        log_warn("msg=\"stage-2 forward failed; will retry\" to=%s error=\"%s\"", o->addr[d],
                 ch ? res.details : "no channel");
        for (size_t j = 0; j < nb; j++)
            r->recs[idx[j]].failed = true;
        if (resp)
            protobuf_c_message_free_unpacked(resp, NULL);
        return false;
    }
    /* the records that touch a refused partition stay for a later round */
    const Eddy__State__V1__ForwardResponse *fr = (const Eddy__State__V1__ForwardResponse *)resp;
    bool ok = fr->n_refused == 0;
    memset(named, 0, P * sizeof(*named));
    for (size_t k = 0; k < fr->n_refused; k++)
        if (fr->refused[k] < P)
            named[fr->refused[k]] = true;
    for (size_t i = 0, at = 0; i < r->n && !ok; i++) {
        size_t total = product_records(r->recs[i].b);
        for (size_t k = 0; k < total; k++)
            if (o->dest_of[qs[at + k]] == d && named[qs[at + k]])
                r->recs[i].failed = true;
        at += total;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return ok;
}

static size_t run_round(forwarder *f)
{
    uint32_t P = membership_partitions(f->mem);
    struct round r = {calloc(ROUND_MAX, sizeof(struct rec)), 0, UINT64_MAX};
    if (!r.recs)
        return 0;
    store *st = engine_store(f->eng);
    for (uint32_t p = 0; p < P && r.n < ROUND_MAX; p++) {
        struct store_key start, end;
        uint64_t epoch;
        if (!membership_owns(f->mem, p, &epoch))
            continue; /* a follower's copy: its leader forwards and removes the records */
        r.below = f->repl ? replica_committed(f->repl, p) : UINT64_MAX;
        key_init(&start, p, T_OUTBOX);
        key_prefix_end(&start, &end);
        store_scan(st, &start, &end, collect, &r);
    }
    size_t nq = 0; /* product records of the round */
    for (size_t i = 0; i < r.n; i++)
        nq += product_records(r.recs[i].b);
    struct owners o = {calloc(P, sizeof(int32_t)), calloc(MAX_DESTS, CLUSTER_ADDR_MAX), 0};
    uint32_t *qs = calloc(nq ? nq : 1, sizeof(*qs)); /* each product record's partition */
    Eddy__Store__V1__Stage2Batch **batch = calloc(ROUND_MAX, sizeof(*batch));
    size_t *idx = calloc(ROUND_MAX, sizeof(*idx));
    uint64_t *seqs = calloc(ROUND_MAX, sizeof(*seqs));
    uint32_t *parts = calloc(P, sizeof(*parts));
    bool *named = calloc(P, sizeof(*named));
    size_t done = 0, failures = 0;
    if (!o.dest_of || !o.addr || !qs || !batch || !idx || !seqs || !parts || !named) {
        failures = 1;
        goto out;
    }
    for (uint32_t q = 0; q < P; q++)
        o.dest_of[q] = OWNER_UNREAD;
    for (size_t i = 0, at = 0; i < r.n; i++) {
        size_t total = product_records(r.recs[i].b);
        for (size_t k = 0; k < total; k++, at++) {
            qs[at] = partition_of_product(product_record_key(r.recs[i].b, k), P);
            if (owner_of(f, &o, qs[at]) == OWNER_UNKNOWN)
                r.recs[i].failed = true; /* no live owner now: kept for later */
        }
    }
    for (size_t d = 0; d < o.n; d++)
        failures += !send_to(f, &r, &o, (int32_t)d, qs, batch, idx, parts, named);
    done = remove_delivered(f, &r, seqs);
out:
    for (size_t i = 0; i < r.n; i++)
        eddy__store__v1__stage2_batch__free_unpacked(r.recs[i].b, NULL);
    free(r.recs);
    free(o.dest_of);
    free(o.addr);
    free(qs);
    free(batch);
    free(idx);
    free(seqs);
    free(parts);
    free(named);
    f->failed = failures > 0;
    /* a full round means more may be waiting; a failure means wait before retrying */
    return r.n == ROUND_MAX && done == r.n ? 1 : 0;
}

static void forwarder_main(struct worker *w, void *arg)
{
    forwarder *f = arg;
    bool more = true; /* records left by a previous run */
    /* after a full round, go again at once (a kick meanwhile is served by it) */
    while (worker_wait(w, more ? 0 : 1000)) {
        if (f->failed && !worker_sleep(w, RETRY_PAUSE_MS))
            break; /* kicks do not shorten the pause */
        /* test hook: rounds MS apart, so that the OUTBOX rows of a partition moving out
         * are still in the copy at the flip and no OUTBOX_DONE of this node's lands at the
         * copy's end (integration.moves, LostEventAfterFlipTest) */
        if (f->round_pause_ms > 0 && !worker_sleep(w, f->round_pause_ms))
            break;
        more = run_round(f) > 0;
    }
}

forwarder *forwarder_start(engine *eng, membership *mem, peers *pe, replica *repl,
                           int64_t timeout_ms)
{
    forwarder *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->eng = eng;
    f->mem = mem;
    f->peers = pe;
    f->repl = repl;
    f->timeout_ms = timeout_ms;
    f->round_pause_ms = testhook_pause_ms("forward");
    if (worker_start(&f->worker, "forwarder", forwarder_main, f) != EDDY_OK) {
        free(f);
        return NULL;
    }
    return f;
}

void forwarder_kick(void *fwd)
{
    forwarder *f = fwd;
    worker_kick(&f->worker);
}

void forwarder_stop(forwarder *f)
{
    if (!f)
        return;
    worker_stop(&f->worker);
    free(f);
}
