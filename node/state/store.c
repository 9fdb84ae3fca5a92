/* LevelDB access for the state node: opening and removing the database, typed reads,
 * scans, snapshots, range replaces, log syncs and write counts. This is the one place that
 * turns LevelDB's char **errptr into eddy_err (store_take_err, which store_txn.c shares).
 * The key encoding is in store_key.c, the write transactions in store_txn.c. */
#include "node/state/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <leveldb/c.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/thread.h"
#include "node/state/store_internal.h"

/* ---- open / read --------------------------------------------------------------------- */

eddy_err store_take_err(char *lerr, char *err, size_t errlen)
{
    if (!lerr)
        return EDDY_OK;
    if (err)
        snprintf(err, errlen, "%s", lerr);
    log_error("msg=\"leveldb error\" error=\"%s\"", lerr);
    leveldb_free(lerr);
    return EDDY_ERR_IO;
}

eddy_err store_take_write_err(store *s, char *lerr)
{
    char why[512] = "";
    eddy_err err = store_take_err(lerr, why, sizeof(why));
    if (err != EDDY_OK && s->write_failed)
        s->write_failed(s->write_failed_ud, why);
    return err;
}

/* mkdir -p: LevelDB creates the database directory but not its parents. */
static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* The process that holds LevelDB's lock on 'dir' (an fcntl lock on dir/LOCK), or 0 when
 * none does or it cannot be told. Locks of this very process are not reported (fcntl). */
static pid_t lock_holder(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/LOCK", dir) >= (int)sizeof(path))
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    pid_t pid = fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK ? fl.l_pid : 0;
    close(fd);
    return pid;
}

static _Atomic int compaction_nice; /* store_set_compaction_nice */

void store_set_compaction_nice(int nice)
{
    atomic_store(&compaction_nice, nice);
}

struct compaction_start {
    leveldb_t *db;
    int nice;
};

/* LevelDB starts its compaction thread the first time it schedules work, and the thread
 * takes the name and the nice value of the thread that did (common/thread.h). A manual
 * compaction of an empty range past every key, from this short-lived thread, schedules it
 * now, as "eddy-leveldb" at the nice value asked for: after a burst the compactions take
 * a core of two for tens of seconds, and at nice 0 they delay the acknowledgements' threads
 * (docs/BENCHMARKS.md, "Session 15"). */
static void *compaction_start_main(void *arg)
{
    struct compaction_start *c = arg;
    static const char past[] = "\xff\xff\xff\xff";
    thread_name("leveldb");
#ifdef __linux__
    if (c->nice != 0 && setpriority(PRIO_PROCESS, (id_t)gettid(), c->nice) != 0)
        log_warn("msg=\"cannot lower the compaction thread's priority\" error=\"%s\"",
                 strerror(errno));
#endif
    leveldb_compact_range(c->db, past, sizeof(past) - 1, past, sizeof(past) - 1);
    return NULL;
}

/* Start LevelDB's compaction thread from compaction_start_main. If no thread can be
 * started, LevelDB starts it with the first write, named and prioritized as its writer. */
static void compaction_start(leveldb_t *db, int nice)
{
    struct compaction_start c = {db, nice};
    pthread_t t;
    if (pthread_create(&t, NULL, compaction_start_main, &c) == 0)
        pthread_join(t, NULL);
}

eddy_err store_open(const struct store_opts *o, store **out, char *err, size_t errlen)
{
    char *lerr = NULL;
    if (make_dirs(o->path) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", o->path, strerror(errno));
        return EDDY_ERR_IO;
    }
    /* Before LevelDB says "IO error: lock DIR/LOCK: Resource temporarily unavailable". */
    pid_t holder = lock_holder(o->path);
    if (holder > 0) {
        snprintf(err, errlen, "data directory %s is in use by process %ld (another eddy-node? "
                 "each node needs its own --data-dir)", o->path, (long)holder);
        return EDDY_ERR_IO;
    }
    store *s = calloc(1, sizeof(*s));
    if (!s)
        return EDDY_ERR_NOMEM;
    pthread_mutex_init(&s->changes_mu, NULL);
    s->path = strdup(o->path);
    s->key_writes = calloc(STORE_WRITE_SLOTS, sizeof(*s->key_writes));
    if (!s->path || !s->key_writes || store_dirty_init(&s->dirty) != EDDY_OK) {
        pthread_mutex_destroy(&s->changes_mu);
        store_dirty_release(&s->dirty);
        free(s->path);
        free(s->key_writes);
        free(s);
        return EDDY_ERR_NOMEM;
    }
    s->opts = leveldb_options_create();
    s->cache = leveldb_cache_create_lru(o->cache_bytes > 0 ? (size_t)o->cache_bytes : 64u << 20);
    s->filter = leveldb_filterpolicy_create_bloom(10);
    leveldb_options_set_create_if_missing(s->opts, 1);
    leveldb_options_set_cache(s->opts, s->cache);
    leveldb_options_set_filter_policy(s->opts, s->filter);
    leveldb_options_set_compression(s->opts, leveldb_snappy_compression);
    leveldb_options_set_write_buffer_size(
        s->opts, o->write_buffer_bytes > 0 ? (size_t)o->write_buffer_bytes : 16u << 20);
    s->db = leveldb_open(s->opts, o->path, &lerr);
    if (lerr) {
        eddy_err e = store_take_err(lerr, err, errlen);
        store_close(s);
        return e;
    }
    compaction_start(s->db, atomic_load(&compaction_nice));
    s->ropts = leveldb_readoptions_create();
    s->wsync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(s->wsync, 1);
    s->wnosync = leveldb_writeoptions_create();
    s->obj_cache_bytes = STORE_KEPT_BYTES_DEFAULT;
    s->flush_chunk = STORE_FLUSH_CHUNK_DEFAULT;
    atomic_init(&s->gen, 0);
    atomic_init(&s->kept_tables, 0);
    atomic_init(&s->fail_writes, 0);
    atomic_init(&s->tracked_tables, 0);
    atomic_init(&s->bulk_writes, 0);
    for (size_t i = 0; i < STORE_STAT_TABLES; i++) {
        atomic_init(&s->written_keys[i], 0);
        atomic_init(&s->written_bytes[i], 0);
        atomic_init(&s->written_packs[i], 0);
    }
    atomic_init(&s->written_batches, 0);
    atomic_init(&s->snapshots, 0);
    *out = s;
    return EDDY_OK;
}

void store_on_write_failed(store *s, store_write_failed_fn *fn, void *ud)
{
    s->write_failed = fn;
    s->write_failed_ud = ud;
}

void store_close(store *s)
{
    if (!s)
        return;
    if (s->db && s->dirty.runs)
        store_flush(s); /* a clean close leaves nothing to replay (an error is logged) */
    if (s->db)
        leveldb_close(s->db);
    if (s->ropts)
        leveldb_readoptions_destroy(s->ropts);
    if (s->wsync)
        leveldb_writeoptions_destroy(s->wsync);
    if (s->wnosync)
        leveldb_writeoptions_destroy(s->wnosync);
    leveldb_options_destroy(s->opts);
    leveldb_cache_destroy(s->cache);
    leveldb_filterpolicy_destroy(s->filter);
    pthread_mutex_destroy(&s->changes_mu);
    store_dirty_release(&s->dirty);
    free(s->key_writes);
    free(s->path);
    free(s);
}

eddy_err store_destroy(const char *dir, char *err, size_t errlen)
{
    char *lerr = NULL;
    leveldb_options_t *lo = leveldb_options_create();
    leveldb_destroy_db(lo, dir, &lerr);
    leveldb_options_destroy(lo);
    return store_take_err(lerr, err, errlen);
}

eddy_err store_get(store *s, const struct store_key *key, char **val, size_t *vlen)
{
    bool hit;
    eddy_err err = store_dirty_get(&s->dirty, key->buf, key->len, val, vlen, &hit);
    if (err != EDDY_OK || hit)
        return err;
    char *lerr = NULL;
    *val = leveldb_get(s->db, s->ropts, (const char *)key->buf, key->len, vlen, &lerr);
    return store_take_err(lerr, NULL, 0);
}

eddy_err store_decode(const ProtobufCMessageDescriptor *desc, const char *val, size_t vlen,
                      ProtobufCMessage **msg)
{
    *msg = protobuf_c_message_unpack(desc, NULL, vlen, (const uint8_t *)val);
    if (!*msg) {
        log_error("msg=\"stored value does not decode\" type=%s", desc->name);
        return EDDY_ERR_CORRUPT;
    }
    return EDDY_OK;
}

eddy_err store_get_msg(store *s, const struct store_key *key,
                       const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg)
{
    char *val = NULL;
    size_t vlen = 0;
    *msg = NULL;
    eddy_err e = store_get(s, key, &val, &vlen);
    if (e == EDDY_OK && val)
        e = store_decode(desc, val, vlen, msg);
    leveldb_free(val);
    return e;
}

eddy_err store_merge_scan(leveldb_iterator_t *it, const struct store_key *start,
                          const struct store_key *end, const struct store_ovl *ovl, size_t n,
                          store_scan_fn *fn, void *ud, bool *stopped)
{
    leveldb_iter_seek(it, (const char *)start->buf, start->len);
    size_t j = 0;
    int stop = 0;
    while (!stop) {
        const unsigned char *k = NULL;
        size_t klen = 0;
        if (leveldb_iter_valid(it)) {
            k = (const unsigned char *)leveldb_iter_key(it, &klen);
            if (!key_before_end((const char *)k, klen, end))
                k = NULL;
        }
        if (!k && j == n)
            break;
        int c = !k ? 1 : j == n ? -1 : key_cmp_raw(k, klen, ovl[j].key, ovl[j].klen);
        if (c < 0) { /* LevelDB's only */
            size_t vlen;
            const char *v = leveldb_iter_value(it, &vlen);
            stop = fn(ud, k, klen, v, vlen);
            leveldb_iter_next(it);
        } else { /* the overlay wins (and hides LevelDB's twin) */
            if (!ovl[j].del)
                stop = fn(ud, ovl[j].key, ovl[j].klen, ovl[j].val, ovl[j].vlen);
            if (c == 0)
                leveldb_iter_next(it);
            j++;
        }
    }
    if (stopped)
        *stopped = stop != 0;
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    return store_take_err(lerr, NULL, 0);
}

eddy_err store_ovl_merge(const struct store_ovl *a, size_t na, const struct store_ovl *b,
                         size_t nb, struct store_ovl **out, size_t *n)
{
    *n = 0;
    if (!(*out = malloc((na + nb + 1) * sizeof(**out))))
        return EDDY_ERR_NOMEM;
    size_t i = 0, j = 0;
    while (i < na || j < nb) {
        int c = i == na ? 1 : j == nb ? -1 : key_cmp_raw(a[i].key, a[i].klen, b[j].key, b[j].klen);
        if (c <= 0) {
            (*out)[(*n)++] = a[i++];
            j += c == 0;
        } else {
            (*out)[(*n)++] = b[j++];
        }
    }
    return EDDY_OK;
}

/* Scan the ranges [starts[r], ends[r]) in turn with one iterator, each merged with the
 * dirty set's values in it (none for a snapshot: 'dirty' NULL); fn returning 1 stops. The
 * dirty values are copied before the iterator is created: a flush that writes them to
 * LevelDB and drops them meanwhile leaves them in the copy or in the iterator's view. */
static eddy_err scan_ranges_with(leveldb_t *db, const leveldb_readoptions_t *ropts,
                                 struct store_dirty *dirty, const struct store_key *starts,
                                 const struct store_key *ends, size_t n, store_scan_fn *fn,
                                 void *ud)
{
    struct store_ovl **ovl = NULL;
    size_t *novl = NULL;
    eddy_err err = EDDY_OK;
    if (dirty && atomic_load_explicit(&dirty->bytes, memory_order_acquire) > 0) {
        ovl = calloc(n, sizeof(*ovl));
        novl = calloc(n, sizeof(*novl));
        if (!ovl || !novl)
            err = EDDY_ERR_NOMEM;
        for (size_t r = 0; r < n && err == EDDY_OK; r++)
            err = store_dirty_range(dirty, &starts[r], &ends[r], &ovl[r], &novl[r]);
    }
    leveldb_iterator_t *it = err == EDDY_OK ? leveldb_create_iterator(db, ropts) : NULL;
    bool stop = false;
    for (size_t r = 0; it && r < n && !stop && err == EDDY_OK; r++)
        err = store_merge_scan(it, &starts[r], &ends[r], ovl ? ovl[r] : NULL,
                               novl ? novl[r] : 0, fn, ud, &stop);
    if (it)
        leveldb_iter_destroy(it);
    for (size_t r = 0; ovl && r < n; r++)
        free(ovl[r]);
    free(ovl);
    free(novl);
    return err;
}

static eddy_err scan_with(leveldb_t *db, const leveldb_readoptions_t *ropts,
                          struct store_dirty *dirty, const struct store_key *start,
                          const struct store_key *end, store_scan_fn *fn, void *ud)
{
    return scan_ranges_with(db, ropts, dirty, start, end, 1, fn, ud);
}

eddy_err store_scan(store *s, const struct store_key *start, const struct store_key *end,
                    store_scan_fn *fn, void *ud)
{
    return scan_with(s->db, s->ropts, &s->dirty, start, end, fn, ud);
}

eddy_err store_scan_ranges(store *s, const struct store_key *starts,
                           const struct store_key *ends, size_t n, store_scan_fn *fn, void *ud)
{
    return scan_ranges_with(s->db, s->ropts, &s->dirty, starts, ends, n, fn, ud);
}

/* The index of the first entry of sorted 'ovl' at or past key 'k' (n: none). */
static size_t ovl_lower_bound(const struct store_ovl *ovl, size_t n, const unsigned char *k,
                              size_t klen)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_cmp_raw(ovl[mid].key, ovl[mid].klen, k, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The entry of sorted 'ovl' for key 'k', or NULL. */
static const struct store_ovl *ovl_find(const struct store_ovl *ovl, size_t n,
                                        const unsigned char *k, size_t klen)
{
    size_t i = ovl_lower_bound(ovl, n, k, klen);
    return i < n && key_cmp_raw(ovl[i].key, ovl[i].klen, k, klen) == 0 ? &ovl[i] : NULL;
}

/* Whether sorted 'ovl' deletes key 'k'. */
static bool ovl_deletes(const struct store_ovl *ovl, size_t n, const unsigned char *k,
                        size_t klen)
{
    const struct store_ovl *o = ovl_find(ovl, n, k, klen);
    return o && o->del;
}

eddy_err store_last(store *s, const struct store_key *start, const struct store_key *end,
                    store_scan_fn *fn, void *ud, bool *found)
{
    *found = false;
    struct store_ovl *ovl = NULL;
    size_t n = 0;
    eddy_err err = store_dirty_range(&s->dirty, start, end, &ovl, &n);
    if (err != EDDY_OK)
        return err;
    leveldb_iterator_t *it = leveldb_create_iterator(s->db, s->ropts);
    if (!it) {
        free(ovl);
        return EDDY_ERR_NOMEM;
    }
    /* the first key at or past 'end', then one back; none past it: the very last key */
    leveldb_iter_seek(it, (const char *)end->buf, end->len);
    if (end->len == 0)
        leveldb_iter_seek_to_last(it);
    else if (leveldb_iter_valid(it))
        leveldb_iter_prev(it);
    else
        leveldb_iter_seek_to_last(it);
    /* LevelDB's last key the dirty set does not delete, against the dirty set's last put */
    const unsigned char *k = NULL;
    const char *v = NULL;
    size_t klen = 0, vlen = 0;
    for (; leveldb_iter_valid(it); leveldb_iter_prev(it)) {
        k = (const unsigned char *)leveldb_iter_key(it, &klen);
        if (key_before_end((const char *)k, klen, start) ||
            !key_before_end((const char *)k, klen, end)) {
            k = NULL;
            break;
        }
        if (!ovl_deletes(ovl, n, k, klen)) {
            v = leveldb_iter_value(it, &vlen);
            break;
        }
        k = NULL;
    }
    size_t last = n;
    while (last > 0 && ovl[last - 1].del)
        last--;
    if (last > 0 && (!k || key_cmp_raw(ovl[last - 1].key, ovl[last - 1].klen, k, klen) >= 0)) {
        k = ovl[last - 1].key;
        klen = ovl[last - 1].klen;
        v = ovl[last - 1].val;
        vlen = ovl[last - 1].vlen;
    }
    if (k) {
        *found = true;
        fn(ud, k, klen, v, vlen);
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    free(ovl);
    return store_take_err(lerr, NULL, 0);
}

/* ---- write-behind ------------------------------------------------------------------- */

void store_set_behind(store *s, uint32_t tables)
{
    atomic_store(&s->dirty.tables, tables);
}

void store_set_flush_chunk(store *s, size_t bytes)
{
    s->flush_chunk = bytes;
}

size_t store_dirty_bytes(store *s)
{
    return atomic_load_explicit(&s->dirty.bytes, memory_order_relaxed);
}

uint64_t store_flush_count(store *s)
{
    return atomic_load_explicit(&s->dirty.flushes, memory_order_relaxed);
}

static _Atomic int crash_left = -1; /* -1: EDDY_TEST_CRASH_AT not read yet; 0: none */

void store_crash_rearm(void)
{
    atomic_store(&crash_left, -1);
}

void store_crash_point(const char *phase)
{
    _Atomic int *const left = &crash_left;
    static char want[64];
    int n = atomic_load(left);
    if (n == -1) {
        const char *env = getenv("EDDY_TEST_CRASH_AT");
        int at = 0;
        if (env && *env) {
            const char *colon = strchr(env, ':');
            size_t len = colon ? (size_t)(colon - env) : strlen(env);
            if (len < sizeof(want)) {
                memcpy(want, env, len);
                want[len] = '\0';
                at = 1;
                if (colon) {
                    char *endp;
                    long v = strtol(colon + 1, &endp, 10);
                    at = v > 0 && *endp == '\0' ? (int)v : 1;
                }
            }
        }
        int expected = -1;
        atomic_compare_exchange_strong(left, &expected, at);
        n = atomic_load(left);
    }
    if (n <= 0 || strcmp(phase, want) != 0)
        return;
    if (atomic_fetch_sub(left, 1) == 1) {
        log_warn("msg=\"EDDY_TEST_CRASH_AT: exiting\" phase=%s", phase);
        _exit(86);
    }
}

/* Write the dirty set to LevelDB, unsynced, and drop what it wrote; the caller holds
 * flush_mu. Unsynced: a crash may lose it, and then the restart replays each partition's
 * log from the META it did not reach (LevelDB keeps the writes in order: never a later
 * write without an earlier one).
 *
 * In writes of about s->flush_chunk bytes, because LevelDB writes one batch at a time: a
 * group's synced log write (its acknowledgement) that comes while a flush writes waits
 * for that write, which for one write of the whole set was the memtable inserts of every
 * row changed since the last flush (tens of ms). A crash between two writes leaves some
 * partitions flushed and others not, which is safe because each write holds whole
 * partitions and the stage-2 rows go first: a partition's own rows and its META are one
 * write (its log replays from that META, or from the one before, over the matching
 * state), and every stage-2 row (product state with the S2_HW marks of what it counts)
 * is in LevelDB before the META of any partition whose events it counts, so a replay
 * re-emits what a crash lost and the marks skip what was kept. */
static eddy_err flush_locked(store *s)
{
    struct store_dirty *d = &s->dirty;
    if (atomic_load_explicit(&d->bytes, memory_order_acquire) == 0)
        return EDDY_OK;
    uint64_t keys[STORE_STAT_TABLES] = {0}, bytes[STORE_STAT_TABLES] = {0};
    struct dirty_batches b;
    eddy_err err = store_dirty_batches(d, s->flush_chunk ? s->flush_chunk : SIZE_MAX, &b, keys,
                                       bytes);
    if (err != EDDY_OK)
        return err;
    store_crash_point("flush-before-write");
    for (size_t i = 0; i < b.n && err == EDDY_OK; i++) {
        char *lerr = NULL;
        leveldb_write(s->db, s->wnosync, b.wb[i], &lerr);
        if (lerr)
            err = store_take_write_err(s, lerr); /* kept: the next flush writes it all again */
        else if (i + 1 < b.n)
            store_crash_point("flush-chunk");
    }
    size_t writes = b.n;
    uint64_t ver = b.ver;
    store_dirty_batches_free(&b);
    if (err != EDDY_OK)
        return err;
    store_crash_point("flush-after-write");
    store_dirty_drop(d, ver);
    for (size_t i = 0; i < STORE_STAT_TABLES; i++) {
        if (!keys[i])
            continue;
        atomic_fetch_add_explicit(&s->written_keys[i], keys[i], memory_order_relaxed);
        atomic_fetch_add_explicit(&s->written_bytes[i], bytes[i], memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&s->written_batches, writes, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->flushes, 1, memory_order_relaxed);
    return EDDY_OK;
}

eddy_err store_flush(store *s)
{
    pthread_mutex_lock(&s->dirty.flush_mu);
    eddy_err err = flush_locked(s);
    pthread_mutex_unlock(&s->dirty.flush_mu);
    return err;
}

/* Flush and hold the store at a group boundary: no txn write publishes until
 * release_boundary. For what must find everything in LevelDB (snapshots, range
 * replaces, dumps). */
static eddy_err hold_boundary(store *s)
{
    pthread_mutex_lock(&s->dirty.pub_mu);
    eddy_err err = store_flush(s);
    if (err != EDDY_OK)
        pthread_mutex_unlock(&s->dirty.pub_mu);
    return err;
}

static void release_boundary(store *s)
{
    pthread_mutex_unlock(&s->dirty.pub_mu);
}

uint64_t store_change_locked(store *s, const struct store_txn *by, const struct store_key *start,
                             const struct store_key *end)
{
    uint64_t g = atomic_load_explicit(&s->gen, memory_order_relaxed) + 1;
    struct store_change *c = &s->changes[g % STORE_CHANGES];
    c->gen = g;
    c->by = by;
    c->all = start == NULL;
    if (start) {
        c->start = *start;
        c->end = *end;
    }
    atomic_store_explicit(&s->gen, g, memory_order_release);
    return g;
}

/* A write outside the txns' view: they must forget what they kept of [start, end). */
static void store_changed(store *s, const struct store_key *start, const struct store_key *end)
{
    atomic_fetch_add(&s->bulk_writes, 1); /* for store_key_writes: every key */
    pthread_mutex_lock(&s->changes_mu);
    store_change_locked(s, NULL, start, end);
    pthread_mutex_unlock(&s->changes_mu);
}

void store_set_kept_bytes(store *s, size_t bytes)
{
    s->obj_cache_bytes = bytes;
}

void store_write_stats(store *s, struct store_write_stats *out)
{
    for (size_t i = 0; i < STORE_STAT_TABLES; i++) {
        out->keys[i] = atomic_load_explicit(&s->written_keys[i], memory_order_relaxed);
        out->bytes[i] = atomic_load_explicit(&s->written_bytes[i], memory_order_relaxed);
        out->packs[i] = atomic_load_explicit(&s->written_packs[i], memory_order_relaxed);
    }
    out->writes = atomic_load_explicit(&s->written_batches, memory_order_relaxed);
}

void store_fail_writes(store *s, int n, eddy_err err)
{
    s->fail_err = err;
    atomic_store(&s->fail_writes, n);
}

void store_track_writes(store *s, enum store_table t)
{
    atomic_fetch_or(&s->tracked_tables, UINT32_C(1) << t);
}

uint64_t store_key_writes(store *s, const struct store_key *key)
{
    return atomic_load(&s->key_writes[store_write_slot(key->buf, key->len)]) +
           atomic_load(&s->bulk_writes);
}

eddy_err store_delete(store *s, const struct store_key *key)
{
    if (store_behind_key(s, key->buf, key->len)) {
        /* behind a dirty value the LevelDB delete would not show: delete there */
        pthread_rwlock_wrlock(&s->dirty.lock);
        eddy_err err = store_dirty_put_locked(&s->dirty, key->buf, key->len, NULL, 0, true);
        pthread_rwlock_unlock(&s->dirty.lock);
        if (err != EDDY_OK)
            return err;
    }
    char *lerr = NULL;
    leveldb_delete(s->db, s->wnosync, (const char *)key->buf, key->len, &lerr);
    uint32_t kept = atomic_load_explicit(&s->kept_tables, memory_order_relaxed);
    if (key->len < 3 || key->buf[2] >= 32 || (kept & (UINT32_C(1) << key->buf[2]))) {
        struct store_key end = *key; /* [key, key + "\0"): the key alone */
        if (end.len < STORE_KEY_MAX)
            end.buf[end.len++] = 0;
        store_changed(s, key, end.len > key->len ? &end : NULL);
    }
    return store_take_write_err(s, lerr);
}

uint64_t store_approximate_size(store *s)
{
    const char *start = "";
    const char *limit = "\xff\xff\xff\xff";
    size_t sl = 0, ll = 4;
    uint64_t size = 0;
    leveldb_approximate_sizes(s->db, 1, &start, &sl, &limit, &ll, &size);
    return size;
}

eddy_err store_dump(store *s, uint32_t tables, void *out_file)
{
    FILE *out = out_file;
    eddy_err err = hold_boundary(s);
    if (err != EDDY_OK)
        return err;
    release_boundary(s);
    leveldb_iterator_t *it = leveldb_create_iterator(s->db, s->ropts);
    for (leveldb_iter_seek_to_first(it); leveldb_iter_valid(it); leveldb_iter_next(it)) {
        size_t klen, vlen;
        const unsigned char *k = (const unsigned char *)leveldb_iter_key(it, &klen);
        const unsigned char *v = (const unsigned char *)leveldb_iter_value(it, &vlen);
        if (klen < 3 || k[2] >= 32 || !(tables & (UINT32_C(1) << k[2])))
            continue;
        for (size_t i = 0; i < klen; i++)
            fprintf(out, "%02x", k[i]);
        fputc(' ', out);
        for (size_t i = 0; i < vlen; i++)
            fprintf(out, "%02x", v[i]);
        fputc('\n', out);
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    return store_take_err(lerr, NULL, 0);
}

/* ---- snapshots ----------------------------------------------------------------------- */

struct store_snapshot {
    store *s;
    const leveldb_snapshot_t *snap;
    leveldb_readoptions_t *ropts;
    /* store_snapshot_new_range: the range it answers for, and the dirty set's values in
     * it as of the snapshot (sorted), which win over LevelDB's */
    bool ranged;
    struct store_key lo, hi;
    struct store_ovl *ovl;
    size_t novl;
};

/* The LevelDB snapshot of 'sn' and its read options; the caller holds the boundary. */
static void snapshot_open(store_snapshot *sn, store *s)
{
    sn->s = s;
    sn->snap = leveldb_create_snapshot(s->db);
    atomic_fetch_add(&s->snapshots, 1);
}

static store_snapshot *snapshot_ready(store_snapshot *sn)
{
    sn->ropts = leveldb_readoptions_create();
    leveldb_readoptions_set_snapshot(sn->ropts, sn->snap);
    leveldb_readoptions_set_verify_checksums(sn->ropts, 1);
    leveldb_readoptions_set_fill_cache(sn->ropts, 0);
    return sn;
}

store_snapshot *store_snapshot_new(store *s)
{
    store_snapshot *sn = calloc(1, sizeof(*sn));
    if (!sn || hold_boundary(s) != EDDY_OK) {
        free(sn);
        return NULL;
    }
    snapshot_open(sn, s);
    release_boundary(s);
    return snapshot_ready(sn);
}

store_snapshot *store_snapshot_new_range(store *s, const struct store_key *start,
                                         const struct store_key *end)
{
    store_snapshot *sn = calloc(1, sizeof(*sn));
    if (!sn)
        return NULL;
    sn->ranged = true;
    sn->lo = *start;
    sn->hi = *end;
    /* at a group boundary (no txn write publishes), the dirty values first, then LevelDB:
     * a value a concurrent flush writes and drops meanwhile is in the copy or in the
     * snapshot's view, never in neither */
    pthread_mutex_lock(&s->dirty.pub_mu);
    eddy_err err = store_dirty_range(&s->dirty, start, end, &sn->ovl, &sn->novl);
    if (err == EDDY_OK)
        snapshot_open(sn, s);
    pthread_mutex_unlock(&s->dirty.pub_mu);
    if (err != EDDY_OK) {
        free(sn);
        return NULL;
    }
    return snapshot_ready(sn);
}

void store_snapshot_free(store_snapshot *sn)
{
    if (!sn)
        return;
    if (sn->ropts)
        leveldb_readoptions_destroy(sn->ropts);
    if (sn->snap) {
        leveldb_release_snapshot(sn->s->db, sn->snap);
        atomic_fetch_sub(&sn->s->snapshots, 1);
    }
    free(sn->ovl);
    free(sn);
}

/* Whether [start, end) lies in the range of a ranged snapshot (an empty 'end': unbounded). */
static bool snapshot_covers(const store_snapshot *sn, const struct store_key *start,
                            const struct store_key *end)
{
    if (!sn->ranged)
        return true;
    if (key_cmp_raw(start->buf, start->len, sn->lo.buf, sn->lo.len) < 0)
        return false;
    if (sn->hi.len == 0)
        return true;
    return end->len > 0 && key_cmp_raw(end->buf, end->len, sn->hi.buf, sn->hi.len) <= 0;
}

eddy_err store_snapshot_get_msg(store_snapshot *sn, const struct store_key *key,
                                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg)
{
    *msg = NULL;
    if (sn->ranged) {
        if (key_cmp_raw(key->buf, key->len, sn->lo.buf, sn->lo.len) < 0 ||
            (sn->hi.len > 0 && !key_before_end((const char *)key->buf, key->len, &sn->hi)))
            return EDDY_ERR_INVALID;
        const struct store_ovl *o = ovl_find(sn->ovl, sn->novl, key->buf, key->len);
        if (o)
            return o->del ? EDDY_OK : store_decode(desc, o->val, o->vlen, msg);
    }
    char *lerr = NULL;
    size_t vlen = 0;
    char *val = leveldb_get(sn->s->db, sn->ropts, (const char *)key->buf, key->len, &vlen, &lerr);
    eddy_err e = store_take_err(lerr, NULL, 0);
    if (e == EDDY_OK && val)
        e = store_decode(desc, val, vlen, msg);
    leveldb_free(val);
    return e;
}

eddy_err store_snapshot_scan(store_snapshot *sn, const struct store_key *start,
                             const struct store_key *end, store_scan_fn *fn, void *ud)
{
    if (!snapshot_covers(sn, start, end))
        return EDDY_ERR_INVALID;
    if (sn->novl == 0)
        return scan_with(sn->s->db, sn->ropts, NULL, start, end, fn, ud);
    size_t a = ovl_lower_bound(sn->ovl, sn->novl, start->buf, start->len);
    size_t b = end->len ? ovl_lower_bound(sn->ovl, sn->novl, end->buf, end->len) : sn->novl;
    leveldb_iterator_t *it = leveldb_create_iterator(sn->s->db, sn->ropts);
    if (!it)
        return EDDY_ERR_NOMEM;
    eddy_err err = store_merge_scan(it, start, end, sn->ovl + a, b - a, fn, ud, NULL);
    leveldb_iter_destroy(it);
    return err;
}

/* ---- replacing a key range ------------------------------------------------------------ */

struct store_batch {
    leveldb_writebatch_t *wb;
    size_t n;
    struct store_key lo, hi; /* smallest and largest key put (valid when n > 0) */
};

store_batch *store_batch_new(void)
{
    store_batch *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->wb = leveldb_writebatch_create();
    return b;
}

void store_batch_free(store_batch *b)
{
    if (!b)
        return;
    if (b->wb)
        leveldb_writebatch_destroy(b->wb);
    free(b);
}

eddy_err store_batch_put(store_batch *b, const void *key, size_t klen, const void *val,
                         size_t vlen)
{
    if (klen == 0 || klen > STORE_KEY_MAX)
        return EDDY_ERR_INVALID;
    leveldb_writebatch_put(b->wb, key, klen, val, vlen);
    if (b->n == 0 || key_cmp_raw(key, klen, b->lo.buf, b->lo.len) < 0) {
        memcpy(b->lo.buf, key, klen);
        b->lo.len = klen;
    }
    if (b->n == 0 || key_cmp_raw(key, klen, b->hi.buf, b->hi.len) > 0) {
        memcpy(b->hi.buf, key, klen);
        b->hi.len = klen;
    }
    b->n++;
    return EDDY_OK;
}

size_t store_batch_count(const store_batch *b)
{
    return b->n;
}

bool store_batch_first(const store_batch *b, struct store_key *out)
{
    if (b->n == 0)
        return false;
    *out = b->lo;
    return true;
}

eddy_err store_range_loader_init(struct store_range_loader *l, size_t max_bytes,
                                 store_range_write_fn *write, void *ud)
{
    *l = (struct store_range_loader){.max_bytes = max_bytes, .write = write, .ud = ud};
    l->b = store_batch_new();
    return l->b ? EDDY_OK : EDDY_ERR_NOMEM;
}

/* Hand the batch to 'write' as [its first key, end) and start a new one. */
static eddy_err range_loader_flush(struct store_range_loader *l, const struct store_key *end)
{
    struct store_key first;
    if (!l->b)
        return EDDY_ERR_NOMEM; /* the last new batch failed */
    if (!store_batch_first(l->b, &first))
        return EDDY_OK;
    eddy_err err = l->write(l->ud, &first, end, l->b);
    l->b = store_batch_new();
    l->bytes = 0;
    return err != EDDY_OK ? err : l->b ? EDDY_OK : EDDY_ERR_NOMEM;
}

eddy_err store_range_loader_put(struct store_range_loader *l, const void *key, size_t klen,
                                const void *val, size_t vlen)
{
    if (klen == 0 || klen > STORE_KEY_MAX)
        return EDDY_ERR_INVALID;
    eddy_err err = EDDY_OK;
    if (l->bytes >= l->max_bytes) { /* this key ends the batch's range */
        struct store_key end;
        memcpy(end.buf, key, klen);
        end.len = klen;
        err = range_loader_flush(l, &end);
    }
    if (err == EDDY_OK)
        err = store_batch_put(l->b, key, klen, val, vlen);
    l->bytes += klen + vlen;
    return err;
}

eddy_err store_range_loader_finish(struct store_range_loader *l, const struct store_key *end)
{
    return range_loader_flush(l, end);
}

void store_range_loader_release(struct store_range_loader *l)
{
    store_batch_free(l->b);
    l->b = NULL;
}

static eddy_err replace_range(store *s, const struct store_key *start,
                              const struct store_key *end, const store_batch *b,
                              uint64_t *deleted, const leveldb_writeoptions_t *wo);

eddy_err store_replace_range(store *s, const struct store_key *start, const struct store_key *end,
                             const store_batch *b, uint64_t *deleted)
{
    return replace_range(s, start, end, b, deleted, s->wsync);
}

eddy_err store_replace_range_nosync(store *s, const struct store_key *start,
                                    const struct store_key *end, const store_batch *b,
                                    uint64_t *deleted)
{
    return replace_range(s, start, end, b, deleted, s->wnosync);
}

static eddy_err replace_range(store *s, const struct store_key *start,
                              const struct store_key *end, const store_batch *b,
                              uint64_t *deleted, const leveldb_writeoptions_t *wo)
{
    if (deleted)
        *deleted = 0;
    if (b->n > 0 && (key_cmp_raw(b->lo.buf, b->lo.len, start->buf, start->len) < 0 ||
                     !key_before_end((const char *)b->hi.buf, b->hi.len, end))) {
        log_error("msg=\"replace range: a put lies outside the range\"");
        return EDDY_ERR_INVALID;
    }
    /* Nothing of the range may stay behind in the dirty set, to hide the new values. */
    eddy_err err = hold_boundary(s);
    if (err != EDDY_OK)
        return err;
    /* Deletes first, puts after: within one batch the later operation on a key wins. */
    leveldb_writebatch_t *wb = leveldb_writebatch_create();
    leveldb_iterator_t *it = leveldb_create_iterator(s->db, s->ropts);
    uint64_t n = 0;
    leveldb_iter_seek(it, (const char *)start->buf, start->len);
    for (; leveldb_iter_valid(it); leveldb_iter_next(it)) {
        size_t klen;
        const char *k = leveldb_iter_key(it, &klen);
        if (!key_before_end(k, klen, end))
            break;
        leveldb_writebatch_delete(wb, k, klen);
        n++;
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    err = store_take_err(lerr, NULL, 0);
    if (err == EDDY_OK) {
        /* nothing to delete (a move's copy into its emptied range): the puts as they
         * are, without copying them into the deletes' batch */
        if (n > 0)
            leveldb_writebatch_append(wb, b->wb);
        leveldb_write(s->db, wo, n > 0 ? wb : b->wb, &lerr);
        err = store_take_write_err(s, lerr);
    }
    leveldb_writebatch_destroy(wb);
    release_boundary(s);
    store_changed(s, start, end); /* even after an error: it may have reached the log */
    if (err == EDDY_OK && deleted)
        *deleted = n;
    return err;
}

/* Whether 'name' is one of LevelDB's write-ahead logs: digits, then ".log". */
static bool is_wal_name(const char *name)
{
    size_t n = strlen(name), d = 0;
    while (d < n && name[d] >= '0' && name[d] <= '9')
        d++;
    return d > 0 && strcmp(name + d, ".log") == 0;
}

/* Why two manual compactions and delete markers (LevelDB 1.23, db_impl.cc).
 * DBImpl::CompactRange finds the deepest level with a file in the range, THEN writes the
 * memtable to a table, then compacts each level above that deepest one into the next.
 * Two things leave old versions behind. A memtable's table holds every version and every
 * tombstone it was given (only compactions drop them), and PickLevelForMemTableOutput may
 * place it on level 1 or 2, where the loop does not look when the level was not counted
 * yet (a range that was all in the memtable). And the deepest level is never rewritten
 * for itself: only the files of the level above that overlap its files pull them in, so
 * a memtable's table that became the deepest file of the range stays as it was.
 * So the first pass puts everything of the range into tables, and the second one gets a
 * table that spans the whole range above every file of it: deletes of 'start' and 'end'
 * (never keys themselves) go through the memtable into a table that
 * PickLevelForMemTableOutput places above every level it overlaps (the rule it places
 * by), so compacting it down pulls in every file of the range, level after level, to the
 * deepest. A snapshot taken before the markers keeps them in every output on the way
 * (their sequence is newer than its), so each output still spans the range; the range's
 * own old versions and tombstones are older than the snapshot and are dropped (the
 * tombstones on reaching the deepest level). The first pass writes the markers too: its
 * memtable's table then starts and ends with them, not with a deleted key that the
 * MANIFEST and LevelDB's LOG ("will stop at") would record. The markers stay on disk:
 * short keys with no data, dropped by LevelDB's own compactions later. */
static const char past_every_key[] = "\xff\xff\xff"; /* table 0xff: no key starts so */

/* Delete the keys 'start' and 'mark' (not keys of the store), then compact [start, lim]. */
static eddy_err mark_and_compact(store *s, const struct store_key *start, const char *mark,
                                 size_t mlen, const char *lim, size_t llen)
{
    leveldb_writebatch_t *wb = leveldb_writebatch_create();
    leveldb_writebatch_delete(wb, (const char *)start->buf, start->len);
    leveldb_writebatch_delete(wb, mark, mlen);
    char *lerr = NULL;
    leveldb_write(s->db, s->wnosync, wb, &lerr);
    leveldb_writebatch_destroy(wb);
    eddy_err err = store_take_write_err(s, lerr);
    if (err == EDDY_OK)
        leveldb_compact_range(s->db, (const char *)start->buf, start->len, lim, llen);
    return err;
}

eddy_err store_compact_range(store *s, const struct store_key *start,
                             const struct store_key *end, int *snapshots)
{
    if (snapshots)
        *snapshots = 0;
    if (start->len >= 3 || end->len >= 3)
        return EDDY_ERR_INVALID; /* a key could be its own marker delete */
    eddy_err err = store_flush(s); /* deletes still behind would leave old values on disk */
    if (err != EDDY_OK)
        return err;
    /* a snapshot opened from here on sees the range's deletes and keeps nothing they hide */
    if (snapshots)
        *snapshots = atomic_load(&s->snapshots);
    /* an empty end: no upper bound (the last partition's) */
    const char *lim = end->len ? (const char *)end->buf : NULL;
    const char *mark = end->len ? (const char *)end->buf : past_every_key;
    size_t mlen = end->len ? end->len : sizeof(past_every_key) - 1;
    const leveldb_snapshot_t *snap = leveldb_create_snapshot(s->db);
    err = mark_and_compact(s, start, mark, mlen, lim, end->len);
    if (err == EDDY_OK)
        err = mark_and_compact(s, start, mark, mlen, lim, end->len);
    leveldb_release_snapshot(s->db, snap);
    return err;
}

eddy_err store_sync_log(store *s)
{
    DIR *d = opendir(s->path);
    if (!d) {
        log_error("msg=\"cannot list the database\" path=%s error=\"%s\"", s->path,
                  strerror(errno));
        return EDDY_ERR_IO;
    }
    eddy_err err = EDDY_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[4096];
        if (!is_wal_name(de->d_name) ||
            snprintf(path, sizeof(path), "%s/%s", s->path, de->d_name) >= (int)sizeof(path))
            continue;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT)
            continue; /* compacted and deleted meanwhile: durable in a table */
        if (fd < 0 || fsync(fd) != 0) {
            char why[128];
            snprintf(why, sizeof(why), "cannot sync the log %.32s: %s", de->d_name,
                     strerror(errno));
            log_error("msg=\"cannot sync a write-ahead log\" path=%s error=\"%s\"", path,
                      strerror(errno));
            if (s->write_failed)
                s->write_failed(s->write_failed_ud, why);
            err = EDDY_ERR_IO;
        }
        if (fd >= 0)
            close(fd);
    }
    closedir(d);
    return err;
}

