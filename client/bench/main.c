/* eddy-bench: load generator and latency recorder for an Eddy node (or an ingest node of a
 * cluster). Modes:
 *   ingest     N streams, each with up to --inflight async Ingest calls of --batch events,
 *              at the highest rate the node takes or at --rate events/s in total;
 *   recommend  Recommend at a fixed --recommend-qps (open loop), nothing else;
 *   mixed      both at once;
 *   visible    event-to-visible latency: a view and a purchase for a fresh user, then
 *              GetUserProfile polled until the purchase shows (with --rate > 0, under a
 *              background ingest load);
 *   dump       no node: print --events generated events as JSON lines in the seed's
 *              UserEvent shape (the input of bench/seed_pipeline.py).
 * Prints a table, or one JSON object with -o json.
 *
 * DESIGN: every call is asynchronous (rpc_invoke_async) and completes on its channel's CQ
 * thread, where the callbacks only count, record a latency and hand the slot back. The
 * work that takes time (generating and packing batches, pacing, backoff sleeps) runs on
 * one thread per ingest stream and one pacer thread for Recommend, so a slow node never
 * stalls a completion queue and Recommend keeps its schedule while ingest is saturated.
 * Recommend latency is measured from the call's scheduled time, not from when it was
 * sent, so a late pacer (coordinated omission) shows up in the numbers. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/rpc_client.h"
#include "common/version.h"
#include "eddy/client.h"
#include "eddy/v1/eddy.pb-c.h"
#include "gen.h"
#include "grpc/health/v1/health.pb-c.h"
#include "latency.h"

#define NCODES 17              /* gRPC status codes 0..16 */
#define CODE_CLIENT 17         /* a call that could not be started at all */
#define LATENCY_SAMPLE 4000000 /* observations kept per histogram */
#define MAX_BATCH 100000
#define MAX_STREAMS 256
#define MAX_INFLIGHT 1024

enum bench_mode { MODE_INGEST, MODE_RECOMMEND, MODE_MIXED, MODE_VISIBLE, MODE_DUMP };

struct bench_opts {
    const char *endpoint, *mode, *scenario, *output, *run_id;
    int64_t duration_ms, events, streams, inflight, batch, timeout_ms;
    double rate, recommend_qps;
    int64_t recommend_limit, recommend_inflight, preload;
    int64_t seed, users, products, categories, brands;
    double zipf_users, zipf_products;
    int64_t disorder_ms, late_age_ms, start_ms;
    double late_fraction, dup_fraction, time_rate;
    int64_t probe_interval_ms, poll_interval_us, probe_timeout_ms;
    const char *tls_ca; /* "" = plaintext; else TLS with this CA (TLS cost, docs/security.md) */
    const char *token;  /* "" = none; else the bearer token of every call (bench/quota.sh) */
    bool allow_stale;   /* Recommend may be answered by a follower (docs/cluster.md) */
};

/* Counters shared by the callbacks (CQ threads) and the driver threads: atomics. */
struct counts {
    atomic_uint_fast64_t batches, events, accepted, duplicates, late, rejected;
    atomic_uint_fast64_t errors[NCODES + 1], retries[NCODES + 1], abandoned;
    atomic_uint_fast64_t rec_ok, rec_errors[NCODES + 1], rec_dropped, rec_cold;
    atomic_uint_fast64_t rec_follower; /* answered by a follower (--allow-stale) */
    atomic_uint_fast64_t probes, probe_timeouts, probe_errors[NCODES + 1];
};

struct bench;

enum slot_state { SLOT_FREE, SLOT_BUSY, SLOT_RETRY };

/* One Ingest call's worth of events; owned by its stream; while BUSY, the CQ thread of the
 * call owns it until the callback sets it FREE or RETRY (under the stream's mutex). */
struct slot {
    struct stream *st;
    enum slot_state state;
    struct gen_event *events;
    Eddy__V1__Event **ptrs;
    size_t n;
    int64_t sent_ns, retry_at_ns;
    int attempts;
};

/* An ingest stream: one driver thread, its own channel and generator. */
struct stream {
    struct bench *b;
    int id;
    pthread_t thread;
    bool started;
    rpc_channel *ch;
    struct gen gen;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct slot *slots;
    int nslots, busy;
};

struct bench {
    struct bench_opts o;
    enum bench_mode mode;
    struct gen_config gc;
    struct gen_tables *tables;
    char run_id[48];
    struct stream *streams;
    int nstreams;
    bool ingest_on, recommend_on;
    rpc_channel *rec_ch;
    pthread_t rec_thread;
    bool rec_started;
    atomic_int rec_inflight;
    struct latency ingest_lat, rec_lat, vis_lat, vis_ack_lat;
    struct counts c;
    atomic_bool stop;
    atomic_int_fast64_t claimed;  /* events handed to batches so far (--events) */
    atomic_int_fast64_t last_done_ns;
    int64_t start_ns, deadline_ns, end_ns;
    pthread_mutex_t err_mu;
    char first_error[300];
};

static void note_error(struct bench *b, const char *what, const struct rpc_result *res)
{
    pthread_mutex_lock(&b->err_mu);
    if (!b->first_error[0])
        snprintf(b->first_error, sizeof(b->first_error), "%s: %s: %.200s", what,
                 eddy_status_name((eddy_status)res->code), res->details);
    pthread_mutex_unlock(&b->err_mu);
}

static void note_done(struct bench *b, int64_t now)
{
    int64_t prev = atomic_load(&b->last_done_ns);
    while (prev < now && !atomic_compare_exchange_weak(&b->last_done_ns, &prev, now))
        ;
}

static int code_index(grpc_status_code code)
{
    return code >= 0 && code < NCODES ? (int)code : CODE_CLIENT;
}

/* Sleep until CLOCK_MONOTONIC 'until_ns' or until the run stops; false if it stopped. */
static bool sleep_until(struct bench *b, int64_t until_ns)
{
    for (;;) {
        if (atomic_load(&b->stop))
            return false;
        int64_t now = clock_mono_ns();
        if (now >= until_ns)
            return true;
        int64_t d = until_ns - now;
        if (d > 10000000)
            d = 10000000;
        struct timespec ts = {0, (long)d};
        nanosleep(&ts, NULL);
    }
}

/* ---- ingest ---------------------------------------------------------------------------- */

static void ingest_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct slot *s = ud;
    struct stream *st = s->st;
    struct bench *b = st->b;
    int64_t now = clock_mono_ns();
    enum slot_state next = SLOT_FREE;

    if (res->code == GRPC_STATUS_OK) {
        const Eddy__V1__IngestResponse *r = (const Eddy__V1__IngestResponse *)resp;
        latency_add(&b->ingest_lat, (double)(now - s->sent_ns) / 1e6);
        atomic_fetch_add(&b->c.batches, 1);
        atomic_fetch_add(&b->c.events, s->n);
        atomic_fetch_add(&b->c.accepted, r->accepted);
        atomic_fetch_add(&b->c.duplicates, r->duplicates);
        atomic_fetch_add(&b->c.late, r->late);
        atomic_fetch_add(&b->c.rejected, r->n_rejected);
        note_done(b, now);
    } else if (res->code == GRPC_STATUS_RESOURCE_EXHAUSTED) {
        /* the batch was not recorded: send it again after an exponential backoff */
        atomic_fetch_add(&b->c.retries[code_index(res->code)], 1);
        int shift = s->attempts < 8 ? s->attempts : 8;
        s->attempts++;
        s->retry_at_ns = now + (1000000LL << shift); /* 1 ms .. 256 ms */
        next = SLOT_RETRY;
    } else {
        atomic_fetch_add(&b->c.errors[code_index(res->code)], 1);
        note_error(b, "Ingest", res);
        note_done(b, now);
    }
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    pthread_mutex_lock(&st->mu);
    s->state = next;
    st->busy--;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static bool send_slot(struct stream *st, struct slot *s)
{
    struct bench *b = st->b;
    Eddy__V1__IngestRequest req = EDDY__V1__INGEST_REQUEST__INIT;

    req.n_events = s->n;
    req.events = s->ptrs;
    pthread_mutex_lock(&st->mu);
    s->state = SLOT_BUSY;
    st->busy++;
    pthread_mutex_unlock(&st->mu);
    s->sent_ns = clock_mono_ns();
    if (rpc_invoke_async(st->ch, "/eddy.v1.Eddy/Ingest", &req.base,
                         &eddy__v1__ingest_response__descriptor, b->o.timeout_ms, ingest_done,
                         s) != EDDY_OK) {
        atomic_fetch_add(&b->c.errors[CODE_CLIENT], 1);
        pthread_mutex_lock(&st->mu);
        s->state = SLOT_FREE;
        st->busy--;
        pthread_mutex_unlock(&st->mu);
        return false;
    }
    return true;
}

/* Claim 'want' events of the --events budget; returns how many may be sent (0 = done). */
static size_t claim_events(struct bench *b, size_t want)
{
    if (b->o.events <= 0)
        return want;
    int64_t before = atomic_fetch_add(&b->claimed, (int64_t)want);
    if (before >= b->o.events)
        return 0;
    return before + (int64_t)want > b->o.events ? (size_t)(b->o.events - before) : want;
}

static void *stream_main(void *arg)
{
    struct stream *st = arg;
    struct bench *b = st->b;
    /* pacing: this stream's share of --rate, one batch every 'gap_ns' */
    double share = b->o.rate > 0 ? b->o.rate / b->nstreams : 0;
    int64_t gap_ns = share > 0 ? (int64_t)((double)b->o.batch * 1e9 / share) : 0;
    int64_t next_ns = b->start_ns + (gap_ns > 0 ? (gap_ns * st->id) / b->nstreams : 0);

    for (;;) {
        struct slot *s = NULL;
        pthread_mutex_lock(&st->mu);
        while (!atomic_load(&b->stop)) {
            for (int i = 0; i < st->nslots && !s; i++) {
                if (st->slots[i].state == SLOT_RETRY)
                    s = &st->slots[i];
            }
            for (int i = 0; i < st->nslots && !s; i++) {
                if (st->slots[i].state == SLOT_FREE)
                    s = &st->slots[i];
            }
            if (s)
                break;
            pthread_cond_wait(&st->cv, &st->mu);
        }
        pthread_mutex_unlock(&st->mu);
        if (!s)
            break; /* stopping */

        if (s->state == SLOT_RETRY) {
            if (!sleep_until(b, s->retry_at_ns))
                break;
            send_slot(st, s);
            continue;
        }
        if (gap_ns > 0) {
            if (!sleep_until(b, next_ns))
                break;
            next_ns += gap_ns;
        }
        if (clock_mono_ns() >= b->deadline_ns) {
            atomic_store(&b->stop, true);
            break;
        }
        size_t n = claim_events(b, (size_t)b->o.batch);
        if (n == 0) {
            atomic_store(&b->stop, true);
            break;
        }
        gen_batch(&st->gen, clock_wall_ms(), s->events, s->ptrs, n);
        s->n = n;
        s->attempts = 0;
        send_slot(st, s);
    }

    /* drain: every call in flight completes (each has a deadline); retries are dropped */
    pthread_mutex_lock(&st->mu);
    while (st->busy > 0)
        pthread_cond_wait(&st->cv, &st->mu);
    for (int i = 0; i < st->nslots; i++) {
        if (st->slots[i].state == SLOT_RETRY) {
            atomic_fetch_add(&b->c.abandoned, 1);
            st->slots[i].state = SLOT_FREE;
        }
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static int streams_open(struct bench *b, const struct rpc_channel_opts *copts)
{
    b->streams = calloc((size_t)b->nstreams, sizeof(*b->streams));
    if (!b->streams)
        return -1;
    for (int i = 0; i < b->nstreams; i++) {
        struct stream *st = &b->streams[i];
        st->b = b;
        st->id = i;
        pthread_mutex_init(&st->mu, NULL);
        pthread_cond_init(&st->cv, NULL);
        gen_init(&st->gen, b->tables, i);
        st->nslots = (int)b->o.inflight;
        st->slots = calloc((size_t)st->nslots, sizeof(*st->slots));
        st->ch = rpc_channel_open(b->o.endpoint, copts);
        if (!st->slots || !st->ch)
            return -1;
        for (int j = 0; j < st->nslots; j++) {
            struct slot *s = &st->slots[j];
            s->st = st;
            s->events = calloc((size_t)b->o.batch, sizeof(*s->events));
            s->ptrs = calloc((size_t)b->o.batch, sizeof(*s->ptrs));
            if (!s->events || !s->ptrs)
                return -1;
        }
    }
    return 0;
}

static void streams_close(struct bench *b)
{
    if (!b->streams)
        return;
    for (int i = 0; i < b->nstreams; i++) {
        struct stream *st = &b->streams[i];
        rpc_channel_close(st->ch);
        for (int j = 0; st->slots && j < st->nslots; j++) {
            free(st->slots[j].events);
            free(st->slots[j].ptrs);
        }
        free(st->slots);
        pthread_mutex_destroy(&st->mu);
        pthread_cond_destroy(&st->cv);
    }
    free(b->streams);
    b->streams = NULL;
}

/* ---- recommend ------------------------------------------------------------------------- */

struct rec_call {
    struct bench *b;
    int64_t sched_ns;
};

static void rec_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct rec_call *rc = ud;
    struct bench *b = rc->b;

    if (res->code == GRPC_STATUS_OK) {
        const Eddy__V1__RecommendResponse *r = (const Eddy__V1__RecommendResponse *)resp;
        latency_add(&b->rec_lat, (double)(clock_mono_ns() - rc->sched_ns) / 1e6);
        atomic_fetch_add(&b->c.rec_ok, 1);
        if (r->cold_start)
            atomic_fetch_add(&b->c.rec_cold, 1);
        if (r->staleness && r->staleness->from_follower)
            atomic_fetch_add(&b->c.rec_follower, 1);
    } else {
        atomic_fetch_add(&b->c.rec_errors[code_index(res->code)], 1);
        note_error(b, "Recommend", res);
    }
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    free(rc);
    atomic_fetch_sub(&b->rec_inflight, 1);
}

static void *rec_main(void *arg)
{
    struct bench *b = arg;
    struct gen g;
    int64_t gap_ns = (int64_t)(1e9 / b->o.recommend_qps);
    int64_t next_ns = b->start_ns;
    char user[32];

    gen_init(&g, b->tables, 100000); /* its own seeded sequence of users */
    while (!atomic_load(&b->stop)) {
        if (!sleep_until(b, next_ns))
            break;
        if (next_ns >= b->deadline_ns)
            break;
        if (atomic_load(&b->rec_inflight) >= b->o.recommend_inflight) {
            atomic_fetch_add(&b->c.rec_dropped, 1);
        } else {
            struct rec_call *rc = malloc(sizeof(*rc));
            Eddy__V1__RecommendRequest req = EDDY__V1__RECOMMEND_REQUEST__INIT;
            gen_user_id(gen_user_rank(&g), user, sizeof(user));
            req.user_id = user;
            req.max_recommendations = (uint32_t)b->o.recommend_limit;
            req.allow_stale = b->o.allow_stale;
            if (rc) {
                rc->b = b;
                rc->sched_ns = next_ns;
                atomic_fetch_add(&b->rec_inflight, 1);
            }
            if (!rc || rpc_invoke_async(b->rec_ch, "/eddy.v1.Eddy/Recommend", &req.base,
                                        &eddy__v1__recommend_response__descriptor,
                                        b->o.timeout_ms, rec_done, rc) != EDDY_OK) {
                if (rc)
                    atomic_fetch_sub(&b->rec_inflight, 1);
                free(rc);
                atomic_fetch_add(&b->c.rec_errors[CODE_CLIENT], 1);
            }
        }
        next_ns += gap_ns;
    }
    while (atomic_load(&b->rec_inflight) > 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* ---- visible --------------------------------------------------------------------------- */

/* The Ingest of one probe; freed by the probe loop once 'done' is set. */
struct probe {
    atomic_bool done;
    struct rpc_result res;
    int64_t done_ns;
};

static void probe_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct probe *p = ud;
    p->res = *res;
    p->done_ns = clock_mono_ns();
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    atomic_store(&p->done, true);
}

static bool profile_has_purchase(const Eddy__V1__GetUserProfileResponse *r, const char *product)
{
    if (!r->profile)
        return false;
    for (size_t i = 0; i < r->profile->n_recent_purchases; i++) {
        if (strcmp(r->profile->recent_purchases[i]->product_id, product) == 0)
            return true;
    }
    return false;
}

/* One probe: a view of Y and a purchase of X for a fresh user, then GetUserProfile until
 * the purchase of X shows. */
static void run_probe(struct bench *b, rpc_channel *ch, struct gen *g, int64_t k)
{
    struct gen_event ev[2];
    Eddy__V1__Event *ptrs[2];
    Eddy__V1__IngestRequest req = EDDY__V1__INGEST_REQUEST__INIT;
    Eddy__V1__GetUserProfileRequest preq = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    struct probe *p = calloc(1, sizeof(*p));
    char user[80];

    if (!p) {
        atomic_fetch_add(&b->c.probe_errors[CODE_CLIENT], 1);
        return;
    }
    snprintf(user, sizeof(user), "%s-v%lld", b->run_id, (long long)k);
    gen_batch(g, clock_wall_ms(), ev, ptrs, 2);
    for (int i = 0; i < 2; i++) {
        snprintf(ev[i].user_id, sizeof(ev[i].user_id), "%.31s", user);
        snprintf(ev[i].event_id, sizeof(ev[i].event_id), "%.50s-%d", user, i);
        snprintf(ev[i].session_id, sizeof(ev[i].session_id), "%.39s", user);
        if (!ev[i].product_id[0])
            snprintf(ev[i].product_id, sizeof(ev[i].product_id), "p%d", i + 1);
        ev[i].query[0] = '\0';
        ev[i].ev.timestamp_ms = clock_wall_ms() - 1 + i;
        ev[i].ev.event_type = i == 0 ? EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW
                                     : EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE;
    }
    req.n_events = 2;
    req.events = ptrs;
    preq.user_id = ev[0].user_id;

    int64_t t0 = clock_mono_ns();
    if (rpc_invoke_async(ch, "/eddy.v1.Eddy/Ingest", &req.base,
                         &eddy__v1__ingest_response__descriptor, b->o.timeout_ms, probe_done,
                         p) != EDDY_OK) {
        free(p);
        atomic_fetch_add(&b->c.probe_errors[CODE_CLIENT], 1);
        return;
    }
    bool seen = false;
    while (clock_mono_ns() - t0 < b->o.probe_timeout_ms * 1000000LL) {
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        rpc_invoke(ch, "/eddy.v1.Eddy/GetUserProfile", &preq.base,
                   &eddy__v1__get_user_profile_response__descriptor, b->o.timeout_ms, &resp,
                   &res);
        int64_t now = clock_mono_ns();
        if (res.code == GRPC_STATUS_OK &&
            profile_has_purchase((Eddy__V1__GetUserProfileResponse *)resp, ev[1].product_id)) {
            latency_add(&b->vis_lat, (double)(now - t0) / 1e6);
            seen = true;
        } else if (res.code != GRPC_STATUS_OK && res.code != GRPC_STATUS_NOT_FOUND) {
            atomic_fetch_add(&b->c.probe_errors[code_index(res.code)], 1);
            note_error(b, "GetUserProfile", &res);
        }
        if (resp)
            protobuf_c_message_free_unpacked(resp, NULL);
        if (seen || (res.code != GRPC_STATUS_OK && res.code != GRPC_STATUS_NOT_FOUND))
            break;
        if (b->o.poll_interval_us > 0) {
            struct timespec ts = {b->o.poll_interval_us / 1000000,
                                  (long)(b->o.poll_interval_us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }
    }
    while (!atomic_load(&p->done)) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    if (p->res.code == GRPC_STATUS_OK) {
        latency_add(&b->vis_ack_lat, (double)(p->done_ns - t0) / 1e6);
        if (!seen)
            atomic_fetch_add(&b->c.probe_timeouts, 1);
    } else {
        atomic_fetch_add(&b->c.probe_errors[code_index(p->res.code)], 1);
        note_error(b, "Ingest (probe)", &p->res);
    }
    atomic_fetch_add(&b->c.probes, 1);
    note_done(b, clock_mono_ns());
    free(p);
}

static void run_visible(struct bench *b, rpc_channel *ch)
{
    struct gen g;

    gen_init(&g, b->tables, 200000);
    for (int64_t k = 0; !atomic_load(&b->stop); k++) {
        int64_t at = b->start_ns + k * b->o.probe_interval_ms * 1000000LL;
        if (at >= b->deadline_ns || (b->o.events > 0 && k >= b->o.events))
            break;
        if (!sleep_until(b, at))
            break;
        run_probe(b, ch, &g, k);
    }
}

/* ---- setup and output ------------------------------------------------------------------ */

/* Synchronous Ingest of 'n' events (not measured), so Recommend has users with history. */
static int preload(struct bench *b, rpc_channel *ch, int64_t n)
{
    struct gen g;
    struct gen_event *ev = calloc((size_t)b->o.batch, sizeof(*ev));
    Eddy__V1__Event **ptrs = calloc((size_t)b->o.batch, sizeof(*ptrs));
    int rc = 0;

    if (!ev || !ptrs) {
        rc = -1;
        goto out;
    }
    gen_init(&g, b->tables, 300000);
    for (int64_t done = 0; done < n;) {
        size_t k = (size_t)(n - done < b->o.batch ? n - done : b->o.batch);
        Eddy__V1__IngestRequest req = EDDY__V1__INGEST_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        gen_batch(&g, clock_wall_ms(), ev, ptrs, k);
        req.n_events = k;
        req.events = ptrs;
        rpc_invoke(ch, "/eddy.v1.Eddy/Ingest", &req.base, &eddy__v1__ingest_response__descriptor,
                   b->o.timeout_ms, &resp, &res);
        if (resp)
            protobuf_c_message_free_unpacked(resp, NULL);
        if (res.code == GRPC_STATUS_RESOURCE_EXHAUSTED) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (res.code != GRPC_STATUS_OK) {
            fprintf(stderr, "eddy-bench: preload: %s: %s\n",
                    eddy_status_name((eddy_status)res.code), res.details);
            rc = -1;
            goto out;
        }
        done += (int64_t)k;
    }
out:
    free(ev);
    free(ptrs);
    return rc;
}

static const char *code_name(int i)
{
    return i == CODE_CLIENT ? "CLIENT" : eddy_status_name((eddy_status)i);
}

static cJSON *json_codes(atomic_uint_fast64_t *arr, uint64_t *total)
{
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i <= NCODES; i++) {
        uint64_t v = atomic_load(&arr[i]);
        if (v) {
            cJSON_AddNumberToObject(o, code_name(i), (double)v);
            *total += v;
        }
    }
    return o;
}

static void print_latency(const char *what, const struct latency_summary *s)
{
    printf("%-20s p50 %.3f  p95 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms  (n=%llu, mean %.3f)\n",
           what, s->p50, s->p95, s->p99, s->p999, s->max, (unsigned long long)s->count, s->mean);
}

static void print_codes(const char *what, atomic_uint_fast64_t *arr)
{
    for (int i = 0; i <= NCODES; i++) {
        uint64_t v = atomic_load(&arr[i]);
        if (v)
            printf("%-20s %s %llu\n", what, code_name(i), (unsigned long long)v);
    }
}

static const char *mode_name(enum bench_mode m)
{
    static const char *const names[] = {"ingest", "recommend", "mixed", "visible", "dump"};
    return names[m];
}

/* Print the results; returns the number of errors (calls that failed, retries excepted). */
static uint64_t report(struct bench *b)
{
    struct latency_summary il, rl, vl, val;
    double dur = (double)(b->end_ns - b->start_ns) / 1e9;
    double rec_dur = (double)(b->deadline_ns < b->end_ns ? b->deadline_ns - b->start_ns
                                                         : b->end_ns - b->start_ns) / 1e9;
    uint64_t events = atomic_load(&b->c.events);
    uint64_t rec_ok = atomic_load(&b->c.rec_ok);
    double eps = dur > 0 ? (double)events / dur : 0;
    double qps = rec_dur > 0 ? (double)rec_ok / rec_dur : 0;
    uint64_t errors = 0, rec_errors = 0, probe_errors = 0, retries = 0;

    latency_summarize(&b->ingest_lat, &il);
    latency_summarize(&b->rec_lat, &rl);
    latency_summarize(&b->vis_lat, &vl);
    latency_summarize(&b->vis_ack_lat, &val);

    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scenario", b->o.scenario);
    cJSON_AddStringToObject(o, "mode", mode_name(b->mode));
    cJSON_AddStringToObject(o, "endpoint", b->o.endpoint);
    cJSON_AddStringToObject(o, "run_id", b->run_id);
    cJSON_AddNumberToObject(o, "seed", (double)b->o.seed);
    cJSON_AddNumberToObject(o, "streams", b->ingest_on ? (double)b->nstreams : 0);
    cJSON_AddNumberToObject(o, "inflight", (double)b->o.inflight);
    cJSON_AddNumberToObject(o, "batch", (double)b->o.batch);
    cJSON_AddNumberToObject(o, "target_rate_eps", b->ingest_on ? b->o.rate : 0);
    cJSON_AddNumberToObject(o, "target_recommend_qps", b->recommend_on ? b->o.recommend_qps : 0);
    cJSON_AddNumberToObject(o, "duration_s", dur);
    cJSON_AddNumberToObject(o, "throughput_eps", eps);
    cJSON_AddNumberToObject(o, "events", (double)events);
    cJSON_AddNumberToObject(o, "batches", (double)atomic_load(&b->c.batches));
    cJSON_AddNumberToObject(o, "accepted", (double)atomic_load(&b->c.accepted));
    cJSON_AddNumberToObject(o, "duplicates", (double)atomic_load(&b->c.duplicates));
    cJSON_AddNumberToObject(o, "late", (double)atomic_load(&b->c.late));
    cJSON_AddNumberToObject(o, "rejected", (double)atomic_load(&b->c.rejected));
    cJSON_AddItemToObject(o, "latency_ms", latency_summary_json(&il));
    cJSON_AddNumberToObject(o, "recommend_qps", qps);
    cJSON_AddNumberToObject(o, "recommend_requests", (double)rec_ok);
    cJSON_AddNumberToObject(o, "recommend_cold_start", (double)atomic_load(&b->c.rec_cold));
    cJSON_AddNumberToObject(o, "recommend_from_follower",
                            (double)atomic_load(&b->c.rec_follower));
    cJSON_AddNumberToObject(o, "recommend_dropped", (double)atomic_load(&b->c.rec_dropped));
    cJSON_AddItemToObject(o, "recommend_latency_ms", latency_summary_json(&rl));
    cJSON_AddNumberToObject(o, "visible_probes", (double)atomic_load(&b->c.probes));
    cJSON_AddNumberToObject(o, "visible_timeouts", (double)atomic_load(&b->c.probe_timeouts));
    cJSON_AddItemToObject(o, "visible_latency_ms", latency_summary_json(&vl));
    cJSON_AddItemToObject(o, "visible_ack_latency_ms", latency_summary_json(&val));
    cJSON *ebc = json_codes(b->c.errors, &errors);
    cJSON_AddItemToObject(o, "errors_by_code", ebc);
    cJSON_AddItemToObject(o, "recommend_errors_by_code", json_codes(b->c.rec_errors, &rec_errors));
    cJSON_AddItemToObject(o, "visible_errors_by_code", json_codes(b->c.probe_errors, &probe_errors));
    cJSON_AddItemToObject(o, "retries", json_codes(b->c.retries, &retries));
    cJSON_AddNumberToObject(o, "retries_total", (double)retries);
    cJSON_AddNumberToObject(o, "abandoned_retries", (double)atomic_load(&b->c.abandoned));
    uint64_t all_errors = errors + rec_errors + probe_errors + atomic_load(&b->c.probe_timeouts);
    cJSON_AddNumberToObject(o, "errors", (double)all_errors);
    cJSON_AddStringToObject(o, "first_error", b->first_error);

    if (strcmp(b->o.output, "json") == 0) {
        char *s = cJSON_PrintUnformatted(o);
        if (s)
            puts(s);
        free(s);
        cJSON_Delete(o);
        return all_errors;
    }
    cJSON_Delete(o);
    printf("eddy-bench: scenario %s, mode %s, endpoint %s, run %s\n", b->o.scenario,
           mode_name(b->mode), b->o.endpoint, b->run_id);
    printf("%-20s %.2f s\n", "duration", dur);
    if (b->ingest_on) {
        printf("%-20s %d streams x %lld in flight x %lld events; rate %s\n", "ingest",
               b->nstreams, (long long)b->o.inflight, (long long)b->o.batch,
               b->o.rate > 0 ? "fixed" : "max");
        printf("%-20s %llu (accepted %llu, duplicates %llu, late %llu, rejected %llu)\n",
               "events", (unsigned long long)events,
               (unsigned long long)atomic_load(&b->c.accepted),
               (unsigned long long)atomic_load(&b->c.duplicates),
               (unsigned long long)atomic_load(&b->c.late),
               (unsigned long long)atomic_load(&b->c.rejected));
        printf("%-20s %.0f events/s\n", "throughput", eps);
        print_latency("ingest ack", &il);
    }
    if (b->recommend_on) {
        printf("%-20s %.0f QPS achieved (target %.0f), %llu cold start, %llu dropped, "
               "%llu from followers\n",
               "recommend", qps, b->o.recommend_qps,
               (unsigned long long)atomic_load(&b->c.rec_cold),
               (unsigned long long)atomic_load(&b->c.rec_dropped),
               (unsigned long long)atomic_load(&b->c.rec_follower));
        print_latency("recommend", &rl);
    }
    if (b->mode == MODE_VISIBLE) {
        printf("%-20s %llu probes, %llu never visible\n", "visible",
               (unsigned long long)atomic_load(&b->c.probes),
               (unsigned long long)atomic_load(&b->c.probe_timeouts));
        print_latency("event to visible", &vl);
        print_latency("probe ingest ack", &val);
    }
    print_codes("errors", b->c.errors);
    print_codes("recommend errors", b->c.rec_errors);
    print_codes("visible errors", b->c.probe_errors);
    print_codes("retries", b->c.retries);
    printf("%-20s %llu\n", "errors (total)", (unsigned long long)all_errors);
    if (b->first_error[0])
        printf("%-20s %s\n", "first error", b->first_error);
    return all_errors;
}

/* The JSON-lines name of an event type, as `eddy ingest` reads it. */
static const char *type_name(Eddy__V1__EventType t)
{
    static const char *const names[] = {"unspecified", "view", "click", "add_to_cart",
                                        "remove_from_cart", "purchase", "search"};
    return t >= 0 && t <= 6 ? names[t] : "unspecified";
}

/* Mode dump: --events events of stream 0 (ids and strings are [a-z0-9 -]: no escaping). */
static int dump_events(struct bench *b)
{
    struct gen g;
    struct gen_event e;

    gen_init(&g, b->tables, 0);
    for (int64_t i = 0; i < b->o.events; i++) {
        gen_next(&g, clock_wall_ms(), &e);
        printf("{\"eventId\":\"%s\",\"userId\":\"%s\",\"sessionId\":\"%s\",\"timestamp\":%lld,"
               "\"eventType\":\"%s\",\"productId\":\"%s\",\"category\":\"%s\",\"brand\":\"%s\","
               "\"price\":%.2f,\"searchQuery\":\"%s\"}\n",
               e.event_id, e.user_id, e.session_id, (long long)e.ev.timestamp_ms,
               type_name(e.ev.event_type), e.product_id, e.category, e.brand, e.ev.price,
               e.query);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

static bool node_serving(const char *endpoint, const struct tls_config *tls, int64_t timeout_ms)
{
    struct rpc_channel_opts copts = {.wait_for_ready = true, .tls = tls};
    rpc_channel *ch = rpc_channel_open(endpoint, &copts);
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res = {.code = GRPC_STATUS_UNAVAILABLE};
    bool ok = false;

    if (!ch)
        return false;
    req.service = (char *)"";
    rpc_invoke(ch, "/grpc.health.v1.Health/Check", &req.base,
               &grpc__health__v1__health_check_response__descriptor, timeout_ms, &resp, &res);
    if (res.code == GRPC_STATUS_OK)
        ok = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status ==
             GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    else
        fprintf(stderr, "eddy-bench: health check of %s: %s: %s\n", endpoint,
                eddy_status_name((eddy_status)res.code), res.details);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    rpc_channel_close(ch);
    return ok;
}

#define O(n, t, field, help, lo, hi) {n, t, &o->field, help, lo, hi}

static size_t bench_flags(struct bench_opts *o, struct flag *out)
{
    const struct flag fl[] = {
        O("endpoint", FLAG_STRING, endpoint, "HOST:PORT of an Eddy node (or an ingest node)", 0, 0),
        O("mode", FLAG_STRING, mode, "ingest | recommend | mixed | visible | dump", 0, 0),
        O("scenario", FLAG_STRING, scenario, "label printed with the results", 0, 0),
        O("output", FLAG_STRING, output, "table | json (-o json)", 0, 0),
        O("duration", FLAG_DURATION, duration_ms, "how long to run", 1, 0),
        O("events", FLAG_INT, events,
          "stop after this many events (visible: probes) instead (0 = use --duration)", 0, 0),
        O("streams", FLAG_INT, streams, "concurrent ingest streams", 1, MAX_STREAMS),
        O("inflight", FLAG_INT, inflight, "Ingest calls in flight per stream", 1, MAX_INFLIGHT),
        O("batch", FLAG_INT, batch, "events per Ingest call", 1, MAX_BATCH),
        O("rate", FLAG_DOUBLE, rate,
          "ingest events/s in total (0 = as fast as the node answers; visible: background load)",
          0, 0),
        O("recommend-qps", FLAG_DOUBLE, recommend_qps,
          "Recommend calls per second (recommend and mixed modes)", 0, 0),
        O("recommend-limit", FLAG_INT, recommend_limit, "max_recommendations of each call (0 = the node's)", 0, 1000),
        O("recommend-inflight", FLAG_INT, recommend_inflight,
          "Recommend calls in flight at most; a call due past this is dropped and counted", 1,
          1000000),
        O("allow-stale", FLAG_BOOL, allow_stale,
          "Recommend may be answered by a follower of the user's partition", 0, 0),
        O("preload", FLAG_INT, preload,
          "events ingested (synchronously, not measured) before the run starts", 0, 0),
        O("timeout", FLAG_DURATION, timeout_ms, "deadline of each call", 1, 0),
        O("tls-ca", FLAG_STRING, tls_ca, "PEM CA of the node's certificate: TLS on", 0, 0),
        O("token", FLAG_STRING, token, "bearer token of every call (--token-file nodes)", 0,
          0),
        O("seed", FLAG_INT, seed, "generator seed", 0, 0),
        O("run-id", FLAG_STRING, run_id,
          "prefix of event ids and probe users (default: from the clock; set it to repeat ids)", 0, 0),
        O("users", FLAG_INT, users, "distinct users (Zipf ranks)", 1, 100000000),
        O("products", FLAG_INT, products, "distinct products (Zipf ranks)", 1, 100000000),
        O("categories", FLAG_INT, categories, "distinct categories", 1, 1000000),
        O("brands", FLAG_INT, brands, "distinct brands", 1, 1000000),
        O("zipf-users", FLAG_DOUBLE, zipf_users, "Zipf exponent of user activity", 0, 0),
        O("zipf-products", FLAG_DOUBLE, zipf_products, "Zipf exponent of product popularity", 0, 0),
        O("disorder", FLAG_DURATION, disorder_ms,
          "event times lag the clock by up to this (keep below the node's --out-of-orderness)", 0, 0),
        O("late-fraction", FLAG_DOUBLE, late_fraction, "share of late events (0..1)", 0, 0),
        O("late-age", FLAG_DURATION, late_age_ms, "a late event is at least this old", 0, 0),
        O("dup-fraction", FLAG_DOUBLE, dup_fraction,
          "share of events repeating a recent event id (0..1)", 0, 0),
        O("start-ms", FLAG_INT, start_ms,
          "synthetic event clock starting here (ms since the epoch; 0 = wall clock)", 0, 0),
        O("event-time-rate", FLAG_DOUBLE, time_rate,
          "with --start-ms: events per second of event time, per stream", 0, 0),
        O("probe-interval", FLAG_DURATION, probe_interval_ms, "visible: one probe every ...", 1, 0),
        O("poll-interval-us", FLAG_INT, poll_interval_us,
          "visible: pause between GetUserProfile polls, microseconds", 0, 1000000),
        O("probe-timeout", FLAG_DURATION, probe_timeout_ms,
          "visible: a probe not visible after this counts as an error", 1, 0),
    };
    memcpy(out, fl, sizeof(fl));
    return sizeof(fl) / sizeof(fl[0]);
}

static int parse_mode(const char *s, enum bench_mode *m)
{
    static const char *const names[] = {"ingest", "recommend", "mixed", "visible", "dump"};
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, names[i]) == 0) {
            *m = (enum bench_mode)i;
            return 0;
        }
    }
    return -1;
}

/* SIGINT or SIGTERM end the run early, as its deadline would: the results so far are
 * printed (a script can run the load "until done" and still get them). */
static atomic_bool *stop_flag;

static void on_stop_signal(int sig)
{
    (void)sig;
    if (stop_flag)
        atomic_store(stop_flag, true);
}

int main(int argc, char **argv)
{
    static struct bench bench; /* large (counters, histograms): not on the stack */
    struct bench *b = &bench;
    stop_flag = &b->stop;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct bench_opts *o = &b->o;
    struct flag flags[64];
    char err[256];
    char **args = NULL;
    int first = 0, rc = 2;
    rpc_channel *vis_ch = NULL;

    *o = (struct bench_opts){
        .endpoint = "127.0.0.1:7070", .mode = "ingest", .scenario = "", .output = "table",
        .run_id = "", .duration_ms = 10000, .streams = 4, .inflight = 2, .batch = 500,
        .timeout_ms = 10000, .tls_ca = "", .token = "", .recommend_qps = 1000, .recommend_limit = 0,
        .recommend_inflight = 10000, .seed = 1, .users = 100000, .products = 10000,
        .categories = 50, .brands = 200, .zipf_users = 0.9, .zipf_products = 1.0,
        .disorder_ms = 2000, .late_age_ms = 120000, .time_rate = 1000,
        .probe_interval_ms = 20, .poll_interval_us = 200, .probe_timeout_ms = 5000,
    };
    size_t nflags = bench_flags(o, flags);

    args = calloc((size_t)argc + 1, sizeof(*args));
    if (!args)
        return 2;
    for (int i = 0; i < argc; i++)
        args[i] = strcmp(argv[i], "-o") == 0 ? (char *)"--output" : argv[i];
    int pr = config_parse(flags, nflags, argc, args, &first, err, sizeof(err));
    if (pr == CONFIG_VERSION) {
        printf("eddy-bench %s\n", eddy_version());
        free(args);
        return 0;
    }
    if (pr == CONFIG_HELP) {
        fputs("usage: eddy-bench [flags]   (every flag also as EDDY_<NAME>; DURATION: 500ms, 10s)\n"
              "       eddy-bench --version\n"
              "Load generator for Eddy: see docs/BENCHMARKS.md.\n\nflags:\n", stdout);
        config_usage(stdout, flags, nflags);
        free(args);
        return 0;
    }
    if (pr != 0 || first < argc) {
        fprintf(stderr, "eddy-bench: %s\n", pr != 0 ? err : "unexpected argument (see --help)");
        free(args);
        return 2;
    }
    if (parse_mode(o->mode, &b->mode) != 0 ||
        (strcmp(o->output, "json") != 0 && strcmp(o->output, "table") != 0) ||
        o->late_fraction < 0 || o->late_fraction > 1 || o->dup_fraction < 0 ||
        o->dup_fraction > 1 || o->time_rate <= 0 || o->zipf_users < 0 || o->zipf_products < 0) {
        fprintf(stderr, "eddy-bench: bad --mode, --output, fraction, rate or exponent (see --help)\n");
        free(args);
        return 2;
    }
    if (!o->scenario[0])
        o->scenario = o->mode;
    if (o->run_id[0])
        snprintf(b->run_id, sizeof(b->run_id), "%.40s", o->run_id);
    else
        snprintf(b->run_id, sizeof(b->run_id), "r%llx", (unsigned long long)clock_wall_ms());
    b->ingest_on = b->mode == MODE_INGEST || b->mode == MODE_MIXED ||
                   (b->mode == MODE_VISIBLE && o->rate > 0);
    b->recommend_on = (b->mode == MODE_RECOMMEND || b->mode == MODE_MIXED) && o->recommend_qps > 0;
    b->nstreams = (int)o->streams;

    b->gc = (struct gen_config){
        .seed = (uint64_t)o->seed, .run_id = b->run_id, .users = o->users,
        .products = o->products, .categories = o->categories, .brands = o->brands,
        .zipf_users = o->zipf_users, .zipf_products = o->zipf_products,
        .disorder_ms = o->disorder_ms, .late_fraction = o->late_fraction,
        .late_age_ms = o->late_age_ms, .dup_fraction = o->dup_fraction,
        .start_ms = o->start_ms, .time_rate = o->time_rate,
    };
    pthread_mutex_init(&b->err_mu, NULL);
    latency_init(&b->ingest_lat, LATENCY_SAMPLE);
    latency_init(&b->rec_lat, LATENCY_SAMPLE);
    latency_init(&b->vis_lat, LATENCY_SAMPLE);
    latency_init(&b->vis_ack_lat, LATENCY_SAMPLE);

    if (b->mode == MODE_DUMP) {
        b->tables = gen_tables_new(&b->gc);
        rc = !b->tables ? 2 : o->events > 0 ? dump_events(b) : 2;
        if (o->events <= 0)
            fprintf(stderr, "eddy-bench: --mode dump needs --events N\n");
        goto out;
    }
    rc = 3;
    struct tls_config tls = {.ca = o->tls_ca};
    if (!node_serving(o->endpoint, &tls, 10000)) {
        fprintf(stderr, "eddy-bench: %s is not SERVING\n", o->endpoint);
        goto out;
    }
    rc = 2;
    b->tables = gen_tables_new(&b->gc);
    struct rpc_channel_opts copts = {.wait_for_ready = true, .tls = &tls, .token = o->token};
    if (!b->tables || (b->ingest_on && streams_open(b, &copts) != 0) ||
        !(b->rec_ch = rpc_channel_open(o->endpoint, &copts)) ||
        !(vis_ch = rpc_channel_open(o->endpoint, &copts))) {
        fprintf(stderr, "eddy-bench: out of memory\n");
        goto out;
    }
    if (o->preload > 0 && preload(b, vis_ch, o->preload) != 0)
        goto out;

    b->start_ns = clock_mono_ns();
    b->deadline_ns = o->events > 0 ? INT64_MAX : b->start_ns + o->duration_ms * 1000000LL;
    atomic_store(&b->last_done_ns, b->start_ns);
    for (int i = 0; b->ingest_on && i < b->nstreams; i++) {
        if (pthread_create(&b->streams[i].thread, NULL, stream_main, &b->streams[i]) != 0) {
            atomic_store(&b->stop, true);
            break;
        }
        b->streams[i].started = true;
    }
    if (b->recommend_on && !atomic_load(&b->stop) && o->events > 0 && !b->ingest_on) {
        /* recommend alone runs for --duration only */
        b->deadline_ns = b->start_ns + o->duration_ms * 1000000LL;
    }
    if (b->recommend_on && !atomic_load(&b->stop)) {
        if (b->deadline_ns == INT64_MAX)
            b->deadline_ns = b->start_ns + o->duration_ms * 1000000LL;
        b->rec_started = pthread_create(&b->rec_thread, NULL, rec_main, b) == 0;
    }
    if (b->mode == MODE_VISIBLE) {
        if (b->deadline_ns == INT64_MAX && o->events <= 0)
            b->deadline_ns = b->start_ns + o->duration_ms * 1000000LL;
        run_visible(b, vis_ch);
        atomic_store(&b->stop, true);
    } else if (!b->ingest_on) {
        sleep_until(b, b->deadline_ns);
    } else {
        while (!atomic_load(&b->stop) && clock_mono_ns() < b->deadline_ns) {
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
        }
    }
    atomic_store(&b->stop, true);
    for (int i = 0; b->streams && i < b->nstreams; i++) {
        pthread_mutex_lock(&b->streams[i].mu);
        pthread_cond_broadcast(&b->streams[i].cv);
        pthread_mutex_unlock(&b->streams[i].mu);
    }
    for (int i = 0; b->streams && i < b->nstreams; i++) {
        if (b->streams[i].started)
            pthread_join(b->streams[i].thread, NULL);
    }
    if (b->rec_started)
        pthread_join(b->rec_thread, NULL);
    b->end_ns = b->ingest_on || b->mode == MODE_VISIBLE ? atomic_load(&b->last_done_ns)
                                                        : clock_mono_ns();
    if (b->end_ns <= b->start_ns)
        b->end_ns = clock_mono_ns();
    rc = report(b) > 0 ? 1 : 0;
out:
    streams_close(b);
    rpc_channel_close(b->rec_ch);
    rpc_channel_close(vis_ch);
    gen_tables_free(b->tables);
    latency_release(&b->ingest_lat);
    latency_release(&b->rec_lat);
    latency_release(&b->vis_lat);
    latency_release(&b->vis_ack_lat);
    free(args);
    return rc;
}
