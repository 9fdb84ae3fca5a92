/* Sending stage-2 OUTBOX records to the owners of their product partitions. */
#include "node/cluster/forwarder.h"

#include <stdlib.h>
#include <string.h>

#include "common/completion.h"
#include "common/log.h"
#include "common/partition.h"
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

/* The distinct owner addresses of the partitions 'b' touches. */
static size_t destinations(forwarder *f, const Eddy__Store__V1__Stage2Batch *b,
                           char (*addrs)[CLUSTER_ADDR_MAX], bool *unknown)
{
    uint32_t P = membership_partitions(f->mem);
    size_t n = 0;
    *unknown = false;
    size_t total = product_records(b);
    for (size_t i = 0; i < total; i++) {
        const char *pid = product_record_key(b, i);
        uint32_t q = partition_of_product(pid, P);
        char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
        uint64_t epoch;
        if (!membership_owner(f->mem, q, owner, &epoch, addr)) {
            *unknown = true; /* no live owner now: keep the record for later */
            continue;
        }
        /* This node too, when it owns the partition now: if it already did when the
         * record was written, the record was applied then and the receiver's high-water
         * mark makes this a no-op; if the partition moved here since, this applies it. */
        size_t k = 0;
        while (k < n && strcmp(addrs[k], addr) != 0)
            k++;
        if (k == n && n < MAX_DESTS)
            snprintf(addrs[n++], CLUSTER_ADDR_MAX, "%s", addr);
    }
    return n;
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
    /* one Forward per destination with every record bound there */
    char (*addrs)[CLUSTER_ADDR_MAX] = calloc(MAX_DESTS, CLUSTER_ADDR_MAX);
    Eddy__Store__V1__Stage2Batch **batch = calloc(ROUND_MAX, sizeof(*batch));
    size_t *idx = calloc(ROUND_MAX, sizeof(*idx));
    uint64_t *seqs = calloc(ROUND_MAX, sizeof(*seqs));
    char (*dest)[CLUSTER_ADDR_MAX] = calloc(MAX_DESTS, CLUSTER_ADDR_MAX);
    size_t ndest = 0, done = 0, failures = 0;
    uint32_t *parts = NULL;
    bool *named = NULL;
    if (!addrs || !batch || !idx || !dest || !seqs)
        goto out;
    for (size_t i = 0; i < r.n; i++) {
        bool unknown;
        size_t n = destinations(f, r.recs[i].b, addrs, &unknown);
        r.recs[i].failed = unknown;
        for (size_t k = 0; k < n; k++) {
            size_t d = 0;
            while (d < ndest && strcmp(dest[d], addrs[k]) != 0)
                d++;
            if (d == ndest && ndest < MAX_DESTS)
                snprintf(dest[ndest++], CLUSTER_ADDR_MAX, "%s", addrs[k]);
        }
    }
    parts = calloc(P, sizeof(*parts));
    named = calloc(P, sizeof(*named));
    if (!parts || !named)
        goto out;
    for (size_t d = 0; d < ndest; d++) {
        size_t nb = 0, np = 0;
        memset(named, 0, P * sizeof(*named));
        for (size_t i = 0; i < r.n; i++) {
            bool unknown;
            size_t n = destinations(f, r.recs[i].b, addrs, &unknown);
            for (size_t k = 0; k < n; k++) {
                if (strcmp(addrs[k], dest[d]) == 0) {
                    idx[nb] = i;
                    batch[nb++] = r.recs[i].b;
                    break;
                }
            }
        }
        /* name the partitions this destination owns as far as we know: it applies those
         * and refuses (in its answer) those that are not its own any more or moving */
        for (size_t j = 0; j < nb; j++) {
            size_t total = product_records(batch[j]);
            for (size_t k = 0; k < total; k++) {
                uint32_t q = partition_of_product(product_record_key(batch[j], k), P);
                char owner[CLUSTER_ID_MAX], addr[CLUSTER_ADDR_MAX];
                uint64_t epoch;
                if (!named[q] && membership_owner(f->mem, q, owner, &epoch, addr) &&
                    strcmp(addr, dest[d]) == 0) {
                    named[q] = true;
                    parts[np++] = q;
                }
            }
        }
        Eddy__State__V1__ForwardRequest req = EDDY__STATE__V1__FORWARD_REQUEST__INIT;
        req.batches = batch;
        req.n_batches = nb;
        req.partitions = parts;
        req.n_partitions = np;
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        rpc_channel *ch = peers_get(f->peers, dest[d]);
        if (ch)
            rpc_invoke(ch, "/eddy.state.v1.State/Forward", &req.base,
                       &eddy__state__v1__forward_response__descriptor, f->timeout_ms, &resp,
                       &res);
        if (!ch || res.code != GRPC_STATUS_OK) {
            log_warn("msg=\"stage-2 forward failed; will retry\" to=%s error=\"%s\"", dest[d],
                     ch ? res.details : "no channel");
            for (size_t j = 0; j < nb; j++)
                r.recs[idx[j]].failed = true;
            failures++;
        } else {
            /* the records that touch a refused partition stay for a later round */
            const Eddy__State__V1__ForwardResponse *fr =
                (const Eddy__State__V1__ForwardResponse *)resp;
            memset(named, 0, P * sizeof(*named));
            for (size_t k = 0; k < fr->n_refused; k++)
                if (fr->refused[k] < P)
                    named[fr->refused[k]] = true;
            for (size_t j = 0; j < nb && fr->n_refused > 0; j++) {
                size_t total = product_records(batch[j]);
                for (size_t k = 0; k < total; k++) {
                    if (named[partition_of_product(product_record_key(batch[j], k), P)]) {
                        r.recs[idx[j]].failed = true;
                        break;
                    }
                }
            }
            failures += fr->n_refused > 0;
        }
        if (resp)
            protobuf_c_message_free_unpacked(resp, NULL);
    }
    done = remove_delivered(f, &r, seqs);
out:
    free(parts);
    free(named);
    for (size_t i = 0; i < r.n; i++)
        eddy__store__v1__stage2_batch__free_unpacked(r.recs[i].b, NULL);
    free(r.recs);
    free(addrs);
    free(batch);
    free(idx);
    free(seqs);
    free(dest);
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
