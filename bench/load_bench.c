/* The write side of a move's copy, alone: a checkpoint file is read in 256 KiB pieces (as
 * the target receives the stream), checked by a checkpoint_reader, and written into a
 * fresh LevelDB in range batches of --batch bytes (store_replace_range_nosync, then one
 * store_sync_log), as node/cluster/ckptcopy.c does (there on a thread of its own, beside
 * the receive); no gRPC, no engine.
 * Prints the seconds of the whole load and of the writes alone, as one JSON line.
 *
 *   eddy-load-bench FILE DB_DIR [--batch BYTES] [--write-buffer BYTES] [--key KEY_FILE]
 *                                (defaults 4194304 as the mover, the node's 16 MiB; --key:
 *                                an encrypted checkpoint, as --checkpoint-key-file)
 *
 * DB_DIR must not exist (it is created, and left for the caller to remove). Under
 * `valgrind --tool=callgrind` the instruction count of the load is deterministic. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "node/state/checkpoint.h"
#include "node/state/store.h"

#define PIECE (256u << 10)

struct load {
    store *s;
    int64_t write_ns;
    uint64_t batches;
};

static eddy_err write_batch(void *ud, const struct store_key *start, const struct store_key *end,
                            store_batch *b)
{
    struct load *l = ud;
    int64_t t0 = clock_mono_ns();
    eddy_err err = store_replace_range_nosync(l->s, start, end, b, NULL);
    store_batch_free(b);
    l->write_ns += clock_mono_ns() - t0;
    l->batches++;
    return err;
}

static eddy_err on_record(void *ud, const unsigned char *key, size_t klen,
                          const unsigned char *val, size_t vlen)
{
    return store_range_loader_put(ud, key, klen, val, vlen);
}

static int usage(void)
{
    fprintf(stderr, "usage: eddy-load-bench FILE DB_DIR [--batch BYTES] [--write-buffer BYTES] "
                    "[--key KEY_FILE]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *file = argv[1], *dir = argv[2];
    struct load l = {0};
    size_t batch_bytes = 4u << 20;
    struct store_opts so = {.path = dir};
    struct ckptkey key;
    const char *key_file = NULL;
    char err[256] = "";
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch_bytes = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--write-buffer") == 0 && i + 1 < argc)
            so.write_buffer_bytes = strtoll(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            key_file = argv[++i];
        else
            return usage();
    }
    if (key_file && ckptkey_load(key_file, &key, err, sizeof(err)) != EDDY_OK) {
        fprintf(stderr, "eddy-load-bench: %s: %s\n", key_file, err);
        return 1;
    }
    if (store_open(&so, &l.s, err, sizeof(err)) != EDDY_OK) {
        fprintf(stderr, "eddy-load-bench: %s\n", err);
        return 1;
    }
    FILE *f = fopen(file, "rb");
    struct store_range_loader rl;
    eddy_err e = store_range_loader_init(&rl, batch_bytes, write_batch, &l);
    checkpoint_reader *r = checkpoint_reader_new(key_file ? &key : NULL, file, on_record, &rl);
    unsigned char *buf = malloc(PIECE);
    if (e == EDDY_OK && !(f && r && buf))
        e = EDDY_ERR_IO;
    int64_t t0 = clock_mono_ns();
    size_t n;
    while (e == EDDY_OK && (n = fread(buf, 1, PIECE, f)) > 0)
        e = checkpoint_reader_feed(r, buf, n);
    struct checkpoint_info info;
    if (e == EDDY_OK)
        e = checkpoint_reader_finish(r, &info);
    if (e == EDDY_OK) {
        struct store_key start, end;
        start.len = 0;
        key_u16(&start, (uint16_t)info.partition);
        key_prefix_end(&start, &end);
        e = store_range_loader_finish(&rl, &end);
    }
    int64_t s0 = clock_mono_ns();
    if (e == EDDY_OK)
        e = store_sync_log(l.s);
    l.write_ns += clock_mono_ns() - s0;
    double secs = (double)(clock_mono_ns() - t0) / 1e9;
    if (e == EDDY_OK)
        printf("{\"bytes\":%" PRIu64 ",\"records\":%" PRIu64 ",\"batches\":%" PRIu64
               ",\"seconds\":%.3f,\"write_seconds\":%.3f,\"mb_per_s\":%.1f}\n",
               info.bytes, info.records, l.batches, secs, (double)l.write_ns / 1e9,
               (double)info.bytes / 1e6 / secs);
    else
        fprintf(stderr, "eddy-load-bench: %s\n", eddy_strerror(e));
    free(buf);
    checkpoint_reader_free(r);
    store_range_loader_release(&rl);
    if (f)
        fclose(f);
    store_close(l.s);
    if (key_file)
        ckptkey_release(&key);
    return e == EDDY_OK ? 0 : 1;
}
