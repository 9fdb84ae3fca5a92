/* The deterministic event generator of eddy-bench: the traffic of an e-commerce site
 * (Zipf-distributed users and products, each product with a fixed category, brand and
 * price, and the event mix ~60% view, 15% click, 10% add_to_cart, 3% remove_from_cart,
 * 5% purchase, 7% search), with bounded disorder, a fraction of late events and optional
 * duplicate event ids. The same seed, stream number and clock give the same events. */
#ifndef EDDY_BENCH_GEN_H
#define EDDY_BENCH_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eddy/v1/eddy.pb-c.h"

struct gen_config {
    uint64_t seed;
    const char *run_id;      /* prefix of every event id ("r1"): a new run id gives new ids */
    int64_t users, products; /* population sizes (>= 1) */
    int64_t categories, brands;
    double zipf_users, zipf_products; /* exponents s of P(rank k) ~ 1/k^s (>= 0) */
    int64_t disorder_ms;     /* event time = clock minus a uniform offset in [0, disorder] */
    double late_fraction;    /* share of events older than the clock by late_age_ms + [0, 60 s) */
    int64_t late_age_ms;
    double dup_fraction;     /* share of events that repeat a recent event of the stream */
    int64_t start_ms;        /* 0: event time follows the wall clock; else a synthetic clock
                                starting here and advancing 1000/time_rate ms per event */
    double time_rate;        /* events per second of synthetic event time, per stream */
};

/* The tables shared by every stream (Zipf CDFs). Read-only once built: any thread. */
struct gen_tables;

/* Build the tables for 'cfg' (borrowed for the lifetime of the result: keep it alive).
 * Caller owns the result; free with gen_tables_free. NULL on allocation failure or bad
 * sizes. */
struct gen_tables *gen_tables_new(const struct gen_config *cfg);
void gen_tables_free(struct gen_tables *t);

/* One generated event: the protobuf-c message and the storage of its strings (the
 * message's pointers point into the same struct: copy with gen_event_copy only). */
struct gen_event {
    Eddy__V1__Event ev;
    char event_id[64];
    char user_id[32];
    char session_id[40];
    char product_id[24];
    char category[24];
    char brand[24];
    char query[32];
};

#define GEN_RECENT 256 /* events remembered per stream for duplicates */

/* A stream of events; one thread at a time. */
struct gen {
    const struct gen_tables *t;
    int stream;
    uint64_t rng[4];
    uint64_t seq;              /* events generated so far (including duplicates) */
    struct gen_event recent[GEN_RECENT];
    size_t nrecent;            /* events stored in 'recent' so far (a ring) */
    /* counts of what was generated, by kind */
    uint64_t late, dups;
    uint64_t by_type[7];       /* indexed by Eddy__V1__EventType */
};

/* Initialize stream number 'stream' over tables 't' (borrowed: must outlive 'g'). */
void gen_init(struct gen *g, const struct gen_tables *t, int stream);

/* Copy 'src' into 'dst' and point dst's message at dst's own strings. */
void gen_event_copy(struct gen_event *dst, const struct gen_event *src);

/* Generate the next event into 'out'. 'now_ms' is the wall clock in ms since the epoch
 * (ignored with a synthetic clock). */
void gen_next(struct gen *g, int64_t now_ms, struct gen_event *out);

/* Generate 'n' events into 'events' and point ptrs[i] at events[i].ev. */
void gen_batch(struct gen *g, int64_t now_ms, struct gen_event *events,
               Eddy__V1__Event **ptrs, size_t n);

/* A uniform double in [0, 1) and a uniform integer in [0, n) from the stream's generator
 * (for callers that need more seeded choices, e.g. which user to recommend for). */
double gen_uniform(struct gen *g);
int64_t gen_user_rank(struct gen *g);

/* The id of the user / product of Zipf rank 'rank' (1-based): "u<rank>", "p<rank>". */
void gen_user_id(int64_t rank, char *buf, size_t len);

#endif
