/* Copying a partition's checkpoint between state nodes (see ckptcopy.h). */
#include "node/cluster/ckptcopy.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/completion.h"
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

/* One range of the partition written by the writer thread (an exclusive job), and the
 * receiver waiting for it. */
struct range_put {
    struct store_key start, end;
    const store_batch *b;
    struct completion w;
    int64_t queued_ns;           /* when it was handed to the writer */
    int64_t start_ns, write_ns;  /* when the writer started it, its time in it (set
                                    before the signal) */
};

static eddy_err put_range(void *ud, engine *e)
{
    struct range_put *rp = ud;
    int64_t t0 = rp->start_ns = clock_mono_ns();
    /* not synced: the whole copy is made durable once, at its end (ckptcopy_receive) */
    eddy_err err = store_replace_range_nosync(engine_store(e), &rp->start, &rp->end, rp->b, NULL);
    rp->write_ns = clock_mono_ns() - t0;
    return err;
}

static void range_done(void *ud, eddy_err err)
{
    struct range_put *rp = ud;
    completion_signal(&rp->w, err, 0);
}

/* The checkpoint as it streams in: checked by a reader, its records written in batches
 * of about LOAD_BATCH_BYTES, each in a writer job of its own (the writer goes on with the
 * other partitions in between; the partition is not served here yet, and a copy that
 * fails is dropped and started again). The receiver waits for each batch before it reads
 * on: queueing the next one while the writer writes (tried, bench/move.sh round 3 in
 * docs/BENCHMARKS.md) was no faster on a busy machine, where the parsing then takes CPU
 * from the writer, which bounds the copy; meanwhile the sender runs ahead in its send
 * queue and gRPC's window. */
struct loader {
    engine *eng;
    uint32_t p;
    checkpoint_reader *rd;
    struct store_range_loader rl;
    uint64_t received;           /* bytes of the stream so far */
    struct ckptcopy_stats *st;
    eddy_err err;
};

/* Write one batch as a writer job and wait for it. */
static eddy_err write_batch(void *ud, const struct store_key *start, const struct store_key *end,
                            const store_batch *b)
{
    struct loader *ld = ud;
    struct range_put rp = {.start = *start, .end = *end, .b = b};
    completion_init(&rp.w);
    int64_t t0 = rp.queued_ns = clock_mono_ns();
    eddy_err err = completion_wait(
        &rp.w, engine_exclusive_partition(ld->eng, ld->p, put_range, range_done, &rp));
    ld->st->wait_ns += clock_mono_ns() - t0;
    ld->st->write_ns += rp.write_ns;
    if (rp.start_ns)
        ld->st->queue_ns += rp.start_ns - t0;
    ld->st->batches++;
    return err;
}

static eddy_err load_record(void *ud, const unsigned char *key, size_t klen,
                            const unsigned char *val, size_t vlen)
{
    struct loader *ld = ud;
    return store_range_loader_put(&ld->rl, key, klen, val, vlen);
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
    /* The batches went to LevelDB's log without a sync each (one fsync per 4 MiB held the
     * writer, and so every other partition's commits, for the disk's latency): one sync
     * of the logs now, before the copy can be tailed or served. A crash before it loses
     * at most this unfinished copy, which is copied again. */
    int64_t ts = clock_mono_ns();
    if (err == EDDY_OK)
        err = store_sync_log(engine_store(eng));
    st->sync_ns = clock_mono_ns() - ts;
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
