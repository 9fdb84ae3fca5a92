/* The checkpoint reader (node/state/checkpoint.c): a file of arbitrary bytes is either a
 * whole valid checkpoint or refused cleanly. The first byte sets the size of the pieces
 * the incremental reader is fed (as a move's stream arrives) and whether the footer's
 * length and CRC are made right first (so that damage inside the records gets past the
 * checksum); the rest is the file. The same bytes are then given to checkpoint_load
 * over a partition that holds one other key: refused, the partition must still hold
 * exactly that key (no half restore); loaded, exactly the file's records. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/log.h"
#include "node/state/checkpoint.h"
#include "node/state/store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static store *db;
static char dir[64];
static char path[128];
static uint8_t holds_sentinel[1 << 16]; /* by partition: reset() needs no synced write */

static int count_record(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    (*(uint64_t *)ud)++;
    return 0;
}

static eddy_err on_record(void *ud, const unsigned char *key, size_t klen,
                          const unsigned char *val, size_t vlen)
{
    (*(uint64_t *)ud)++;
    return EDDY_OK;
}

static void cleanup(void)
{
    store_close(db);
    unlink(path);
    store_destroy(dir, NULL, 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_set_level("error");
    /* on tmpfs when there is one: an accepted load is a synced LevelDB write, a few ms on
     * a disk (2000 seed runs: 9 s on /tmp, 4 s on /dev/shm, at a load average of 11) */
    snprintf(dir, sizeof(dir), "%s/eddy-fuzz-ckp-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir))
        abort();
    snprintf(path, sizeof(path), "%s/in.ckp", dir);
    char err[256];
    struct store_opts so = {dir, 1 << 20, 1 << 20};
    if (store_open(&so, &db, err, sizeof(err)) != EDDY_OK)
        abort();
    atexit(cleanup);
    return 0;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The one key partition p holds before a load: what a refused load must leave. */
static void sentinel(uint32_t p, struct store_key *k)
{
    key_init(k, p, T_USER);
    key_str(k, "sentinel");
}

static void reset(uint32_t p)
{
    struct store_key k, start, end;
    sentinel(p, &k);
    start.len = 0;
    key_u16(&start, (uint16_t)p);
    key_prefix_end(&start, &end);
    store_batch *b = store_batch_new();
    if (!b || store_batch_put(b, k.buf, k.len, "v", 1) != EDDY_OK ||
        store_replace_range_nosync(db, &start, &end, b, NULL) != EDDY_OK)
        abort();
    store_batch_free(b);
}

static uint64_t keys_of(uint32_t p)
{
    struct store_key start, end;
    start.len = 0;
    key_u16(&start, (uint16_t)p);
    key_prefix_end(&start, &end);
    uint64_t n = 0;
    if (store_scan(db, &start, &end, count_record, &n) != EDDY_OK)
        abort();
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t *file = malloc(size);
    if (!file)
        abort();
    size_t len = size - 1;
    memcpy(file, data + 1, len);
    if ((data[0] & 1) && len >= CHECKPOINT_HEADER_LEN + CHECKPOINT_FOOTER_LEN) {
        put_le(file + len - 12, len, 8);
        put_le(file + len - 4, crc32c(file, len - 4), 4);
    }
    size_t piece = (size_t)(data[0] >> 1) * 37 + 1;

    uint64_t fed = 0;
    struct checkpoint_info info;
    checkpoint_reader *r = checkpoint_reader_new(NULL, "fuzz", on_record, &fed); /* plain */
    if (!r)
        abort();
    eddy_err err = EDDY_OK;
    for (size_t off = 0; off < len && err == EDDY_OK; off += piece)
        err = checkpoint_reader_feed(r, file + off, len - off < piece ? len - off : piece);
    if (err == EDDY_OK)
        err = checkpoint_reader_finish(r, &info);
    checkpoint_reader_free(r);
    bool valid = err == EDDY_OK;
    if (valid && (info.records != fed || info.bytes != len))
        abort();

    uint32_t p = len >= 14 ? (uint32_t)(file[12] | file[13] << 8) : 0;
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(file, 1, len, f) != len || fclose(f) != 0)
        abort();
    if (!holds_sentinel[p])
        reset(p);
    holds_sentinel[p] = 1;
    err = checkpoint_load(NULL, db, p, path, &info);
    if (err == EDDY_OK)
        holds_sentinel[p] = 0;
    if ((err == EDDY_OK) != valid)
        abort(); /* the loader and the stream reader disagree */
    uint64_t n = keys_of(p);
    if (err == EDDY_OK ? n != info.records : n != 1)
        abort();
    free(file);
    return 0;
}
