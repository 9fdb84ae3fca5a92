/* The sending side's drain over a real loopback gRPC server: ckptcopy_drain returns only
 * once gRPC has sent every chunk queued for a slow client (a move's source holds its
 * freeze until then: the client may be a whole send queue behind the last chunk queued),
 * and gives up on a client that stopped reading. */
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
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "eddy/v1/state.pb-c.h"
#include "node/cluster/ckptcopy.h"

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

static void run_copy(struct run *r)
{
    struct rpc_server_opts so = {.listen = "127.0.0.1:0"};
    rpc_server *srv = rpc_server_new(&so);
    assert_non_null(srv);
    assert_int_equal(rpc_server_add_stream(srv, METHOD,
                                           &eddy__state__v1__fetch_checkpoint_request__descriptor,
                                           handle, NULL, r),
                     EDDY_OK);
    int port = 0;
    assert_int_equal(rpc_server_start(srv, &port), EDDY_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    struct rpc_channel_opts co = {.max_recv_bytes = 16 << 20};
    rpc_channel *ch = rpc_channel_open(addr, &co);
    assert_non_null(ch);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drain_waits_for_a_slow_reader),
        cmocka_unit_test(test_drain_gives_up_on_a_stalled_reader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
