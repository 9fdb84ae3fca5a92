/* The small engine configuration the state-engine unit tests and the fuzzers share: 8
 * partitions, 60 s windows with 5 s of lateness, the node's default model, product and
 * Recommend parameters. Header-only, no test framework. */
#ifndef EDDY_TEST_ENGINE_OPTS_H
#define EDDY_TEST_ENGINE_OPTS_H

#include "node/state/engine.h"

#define TEST_ENGINE_PARTITIONS 8

/* The options of an engine whose data lives in 'dir' (borrowed). */
static inline struct engine_opts test_engine_opts(const char *dir)
{
    struct engine_opts o = {0};
    o.data_dir = dir;
    o.apply.partitions = TEST_ENGINE_PARTITIONS;
    o.apply.window = (struct window_params){60000, 5000, 0, 0};
    o.apply.model = (struct model_params){{7 * 86400000LL, 8}, 20, 50, 50};
    o.apply.cooccurrence_span_ms = 1800000;
    o.apply.cooccurrence_items = 10;
    o.apply.dedup_window_ms = 86400000;
    o.apply.sweep_interval_ms = 3600000;
    o.apply.key_set_bytes = APPLY_KEY_SET_DEFAULT;
    o.product = (struct product_params){TEST_ENGINE_PARTITIONS, {86400000, 8}, {7 * 86400000LL, 8}, 50,
                                        PRODUCT_PAIR_SET_DEFAULT};
    o.rec = (struct rec_params){1.0, 1.5, 2.0, 3, true, 0};
    o.stage2_staleness_ms = 0;
    o.candidates = 50;
    o.max_pending_events = 100000;
    o.max_group_events = 1000;
    o.read_barrier_timeout_ms = 10000;
    return o;
}

#endif
