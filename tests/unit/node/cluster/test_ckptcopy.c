/* The sending side's drain over a real loopback gRPC server: ckptcopy_drain returns only
 * once gRPC has sent every chunk queued for a slow client (a move's source holds its
 * freeze until then: the client may be a whole send queue behind the last chunk queued),
 * and gives up on a client that stopped reading. The receiving side: a partition streamed
 * from one engine's store into another's, byte for byte, written around the receiving
 * engine's writer, with its OUTBOX counted. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/clock.h"
#include "common/crc32c.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "eddy/v1/state.pb-c.h"
#include "node/cluster/ckptcopy.h"
#include "tests/unit/node/state/engine_fixture.h"

#define METHOD "/eddy.state.v1.State/FetchCheckpoint"
#define CHUNKS 160            /* more than the server's send queue (64) */
#define CHUNK_BYTES (256u << 10)
#define STALL_MS 300

/* Shared by the handler thread (the source) and the test's thread (the client). */
struct run {
    int64_t stall_ms;
    bool until_full;          /* queue chunks only until the send queue is full */
    atomic_int received;      /* chunks the client has taken */
    atomic_int stop_at;       /* the client stops reading after this many (-1: never) */
    atomic_int unsent_after_queueing; /* the source's view once every chunk was queued */
    atomic_int received_at_drain;     /* the client's count when the drain returned */
    atomic_int unsent_at_drain;
    atomic_llong drain_ms;
    atomic_bool done;
};

static void handle(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    (void)msg;
    struct run *r = ud;
    static uint8_t data[CHUNK_BYTES];
    Eddy__State__V1__CheckpointChunk ch = EDDY__STATE__V1__CHECKPOINT_CHUNK__INIT;
    ch.data.data = data;
    ch.data.len = sizeof(data);
    eddy_err err = EDDY_OK;
    for (int i = 0; i < CHUNKS && err == EDDY_OK; i++) {
        ch.offset = (uint64_t)i * CHUNK_BYTES;
        while ((err = rpc_stream_send(c, &ch.base)) == EDDY_ERR_FULL && !r->until_full)
            usleep(1000);
    }
    if (err == EDDY_ERR_FULL) /* a reader that stopped: gRPC's window and the queue full */
        err = EDDY_OK;
    atomic_store(&r->unsent_after_queueing, rpc_stream_unsent(c));
    int64_t t0 = clock_mono_ms();
    ckptcopy_drain(c, NULL, r->stall_ms);
    atomic_store(&r->drain_ms, clock_mono_ms() - t0);
    atomic_store(&r->received_at_drain, atomic_load(&r->received));
    atomic_store(&r->unsent_at_drain, rpc_stream_unsent(c));
    atomic_store(&r->done, true);
    rpc_stream_finish(c, err == EDDY_OK ? GRPC_STATUS_OK : GRPC_STATUS_UNAVAILABLE, NULL);
}

/* A reader slower than the source: 3 ms per chunk, so the source queues everything long
 * before the client has it. */
static int on_chunk(void *ud, const ProtobufCMessage *msg)
{
    (void)msg;
    struct run *r = ud;
    int n = atomic_fetch_add(&r->received, 1) + 1;
    if (n == atomic_load(&r->stop_at)) { /* stops reading until the source gave up */
        while (!atomic_load(&r->done))
            usleep(1000);
        return 1;
    }
    usleep(3000);
    return 0;
}

/* A loopback server answering METHOD with 'fn' (ud: 'ud'), and a channel to it. */
static rpc_channel *serve_on_loopback(rpc_handler_fn *fn, void *ud, rpc_server **srv)
{
    struct rpc_server_opts so = {.listen = "127.0.0.1:0"};
    *srv = rpc_server_new(&so);
    assert_non_null(*srv);
    assert_int_equal(rpc_server_add_stream(*srv, METHOD,
                                           &eddy__state__v1__fetch_checkpoint_request__descriptor,
                                           fn, NULL, ud),
                     EDDY_OK);
    int port = 0;
    assert_int_equal(rpc_server_start(*srv, &port), EDDY_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    struct rpc_channel_opts co = {.max_recv_bytes = 16 << 20};
    rpc_channel *ch = rpc_channel_open(addr, &co);
    assert_non_null(ch);
    return ch;
}

static void run_copy(struct run *r)
{
    rpc_server *srv;
    rpc_channel *ch = serve_on_loopback(handle, r, &srv);
    Eddy__State__V1__FetchCheckpointRequest req = EDDY__STATE__V1__FETCH_CHECKPOINT_REQUEST__INIT;
    req.move_id = 1;
    struct rpc_result res;
    rpc_invoke_stream(ch, METHOD, &req.base, &eddy__state__v1__checkpoint_chunk__descriptor,
                      30000, on_chunk, r, &res);
    for (int i = 0; i < 5000 && !atomic_load(&r->done); i++)
        usleep(1000);
    assert_true(atomic_load(&r->done));
    rpc_channel_close(ch);
    rpc_server_free(srv);
}

static void test_drain_waits_for_a_slow_reader(void **state)
{
    (void)state;
    struct run r = {.stall_ms = 5000};
    atomic_init(&r.stop_at, -1);
    run_copy(&r);
    assert_int_equal(atomic_load(&r.received), CHUNKS);
    /* the source had queued everything while the client was far behind ... */
    assert_true(atomic_load(&r.unsent_after_queueing) > 0);
    /* ... and the drain returned once gRPC had sent it all */
    assert_int_equal(atomic_load(&r.unsent_at_drain), 0);
}

static void test_drain_gives_up_on_a_stalled_reader(void **state)
{
    (void)state;
    struct run r = {.stall_ms = STALL_MS, .until_full = true};
    atomic_init(&r.stop_at, 1);
    run_copy(&r);
    assert_int_equal(atomic_load(&r.received_at_drain), 1);
    assert_true(atomic_load(&r.unsent_at_drain) > 0);
    assert_true(atomic_load(&r.drain_ms) >= STALL_MS);
    assert_true(atomic_load(&r.drain_ms) < 10 * STALL_MS);
}

/* ---- receiving ---------------------------------------------------------------------------- */

#define PART 3
#define ROWS 3000          /* of ROW_BYTES: three load batches of 4 MiB */
#define ROW_BYTES 4096
#define OUTBOX_ROWS 25

/* The source and target engines, the target's writer held by a job of the test's while
 * the copy streams, and the receiving thread's result. */
struct copy {
    engine *src, *dst;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool held, release;       /* the target's writer in the test's job; let it go */
    rpc_channel *ch;
    struct ckptcopy_stats st;
    eddy_err err;
};

static eddy_err fill(void *ud, engine *e)
{
    (void)ud;
    store_batch *b = store_batch_new();
    assert_non_null(b);
    static unsigned char val[ROW_BYTES];
    struct store_key k, start, end;
    for (uint64_t i = 0; i < ROWS + OUTBOX_ROWS; i++) {
        key_init(&k, PART, i < ROWS ? T_CAT_POP : T_OUTBOX);
        key_u64(&k, i);
        memset(val, (int)(i & 0xff), sizeof(val));
        assert_int_equal(store_batch_put(b, k.buf, k.len, val, i < ROWS ? sizeof(val) : 16),
                         EDDY_OK);
    }
    start.len = 0;
    key_u16(&start, PART);
    key_prefix_end(&start, &end);
    eddy_err err = store_replace_range(engine_store(e), &start, &end, b, NULL);
    store_batch_free(b);
    return err;
}

/* Holds the target's writer until the test releases it. */
static eddy_err hold(void *ud, engine *e)
{
    (void)e;
    struct copy *cp = ud;
    pthread_mutex_lock(&cp->mu);
    cp->held = true;
    pthread_cond_broadcast(&cp->cv);
    while (!cp->release)
        pthread_cond_wait(&cp->cv, &cp->mu);
    pthread_mutex_unlock(&cp->mu);
    return EDDY_OK;
}

static void job_done(void *ud, eddy_err err)
{
    (void)ud;
    assert_int_equal(err, EDDY_OK);
}

static void release_writer(struct copy *cp)
{
    pthread_mutex_lock(&cp->mu);
    cp->release = true;
    pthread_cond_broadcast(&cp->cv);
    pthread_mutex_unlock(&cp->mu);
}

/* The source: once the request arrives (the target has dropped its copy by then), the
 * target's writer is held; then the partition is streamed. */
static void serve(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    (void)msg;
    struct copy *cp = ud;
    eddy_err err = engine_exclusive(cp->dst, hold, job_done, cp);
    pthread_mutex_lock(&cp->mu);
    while (err == EDDY_OK && !cp->held)
        pthread_cond_wait(&cp->cv, &cp->mu);
    pthread_mutex_unlock(&cp->mu);
    struct checkpoint_info info;
    if (err == EDDY_OK)
        err = ckptcopy_send(cp->src, PART, c, NULL, &info);
    ckptcopy_drain(c, NULL, 5000);
    rpc_stream_finish(c, err == EDDY_OK ? GRPC_STATUS_OK : GRPC_STATUS_INTERNAL, NULL);
}

static void *receive(void *arg)
{
    struct copy *cp = arg;
    Eddy__State__V1__FetchCheckpointRequest req = EDDY__STATE__V1__FETCH_CHECKPOINT_REQUEST__INIT;
    req.partition = PART;
    uint64_t next_seq;
    cp->err = ckptcopy_receive(cp->dst, PART, cp->ch, METHOD, &req.base, 30000, "test", &cp->st,
                               &next_seq);
    return NULL;
}

/* The rows of partition PART: their count and a CRC-32C over every key and value. */
struct digest {
    uint64_t rows;
    uint32_t crc;
};

static int digest_row(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct digest *d = ud;
    d->rows++;
    d->crc = crc32c_update(d->crc, &klen, sizeof(klen));
    d->crc = crc32c_update(d->crc, k, klen);
    d->crc = crc32c_update(d->crc, &vlen, sizeof(vlen));
    d->crc = crc32c_update(d->crc, v, vlen);
    return 0;
}

static struct digest digest_of(engine *e)
{
    struct digest d = {0, 0};
    struct store_key start, end;
    start.len = 0;
    key_u16(&start, PART);
    key_prefix_end(&start, &end);
    assert_int_equal(store_scan(engine_store(e), &start, &end, digest_row, &d), EDDY_OK);
    return d;
}

/* The copy's batches reach the target's store while its writer is busy with something
 * else (each was a writer job: the copy stood still until the writer was free), the
 * partition ends byte for byte the source's, and the target counts its OUTBOX rows. */
static void test_receive_writes_around_the_writer(void **state)
{
    (void)state;
    char *src_dir = tmpdir_for("ckptcopy-src"), *dst_dir = tmpdir_for("ckptcopy-dst");
    struct copy cp = {.src = open_test_engine(src_dir), .dst = open_test_engine(dst_dir)};
    pthread_mutex_init(&cp.mu, NULL);
    pthread_cond_init(&cp.cv, NULL);
    assert_int_equal(engine_exclusive_partition(cp.src, PART, fill, job_done, NULL), EDDY_OK);
    assert_int_equal(engine_flush(cp.src), EDDY_OK);
    struct digest want = digest_of(cp.src);
    assert_int_equal(want.rows, ROWS + OUTBOX_ROWS);

    rpc_server *srv;
    cp.ch = serve_on_loopback(serve, &cp, &srv);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, receive, &cp), 0);

    /* every row lands while the writer is held (the final exclusive job waits for it) */
    struct digest got = {0, 0};
    int64_t deadline = clock_mono_ms() + 20000;
    while (got.rows < want.rows && clock_mono_ms() < deadline) {
        usleep(10000);
        got = digest_of(cp.dst);
    }
    release_writer(&cp);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(got.rows, want.rows);
    assert_int_equal(cp.err, EDDY_OK);
    assert_true(cp.st.batches >= 3);

    got = digest_of(cp.dst);
    assert_int_equal(got.rows, want.rows);
    assert_int_equal(got.crc, want.crc);
    assert_int_equal(engine_outbox_depth(cp.dst), OUTBOX_ROWS);
    /* a copy dropped again leaves no OUTBOX count behind */
    assert_int_equal(engine_drop_partition(cp.dst, PART, NULL), EDDY_OK);
    assert_int_equal(engine_outbox_depth(cp.dst), 0);

    rpc_channel_close(cp.ch);
    rpc_server_free(srv);
    engine_close(cp.src);
    engine_close(cp.dst);
    pthread_mutex_destroy(&cp.mu);
    pthread_cond_destroy(&cp.cv);
    rmrf(src_dir);
    rmrf(dst_dir);
    free(src_dir);
    free(dst_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drain_waits_for_a_slow_reader),
        cmocka_unit_test(test_drain_gives_up_on_a_stalled_reader),
        cmocka_unit_test(test_receive_writes_around_the_writer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
