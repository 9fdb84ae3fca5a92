/* Copying a partition's checkpoint between state nodes (see ckptcopy.h). */
#include "node/cluster/ckptcopy.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/completion.h"
#include "common/thread.h"
#include "eddy/v1/state.pb-c.h"
#include "node/state/store.h"

/* ---- sending ------------------------------------------------------------------------------ */

/* Each piece of the streamed checkpoint as one CheckpointChunk, in order. */
struct chunk_sink {
    rpc_call *call;
    const atomic_bool *cancel;
    uint64_t off;
};

static eddy_err send_chunk(void *ud, const void *buf, size_t n)
{
    struct chunk_sink *cs = ud;
    Eddy__State__V1__CheckpointChunk ch = EDDY__STATE__V1__CHECKPOINT_CHUNK__INIT;
    ch.offset = cs->off;
    ch.data.data = (uint8_t *)buf;
    ch.data.len = n;
    eddy_err err;
    do { /* the receiver reads slower than the snapshot: wait for the window */
        if (cs->cancel && atomic_load(cs->cancel))
            return EDDY_ERR_UNAVAILABLE;
        if ((err = rpc_stream_send(cs->call, &ch.base)) == EDDY_ERR_FULL)
            usleep(1000);
    } while (err == EDDY_ERR_FULL);
    cs->off += n;
    return err;
}

eddy_err ckptcopy_send(engine *eng, uint32_t p, rpc_call *c, const atomic_bool *cancel,
                       struct checkpoint_info *out)
{
    /* streamed from one snapshot as it is read: no file, no fsync on this side (the
     * receiver checks the CRC and the length at the end) */
    struct chunk_sink cs = {c, cancel, 0};
    return checkpoint_stream(engine_options(eng)->checkpoint_key, engine_store(eng), p,
                             send_chunk, &cs, out);
}

void ckptcopy_drain(rpc_call *c, const atomic_bool *cancel, int64_t stall_ms)
{
    int last = rpc_stream_unsent(c);
    int64_t progress_ms = clock_mono_ms();
    while (last > 0 && !(cancel && atomic_load(cancel)) &&
           clock_mono_ms() - progress_ms < stall_ms) {
        usleep(1000);
        int n = rpc_stream_unsent(c);
        if (n < last)
            progress_ms = clock_mono_ms();
        last = n;
    }
}

/* ---- receiving ---------------------------------------------------------------------------- */

#define LOAD_BATCH_BYTES (4u << 20)

/* DESIGN. The checkpoint as it streams in: checked by a reader, its records cut into
 * batches of about LOAD_BATCH_BYTES, each written straight into LevelDB around the
 * engine's writer (the caller holds the partition: nothing else writes it, and it is not
 * served here yet; a copy that fails is dropped and started again) by a thread of the
 * copy's own while the receiving thread reads and checks the next batch: one batch in
 * flight. Each batch was a writer job of its own, the receiver waiting for it: under a
 * move's load the hand-off (the writer's queue, the group in flight it waits for, the
 * partition's OUTBOX counted before and after every job) took longer than the LevelDB
 * writes, and the stream stood still during each write (bench/move.sh, round 4 in
 * docs/BENCHMARKS.md). The engine takes the loaded partition in one exclusive job at the
 * end; the OUTBOX records are counted as each batch lands. */
struct batch_writer {
    pthread_t thread;
    pthread_mutex_t mu;          /* guards the fields below */
    pthread_cond_t cv;           /* a batch handed over, written, or the stop */
    engine *eng;
    struct store_key start, end;
    store_batch *b;              /* the batch to write (NULL: none); freed by the thread */
    uint64_t outbox;             /* its OUTBOX records */
    bool stop;
    eddy_err err;                /* the first failed write: no later batch is written */
    int64_t write_ns;
    uint64_t batches;
};

static void *batch_writer_main(void *arg)
{
    thread_name("ckpt-load");
    struct batch_writer *bw = arg;
    pthread_mutex_lock(&bw->mu);
    for (;;) {
        while (!bw->b && !bw->stop)
            pthread_cond_wait(&bw->cv, &bw->mu);
        if (!bw->b)
            break;
        pthread_mutex_unlock(&bw->mu);
        int64_t t0 = clock_mono_ns();
        /* not synced: the whole copy is made durable once, at its end (ckptcopy_receive) */
        eddy_err err = store_replace_range_nosync(engine_store(bw->eng), &bw->start, &bw->end,
                                                  bw->b, NULL);
        if (err == EDDY_OK)
            engine_outbox_loaded(bw->eng, bw->outbox);
        store_batch_free(bw->b);
        pthread_mutex_lock(&bw->mu);
        bw->write_ns += clock_mono_ns() - t0;
        bw->batches++;
        bw->b = NULL;
        if (bw->err == EDDY_OK)
            bw->err = err;
        pthread_cond_broadcast(&bw->cv);
    }
    pthread_mutex_unlock(&bw->mu);
    return NULL;
}

/* Wait until the batch in flight is written (under mu); *wait_ns grows by the wait. */
static void batch_writer_idle(struct batch_writer *bw, int64_t *wait_ns)
{
    int64_t t0 = clock_mono_ns();
    while (bw->b)
        pthread_cond_wait(&bw->cv, &bw->mu);
    *wait_ns += clock_mono_ns() - t0;
}

struct loader {
    engine *eng;
    uint32_t p;
    checkpoint_reader *rd;
    struct store_range_loader rl;
    struct batch_writer bw;
    bool bw_started;
    uint64_t received;           /* bytes of the stream so far */
    uint64_t outbox;             /* OUTBOX records in the batch being filled */
    struct ckptcopy_stats *st;
    eddy_err err;
};

/* Hand a full batch to the writing thread, once it has written the one before. */
static eddy_err write_batch(void *ud, const struct store_key *start, const struct store_key *end,
                            store_batch *b)
{
    struct loader *ld = ud;
    struct batch_writer *bw = &ld->bw;
    pthread_mutex_lock(&bw->mu);
    batch_writer_idle(bw, &ld->st->wait_ns);
    eddy_err err = bw->err;
    if (err == EDDY_OK) {
        bw->start = *start;
        bw->end = *end;
        bw->b = b;
        bw->outbox = ld->outbox;
        pthread_cond_broadcast(&bw->cv);
    } else {
        store_batch_free(b);
    }
    pthread_mutex_unlock(&bw->mu);
    ld->outbox = 0;
    return err;
}

static eddy_err loader_start(struct loader *ld)
{
    struct batch_writer *bw = &ld->bw;
    bw->eng = ld->eng;
    pthread_mutex_init(&bw->mu, NULL);
    pthread_cond_init(&bw->cv, NULL);
    ld->bw_started = pthread_create(&bw->thread, NULL, batch_writer_main, bw) == 0;
    if (ld->bw_started)
        return EDDY_OK;
    pthread_mutex_destroy(&bw->mu);
    pthread_cond_destroy(&bw->cv);
    return EDDY_ERR_NOMEM;
}

/* Wait for the last batch, stop the thread; the first failed write's error. */
static eddy_err loader_stop(struct loader *ld)
{
    struct batch_writer *bw = &ld->bw;
    if (!ld->bw_started)
        return EDDY_OK;
    pthread_mutex_lock(&bw->mu);
    batch_writer_idle(bw, &ld->st->wait_ns);
    bw->stop = true;
    pthread_cond_broadcast(&bw->cv);
    eddy_err err = bw->err;
    ld->st->write_ns = bw->write_ns;
    ld->st->batches = bw->batches;
    pthread_mutex_unlock(&bw->mu);
    pthread_join(bw->thread, NULL);
    pthread_mutex_destroy(&bw->mu);
    pthread_cond_destroy(&bw->cv);
    ld->bw_started = false;
    return err;
}

static eddy_err load_record(void *ud, const unsigned char *key, size_t klen,
                            const unsigned char *val, size_t vlen)
{
    struct loader *ld = ud;
    eddy_err err = store_range_loader_put(&ld->rl, key, klen, val, vlen);
    /* after the put: one that ends a batch hands the batch before this record */
    ld->outbox += err == EDDY_OK && key[2] == T_OUTBOX;
    return err;
}

/* The engine took the loaded partition (engine_take_partition). */
static void taken(void *ud, eddy_err err)
{
    completion_signal(ud, err, 0);
}

static eddy_err take_loaded(struct loader *ld)
{
    struct completion w;
    completion_init(&w);
    int64_t t0 = clock_mono_ns();
    eddy_err err = completion_wait(&w, engine_take_partition(ld->eng, ld->p, taken, &w));
    ld->st->take_ns = clock_mono_ns() - t0;
    return err;
}

static int on_chunk(void *ud, const ProtobufCMessage *msg)
{
    struct loader *ld = ud;
    const Eddy__State__V1__CheckpointChunk *ch = (const Eddy__State__V1__CheckpointChunk *)msg;
    if (ch->offset != ld->received) {
        ld->err = EDDY_ERR_CORRUPT;
        return 1;
    }
    ld->received += ch->data.len;
    ld->err = checkpoint_reader_feed(ld->rd, ch->data.data, ch->data.len);
    return ld->err != EDDY_OK;
}

eddy_err ckptcopy_receive(engine *eng, uint32_t p, rpc_channel *ch, const char *method,
                          const ProtobufCMessage *req, int64_t timeout_ms, const char *what,
                          struct ckptcopy_stats *st, uint64_t *next_seq)
{
    memset(st, 0, sizeof(*st));
    st->code = GRPC_STATUS_OK;
    int64_t t0 = clock_mono_ns();
    struct loader ld = {.eng = eng, .p = p, .st = st, .err = EDDY_OK};
    eddy_err err = store_range_loader_init(&ld.rl, LOAD_BATCH_BYTES, write_batch, &ld);
    ld.rd = checkpoint_reader_new(engine_options(eng)->checkpoint_key, what, load_record, &ld);
    if (err == EDDY_OK)
        err = ld.rd ? engine_drop_partition(eng, p, NULL) : EDDY_ERR_NOMEM;
    if (err == EDDY_OK)
        err = loader_start(&ld);
    if (err == EDDY_OK) {
        struct rpc_result res;
        rpc_invoke_stream(ch, method, req, &eddy__state__v1__checkpoint_chunk__descriptor,
                          timeout_ms, on_chunk, &ld, &res);
        err = ld.err;
        if (err == EDDY_OK && res.code != GRPC_STATUS_OK) {
            st->code = res.code;
            snprintf(st->details, sizeof(st->details), "%s", res.details);
            err = EDDY_ERR_UNAVAILABLE;
        }
    }
    if (err == EDDY_OK)
        err = checkpoint_reader_finish(ld.rd, &st->info);
    if (err == EDDY_OK && st->info.partition != p)
        err = EDDY_ERR_CORRUPT;
    if (err == EDDY_OK) {
        struct store_key start, end;
        start.len = 0;
        key_u16(&start, (uint16_t)p);
        key_prefix_end(&start, &end);
        err = store_range_loader_finish(&ld.rl, &end);
    }
    eddy_err werr = loader_stop(&ld); /* also on an error: no batch outlives the call */
    if (err == EDDY_OK)
        err = werr;
    /* The batches went to LevelDB's log without a sync each (one fsync per 4 MiB held the
     * writer, and so every other partition's commits, for the disk's latency): one sync
     * of the logs now, before the copy can be tailed or served. A crash before it loses
     * at most this unfinished copy, which is copied again. */
    int64_t ts = clock_mono_ns();
    if (err == EDDY_OK)
        err = store_sync_log(engine_store(eng));
    st->sync_ns = clock_mono_ns() - ts;
    if (err == EDDY_OK)
        err = take_loaded(&ld);
    if (err == EDDY_OK) {
        struct engine_partition_view v;
        engine_partition(eng, p, &v);
        *next_seq = v.next_seq;
    }
    st->total_ns = clock_mono_ns() - t0;
    store_range_loader_release(&ld.rl);
    checkpoint_reader_free(ld.rd);
    return err;
}
