/* eddy-ref-grpc: the cost of the RPC alone. A trivial server (common/rpc_server.c, the
 * node's defaults: 1 CQ thread, 2 handler threads) answers every call at once, and a
 * client (common/rpc_client.c) sends it unary calls carrying an IngestRequest of --batch
 * events from eddy-bench's generator (the same bytes as an Ingest batch), from --streams
 * streams with up to --inflight calls each, over loopback, in one process. Eddy's Ingest
 * cannot be faster than this with the same batches and concurrency.
 *
 * DESIGN: completions only post a semaphore; each stream's thread sends the next call, as
 * eddy-bench does, so the CQ thread never packs a request. */
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/rpc_client.h"
#include "common/rpc_server.h"
#include "eddy/v1/eddy.pb-c.h"
#include "gen.h"
#include "latency.h"

#define METHOD "/eddy.bench.Ref/Ingest"

struct ref {
    int64_t batch, inflight, duration_ms, timeout_ms;
    Eddy__V1__IngestRequest req;     /* the batch every call sends (read-only) */
    struct latency lat;
    atomic_bool stop;
    atomic_uint_fast64_t ok, errors, events;
    atomic_int_fast64_t last_ns;
    int64_t start_ns;
};

struct ref_stream {
    struct ref *r;
    rpc_channel *ch;
    sem_t free_slots;
    atomic_int busy;
    pthread_t thread;
};

struct ref_call {
    struct ref_stream *st;
    int64_t sent_ns;
};

static void handle(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    const Eddy__V1__IngestRequest *in = (const Eddy__V1__IngestRequest *)req;
    Eddy__V1__IngestResponse resp = EDDY__V1__INGEST_RESPONSE__INIT;

    resp.accepted = (uint32_t)in->n_events;
    rpc_reply(call, &resp.base);
}

static void done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct ref_call *c = ud;
    struct ref_stream *st = c->st;
    struct ref *r = st->r;
    int64_t now = clock_mono_ns();

    if (res->code == GRPC_STATUS_OK) {
        latency_add(&r->lat, (double)(now - c->sent_ns) / 1e6);
        atomic_fetch_add(&r->ok, 1);
        atomic_fetch_add(&r->events, (uint64_t)r->batch);
        int64_t prev = atomic_load(&r->last_ns);
        while (prev < now && !atomic_compare_exchange_weak(&r->last_ns, &prev, now))
            ;
    } else {
        atomic_fetch_add(&r->errors, 1);
    }
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    free(c);
    atomic_fetch_sub(&st->busy, 1);
    sem_post(&st->free_slots);
}

static void *stream_main(void *arg)
{
    struct ref_stream *st = arg;
    struct ref *r = st->r;
    int64_t deadline = r->start_ns + r->duration_ms * 1000000LL;

    for (;;) {
        sem_wait(&st->free_slots);
        if (clock_mono_ns() >= deadline)
            break;
        struct ref_call *c = malloc(sizeof(*c));
        if (!c) {
            atomic_fetch_add(&r->errors, 1);
            break;
        }
        c->st = st;
        c->sent_ns = clock_mono_ns();
        atomic_fetch_add(&st->busy, 1);
        if (rpc_invoke_async(st->ch, METHOD, &r->req.base, &eddy__v1__ingest_response__descriptor,
                             r->timeout_ms, done, c) != EDDY_OK) {
            atomic_fetch_sub(&st->busy, 1);
            atomic_fetch_add(&r->errors, 1);
            free(c);
            sem_post(&st->free_slots);
        }
    }
    while (atomic_load(&st->busy) > 0)
        sem_wait(&st->free_slots);
    return NULL;
}

int main(int argc, char **argv)
{
    static struct ref ref;
    struct ref *r = &ref;
    const char *output = "table", *scenario = "ref-grpc";
    int64_t streams = 4, seed = 1, server_threads = 2;
    r->batch = 500;
    r->inflight = 2;
    r->duration_ms = 5000;
    r->timeout_ms = 10000;
    const struct flag flags[] = {
        {"duration", FLAG_DURATION, &r->duration_ms, "how long to send", 1, 0},
        {"streams", FLAG_INT, &streams, "concurrent streams (one channel each)", 1, 256},
        {"inflight", FLAG_INT, &r->inflight, "calls in flight per stream", 1, 1024},
        {"batch", FLAG_INT, &r->batch, "events in each call's IngestRequest", 1, 100000},
        {"handler-threads", FLAG_INT, &server_threads, "server handler threads", 1, 64},
        {"seed", FLAG_INT, &seed, "generator seed", 0, 0},
        {"scenario", FLAG_STRING, &scenario, "label printed with the results", 0, 0},
        {"output", FLAG_STRING, &output, "table | json (-o json)", 0, 0},
    };
    const size_t nflags = sizeof(flags) / sizeof(flags[0]);
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    char errbuf[256];
    int first = 0, rc = 2, port = 0;
    rpc_server *srv = NULL;
    struct ref_stream *sts = NULL;
    struct gen_tables *tables = NULL;
    struct gen_event *ev = NULL;
    Eddy__V1__Event **ptrs = NULL;
    struct gen g;
    char target[64];

    latency_init(&r->lat, 4000000);
    if (!args)
        goto out;
    for (int i = 0; i < argc; i++)
        args[i] = strcmp(argv[i], "-o") == 0 ? (char *)"--output" : argv[i];
    int pr = config_parse(flags, nflags, argc, args, &first, errbuf, sizeof(errbuf));
    if (pr == 1) {
        puts("usage: eddy-ref-grpc [flags]\n");
        config_usage(stdout, flags, nflags);
        rc = 0;
        goto out;
    }
    if (pr != 0 || first < argc) {
        fprintf(stderr, "eddy-ref-grpc: %s\n", pr != 0 ? errbuf : "unexpected argument");
        goto out;
    }

    struct gen_config gc = {.seed = (uint64_t)seed, .run_id = "ref", .users = 100000,
                            .products = 10000, .categories = 50, .brands = 200,
                            .zipf_users = 0.9, .zipf_products = 1.0, .disorder_ms = 2000,
                            .time_rate = 1000};
    tables = gen_tables_new(&gc);
    ev = calloc((size_t)r->batch, sizeof(*ev));
    ptrs = calloc((size_t)r->batch, sizeof(*ptrs));
    sts = calloc((size_t)streams, sizeof(*sts));
    if (!tables || !ev || !ptrs || !sts)
        goto out;
    gen_init(&g, tables, 0);
    gen_batch(&g, clock_wall_ms(), ev, ptrs, (size_t)r->batch);
    Eddy__V1__IngestRequest init = EDDY__V1__INGEST_REQUEST__INIT;
    r->req = init;
    r->req.n_events = (size_t)r->batch;
    r->req.events = ptrs;

    struct rpc_server_opts so = {.listen = "127.0.0.1:0", .cq_threads = 1,
                                 .handler_threads = (int)server_threads,
                                 .max_recv_bytes = 64 << 20};
    srv = rpc_server_new(&so);
    if (!srv ||
        rpc_server_add_unary(srv, METHOD, &eddy__v1__ingest_request__descriptor, handle, r) !=
            EDDY_OK ||
        rpc_server_start(srv, &port) != EDDY_OK) {
        fprintf(stderr, "eddy-ref-grpc: cannot start the server\n");
        goto out;
    }
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    struct rpc_channel_opts co = {.wait_for_ready = true};
    for (int64_t i = 0; i < streams; i++) {
        sts[i].r = r;
        sem_init(&sts[i].free_slots, 0, (unsigned)r->inflight);
        sts[i].ch = rpc_channel_open(target, &co);
        if (!sts[i].ch)
            goto out;
    }
    r->start_ns = clock_mono_ns();
    atomic_store(&r->last_ns, r->start_ns);
    int64_t started = 0;
    for (; started < streams; started++) {
        if (pthread_create(&sts[started].thread, NULL, stream_main, &sts[started]) != 0)
            break;
    }
    for (int64_t i = 0; i < started; i++)
        pthread_join(sts[i].thread, NULL);

    double dur = (double)(atomic_load(&r->last_ns) - r->start_ns) / 1e9;
    uint64_t events = atomic_load(&r->events);
    double eps = dur > 0 ? (double)events / dur : 0;
    size_t payload = protobuf_c_message_get_packed_size(&r->req.base);
    struct latency_summary s;
    latency_summarize(&r->lat, &s);
    if (strcmp(output, "json") == 0) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "scenario", scenario);
        cJSON_AddNumberToObject(o, "throughput_eps", eps);
        cJSON_AddNumberToObject(o, "calls_per_s", dur > 0 ? (double)atomic_load(&r->ok) / dur : 0);
        cJSON_AddNumberToObject(o, "events", (double)events);
        cJSON_AddNumberToObject(o, "payload_bytes", (double)payload);
        cJSON_AddNumberToObject(o, "streams", (double)streams);
        cJSON_AddNumberToObject(o, "inflight", (double)r->inflight);
        cJSON_AddNumberToObject(o, "batch", (double)r->batch);
        cJSON_AddNumberToObject(o, "duration_s", dur);
        cJSON_AddNumberToObject(o, "errors", (double)atomic_load(&r->errors));
        cJSON_AddItemToObject(o, "latency_ms", latency_summary_json(&s));
        char *txt = cJSON_PrintUnformatted(o);
        if (txt)
            puts(txt);
        free(txt);
        cJSON_Delete(o);
    } else {
        printf("eddy-ref-grpc: %lld streams x %lld in flight, %zu-byte requests (%lld events)\n",
               (long long)streams, (long long)r->inflight, payload, (long long)r->batch);
        printf("%-20s %.2f s\n%-20s %.0f events/s (%.0f calls/s)\n", "duration", dur,
               "throughput", eps, dur > 0 ? (double)atomic_load(&r->ok) / dur : 0);
        printf("%-20s p50 %.3f  p95 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms  (n=%llu)\n",
               "call", s.p50, s.p95, s.p99, s.p999, s.max, (unsigned long long)s.count);
        printf("%-20s %llu\n", "errors", (unsigned long long)atomic_load(&r->errors));
    }
    rc = atomic_load(&r->errors) > 0 ? 1 : 0;
out:
    for (int64_t i = 0; sts && i < streams; i++) {
        rpc_channel_close(sts[i].ch);
        sem_destroy(&sts[i].free_slots);
    }
    rpc_server_free(srv);
    gen_tables_free(tables);
    latency_release(&r->lat);
    free(sts);
    free(ev);
    free(ptrs);
    free(args);
    return rc;
}
