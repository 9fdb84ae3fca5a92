/* Apply-path microbenchmark: N generated events (5000 Zipf-ish users, 1000 products with a
 * skewed choice, 5 categories, 1 purchase in 20) through the state engine in batches of
 * 500, with group commit, no gRPC. Prints events/s; run under
 * `valgrind --tool=callgrind` for an instruction count that does not depend on the load
 * of the machine.   eddy-apply-bench [N]   (default 50000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "node/state/engine.h"
struct done { int n; };
static void on_done(void *ud, eddy_err err, const struct engine_ingest_result *r) { (void)err; (void)r; ((struct done *)ud)->n++; }
int main(int argc, char **argv) {
    int N = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 50000;
    char dir[] = "/tmp/applybench-XXXXXX"; mkdtemp(dir);
    struct engine_opts o = {0};
    o.data_dir = dir; o.apply.partitions = 256;
    o.apply.window = (struct window_params){60000, 5000, 0, 0};
    o.apply.model = (struct model_params){{7 * 86400000LL, 8}, 20, 50, 50};
    o.apply.cooccurrence_span_ms = 1800000; o.apply.cooccurrence_items = 10;
    o.apply.dedup_window_ms = 86400000; o.apply.sweep_interval_ms = 3600000;
    o.product = (struct product_params){256, {86400000, 8}, {7 * 86400000LL, 8}, 50};
    o.rec = (struct rec_params){1, 1.5, 2, 3}; o.candidates = 50;
    o.max_pending_events = 10000000; o.max_group_events = 20000;
    engine *e; char err[256];
    if (engine_open(&o, &e, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    Eddy__V1__Event *ev = calloc(N, sizeof *ev); Eddy__V1__Event **pp = calloc(N, sizeof *pp);
    char (*ids)[24] = calloc(N, 24), (*us)[16] = calloc(N, 16), (*ps)[16] = calloc(N, 16);
    static const char *cats[] = {"books", "toys", "garden", "kitchen", "sports"};
    unsigned seed = 7;
    for (int i = 0; i < N; i++) {
        eddy__v1__event__init(&ev[i]);
        snprintf(ids[i], 24, "e%d", i); seed = seed * 1103515245 + 12345;
        snprintf(us[i], 16, "u%u", (seed >> 8) % 5000); seed = seed * 1103515245 + 12345;
        unsigned pr = (seed >> 8) % 1000; pr = pr * pr / 1000; snprintf(ps[i], 16, "p%u", pr);
        ev[i].event_id = ids[i]; ev[i].user_id = us[i]; ev[i].product_id = ps[i];
        ev[i].category = (char *)cats[pr % 5]; ev[i].price = 10;
        ev[i].timestamp_ms = 1800000000000LL + i * 10;
        ev[i].event_type = i % 20 == 0 ? EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE : EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
        pp[i] = &ev[i];
    }
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    struct done d = {0};
    for (int i = 0; i < N; i += 500) engine_ingest(e, pp + i, N - i < 500 ? N - i : 500, on_done, &d);
    engine_flush(e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%d events in %.2f s = %.0f events/s\n", N, s, N / s);
    engine_close(e);
    char cmd[128]; snprintf(cmd, sizeof cmd, "rm -rf %s", dir); if (system(cmd)) return 1;
    return 0;
}
