/* eddy-ref-leveldb: the physical lower bound of durable ingest on this machine. Writes the
 * events eddy-bench generates (same seed, same batch size), each stored once as its packed
 * protobuf bytes under a 16-byte log key, in LevelDB write batches synced to disk one by
 * one (or --group batches per sync), with the node's LevelDB options (snappy, 16 MiB write
 * buffer, bloom filter). Eddy stores more per event (log, dedup, model, windows, product),
 * so it cannot ingest faster than this with the same number of syncs.
 *
 * --dedup, --behind and --pause give the synced write the node's shape, to tell which of
 * its differences costs the acknowledgement (docs/BENCHMARKS.md, "Session 15"): a second
 * row per event (the DEDUP row: the event id, no value); unsynced writes of derived-state
 * rows (random keys, the flush's 128 KiB chunks) between the synced ones, which fill the
 * memtable and put bytes in LevelDB's log that the next synced write's fdatasync carries;
 * idle time before each, as lone batches arrive. Only the synced writes are timed. */
#include <errno.h>
#include <leveldb/c.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/clock.h"
#include "common/config.h"
#include "gen.h"
#include "latency.h"

enum { BEHIND_CHUNK = 128 * 1024, BEHIND_VALUE = 100 };

/* Write 'bytes' of derived-state-like rows unsynced, in chunks of BEHIND_CHUNK: 16-byte
 * keys from 'rng' (spread over the key space, as user and product rows are), 100-byte
 * values. Counts the writes in *writes. */
static bool write_behind(leveldb_t *db, const leveldb_writeoptions_t *wo,
                         leveldb_writebatch_t *wb, int64_t bytes, uint64_t *rng,
                         int64_t *writes)
{
    static const char value[BEHIND_VALUE];
    char *lerr = NULL;
    while (bytes > 0) {
        leveldb_writebatch_clear(wb);
        for (int64_t n = 0; n < BEHIND_CHUNK && n < bytes; n += 16 + BEHIND_VALUE) {
            char key[16] = "S";
            *rng ^= *rng << 13; /* xorshift64 */
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            memcpy(key + 1, rng, sizeof(*rng));
            leveldb_writebatch_put(wb, key, sizeof(key), value, sizeof(value));
        }
        bytes -= BEHIND_CHUNK;
        leveldb_write(db, wo, wb, &lerr);
        (*writes)++;
        if (lerr) {
            fprintf(stderr, "eddy-ref-leveldb: unsynced write: %s\n", lerr);
            leveldb_free(lerr);
            return false;
        }
    }
    leveldb_writebatch_clear(wb);
    return true;
}

/* CPU time of the calling thread: a synced write's own work (log record, memtable inserts)
 * apart from its wait for the disk, which a busy machine's wall clock mixes in. */
static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *dir = "", *output = "table", *scenario = "ref-leveldb";
    int64_t events = 200000, batch = 500, group = 1, seed = 1, duration_ms = 0, behind = 0;
    int64_t pause_ms = 0;
    bool dedup = false;
    const struct flag flags[] = {
        {"dir", FLAG_STRING, &dir, "LevelDB directory to create (must not exist; removed by the caller)", 0, 0},
        {"events", FLAG_INT, &events, "events to write", 1, 0},
        {"duration", FLAG_DURATION, &duration_ms, "stop after this long even if --events are not written (0 = no limit)", 0, 0},
        {"batch", FLAG_INT, &batch, "events per write batch (an Ingest call's worth)", 1, 100000},
        {"group", FLAG_INT, &group, "write batches per synced write (group commit)", 1, 100000},
        {"seed", FLAG_INT, &seed, "generator seed", 0, 0},
        {"dedup", FLAG_BOOL, &dedup, "also a DEDUP row per event (its id, no value), as the node writes", 0, 0},
        {"pause", FLAG_DURATION, &pause_ms, "idle this long before each synced write (lone batches, as eddy-bench --rate sends them)", 0, 0},
        {"behind", FLAG_SIZE, &behind, "unsynced bytes of random-key rows written before each synced write (the node's flush), untimed", 0, 0},
        {"scenario", FLAG_STRING, &scenario, "label printed with the results", 0, 0},
        {"output", FLAG_STRING, &output, "table | json (-o json)", 0, 0},
    };
    const size_t nflags = sizeof(flags) / sizeof(flags[0]);
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    char errbuf[256];
    char *lerr = NULL;
    int first = 0, rc = 2;
    leveldb_options_t *opts = NULL;
    leveldb_cache_t *cache = NULL;
    leveldb_filterpolicy_t *filter = NULL;
    leveldb_writeoptions_t *wsync = NULL, *wnosync = NULL;
    leveldb_t *db = NULL;
    leveldb_writebatch_t *wb = NULL, *bwb = NULL;
    uint64_t rng = 88172645463325252ull;
    struct gen_tables *tables = NULL;
    struct gen_event *ev = NULL;
    uint8_t *buf = NULL;
    struct latency lat, cpu;
    struct gen g;

    latency_init(&lat, 1000000);
    latency_init(&cpu, 1000000);
    if (!args)
        goto out;
    for (int i = 0; i < argc; i++)
        args[i] = strcmp(argv[i], "-o") == 0 ? (char *)"--output" : argv[i];
    int pr = config_parse(flags, nflags, argc, args, &first, errbuf, sizeof(errbuf));
    if (pr == 1) {
        puts("usage: eddy-ref-leveldb --dir DIR [flags]\n");
        config_usage(stdout, flags, nflags);
        rc = 0;
        goto out;
    }
    if (pr != 0 || first < argc || !dir[0]) {
        fprintf(stderr, "eddy-ref-leveldb: %s\n", pr != 0 ? errbuf : "--dir DIR is required");
        goto out;
    }

    struct gen_config gc = {.seed = (uint64_t)seed, .run_id = "ref", .users = 100000,
                            .products = 10000, .categories = 50, .brands = 200,
                            .zipf_users = 0.9, .zipf_products = 1.0, .disorder_ms = 2000,
                            .time_rate = 1000};
    tables = gen_tables_new(&gc);
    ev = calloc(1, sizeof(*ev));
    buf = malloc(64 * 1024);
    opts = leveldb_options_create();
    cache = leveldb_cache_create_lru(64u << 20);
    filter = leveldb_filterpolicy_create_bloom(10);
    wsync = leveldb_writeoptions_create();
    wnosync = leveldb_writeoptions_create();
    wb = leveldb_writebatch_create();
    bwb = leveldb_writebatch_create();
    if (!tables || !ev || !buf) {
        fprintf(stderr, "eddy-ref-leveldb: out of memory\n");
        goto out;
    }
    leveldb_options_set_create_if_missing(opts, 1);
    leveldb_options_set_error_if_exists(opts, 1);
    leveldb_options_set_cache(opts, cache);
    leveldb_options_set_filter_policy(opts, filter);
    leveldb_options_set_compression(opts, leveldb_snappy_compression);
    leveldb_options_set_write_buffer_size(opts, 16u << 20);
    leveldb_writeoptions_set_sync(wsync, 1);
    db = leveldb_open(opts, dir, &lerr);
    if (lerr) {
        fprintf(stderr, "eddy-ref-leveldb: open %s: %s\n", dir, lerr);
        goto out;
    }
    gen_init(&g, tables, 0);

    rc = 1;
    int64_t bytes = 0, written = 0, syncs = 0, in_group = 0, unsynced = 0;
    int64_t start = clock_mono_ns();
    for (int64_t i = 0; i < events; i++) {
        Eddy__V1__Event *e = &ev->ev;
        gen_next(&g, clock_wall_ms(), ev);
        size_t len = protobuf_c_message_get_packed_size(&e->base);
        if (len > 64 * 1024)
            continue;
        protobuf_c_message_pack(&e->base, buf);
        char key[16];
        uint64_t seq = (uint64_t)i;
        memset(key, 0, sizeof(key));
        key[0] = 'L'; /* then 7 zero bytes and the big-endian sequence number */
        for (int k = 0; k < 8; k++)
            key[15 - k] = (char)(seq >> (8 * k));
        leveldb_writebatch_put(wb, key, sizeof(key), (const char *)buf, len);
        bytes += (int64_t)(len + sizeof(key));
        if (dedup) {
            char dkey[sizeof(ev->event_id) + 1] = "D";
            size_t idlen = strnlen(ev->event_id, sizeof(ev->event_id));
            memcpy(dkey + 1, ev->event_id, idlen);
            leveldb_writebatch_put(wb, dkey, idlen + 1, "", 0);
            bytes += (int64_t)idlen + 1;
        }
        if ((i + 1) % batch != 0 && i + 1 != events)
            continue;
        if (++in_group < group && i + 1 != events)
            continue;
        if (behind > 0 && !write_behind(db, wnosync, bwb, behind, &rng, &unsynced))
            goto out;
        if (pause_ms > 0)
            nanosleep(&(struct timespec){pause_ms / 1000, pause_ms % 1000 * 1000000}, NULL);
        int64_t t0 = clock_mono_ns(), c0 = thread_cpu_ns(); /* the synced write alone */
        leveldb_write(db, wsync, wb, &lerr);
        if (lerr) {
            fprintf(stderr, "eddy-ref-leveldb: write: %s\n", lerr);
            goto out;
        }
        int64_t now = clock_mono_ns();
        latency_add(&lat, (double)(now - t0) / 1e6);
        latency_add(&cpu, (double)(thread_cpu_ns() - c0) / 1e6);
        leveldb_writebatch_clear(wb);
        in_group = 0;
        syncs++;
        written = i + 1;
        if (duration_ms > 0 && now - start >= duration_ms * 1000000LL)
            break;
    }
    double dur = (double)(clock_mono_ns() - start) / 1e9;
    struct latency_summary s, sc;
    latency_summarize(&lat, &s);
    latency_summarize(&cpu, &sc);
    double eps = dur > 0 ? (double)written / dur : 0;

    if (strcmp(output, "json") == 0) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "scenario", scenario);
        cJSON_AddNumberToObject(o, "throughput_eps", eps);
        cJSON_AddNumberToObject(o, "events", (double)written);
        cJSON_AddNumberToObject(o, "batch", (double)batch);
        cJSON_AddNumberToObject(o, "group", (double)group);
        cJSON_AddNumberToObject(o, "syncs", (double)syncs);
        cJSON_AddNumberToObject(o, "unsynced_writes", (double)unsynced);
        cJSON_AddNumberToObject(o, "bytes", (double)bytes);
        cJSON_AddNumberToObject(o, "bytes_per_event", written ? (double)bytes / (double)written : 0);
        cJSON_AddNumberToObject(o, "duration_s", dur);
        cJSON_AddNumberToObject(o, "errors", 0);
        cJSON_AddItemToObject(o, "latency_ms", latency_summary_json(&s));
        cJSON_AddItemToObject(o, "write_cpu_ms", latency_summary_json(&sc));
        char *txt = cJSON_PrintUnformatted(o);
        if (txt)
            puts(txt);
        free(txt);
        cJSON_Delete(o);
    } else {
        printf("eddy-ref-leveldb: %lld events (%.0f bytes each) in %lld synced writes of %lld x %lld events\n",
               (long long)written, written ? (double)bytes / (double)written : 0.0,
               (long long)syncs, (long long)group, (long long)batch);
        printf("%-20s %.2f s\n%-20s %.0f events/s\n", "duration", dur, "throughput", eps);
        printf("%-20s p50 %.3f  p95 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms  (n=%llu)\n",
               "synced write", s.p50, s.p95, s.p99, s.p999, s.max, (unsigned long long)s.count);
        printf("%-20s p50 %.3f  p95 %.3f  p99 %.3f  max %.3f ms\n", "its CPU", sc.p50, sc.p95,
               sc.p99, sc.max);
    }
    rc = 0;
out:
    if (lerr)
        leveldb_free(lerr);
    /* LevelDB's C API does not accept NULL in its close/destroy functions */
    if (wb)
        leveldb_writebatch_destroy(wb);
    if (db)
        leveldb_close(db);
    if (bwb)
        leveldb_writebatch_destroy(bwb);
    if (wsync)
        leveldb_writeoptions_destroy(wsync);
    if (wnosync)
        leveldb_writeoptions_destroy(wnosync);
    if (opts)
        leveldb_options_destroy(opts);
    if (cache)
        leveldb_cache_destroy(cache);
    if (filter)
        leveldb_filterpolicy_destroy(filter);
    gen_tables_free(tables);
    latency_release(&lat);
    latency_release(&cpu);
    free(ev);
    free(buf);
    free(args);
    return rc;
}
