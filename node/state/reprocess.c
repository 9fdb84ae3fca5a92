/* Reprocessing: replay a partition's retained log into a side store and swap the rebuilt
 * tables in (see reprocess.h for the design). */
#include "node/state/reprocess.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/bytes.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "node/state/apply.h"
#include "node/state/checkpoint.h"
#include "node/state/logrec.h"
#include "node/state/product.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

const char *const reprocess_param_names[RP_PARAMS] = {"affinity-half-life",
                                                      "popularity-half-life",
                                                      "neighbour-half-life"};

#define HALF_LIFE_MAX (3650 * 86400000LL) /* ten years: bucket widths stay far from overflow */
#define COMMIT_EVERY 4096                 /* side-store records per (unsynced) commit */
#define CATCHUP_ROUNDS 4                  /* snapshot catch-ups before the exclusive one... */
#define CATCHUP_SMALL 2000                /* ...unless fewer records than this were new */

/* Tables whose rebuilt rows replace the live ones (see reprocess.h). */
static bool rebuilt_table(unsigned t, bool stage2)
{
    switch (t) {
    case T_USER: case T_USER_WIN: case T_PART_WIN: case T_BOUGHT: case T_META: case T_SEEN:
    case T_IMPR: case T_EXP_STAT:
        return true;
    default:
        return stage2 && store_table_stage2(t);
    }
}

/* Tables whose rows belong to one user: a row rebuilt for a user who is gone live was
 * deleted meanwhile. */
static bool user_table(unsigned t)
{
    return t == T_USER || t == T_USER_WIN || t == T_BOUGHT || t == T_SEEN || t == T_IMPR;
}

/* ---- parameters ------------------------------------------------------------------------ */

eddy_err reprocess_set_param(struct reprocess_request *rq, const char *name, const char *value,
                             char *err, size_t errlen)
{
    int64_t ms = 0;
    int which = -1;
    for (int i = 0; i < RP_PARAMS; i++)
        if (strcmp(name, reprocess_param_names[i]) == 0)
            which = i;
    if (which < 0 && strcmp(name, "half-life") != 0) {
        snprintf(err, errlen,
                 "unknown parameter \"%s\" (half-life, affinity-half-life, popularity-half-life, "
                 "neighbour-half-life)",
                 name);
        return EDDY_ERR_INVALID;
    }
    if (config_parse_value(FLAG_DURATION, value, &ms) != 0 || ms <= 0 || ms > HALF_LIFE_MAX) {
        snprintf(err, errlen,
                 "%s: bad duration \"%s\" (e.g. 30d, 12h, 90m, 45s, 500ms; > 0, at most 3650d)",
                 name, value);
        return EDDY_ERR_INVALID;
    }
    for (int i = 0; i < RP_PARAMS; i++)
        if (which < 0 || which == i)
            rq->set[i] = ms;
    return EDDY_OK;
}

/* The engine's half-lives. Only reprocess (on the writer thread, serialised by its caller)
 * changes them, so this thread reads values nobody writes concurrently. */
static void current_params(engine *e, int64_t out[RP_PARAMS])
{
    const struct engine_opts *o = engine_options(e);
    out[RP_AFFINITY] = o->apply.model.affinity.half_life_ms;
    out[RP_POPULARITY] = o->product.popularity.half_life_ms;
    out[RP_NEIGHBOURS] = o->product.neighbours.half_life_ms;
}

/* Publish new half-lives. DESIGN: the engine owns one copy of its options, read by the
 * writer (apply) and by query threads (profiles, popularity and neighbour scores); there is
 * no other copy to keep in step. Runs on the writer thread (inside the exclusive job), so
 * the apply sees them from its next record on; each value is one aligned 64-bit atomic
 * store, so a concurrent query reads the old or the new half-life, never a torn one. */
void reprocess_publish_params(engine *e, const int64_t set[RP_PARAMS])
{
    struct engine_opts *o = (struct engine_opts *)engine_options(e); /* the engine's own copy */
    int64_t *const dst[RP_PARAMS] = {&o->apply.model.affinity.half_life_ms,
                                     &o->product.popularity.half_life_ms,
                                     &o->product.neighbours.half_life_ms};
    for (int i = 0; i < RP_PARAMS; i++)
        if (set[i] > 0)
            __atomic_store_n(dst[i], set[i], __ATOMIC_RELEASE);
}

/* ---- checks ------------------------------------------------------------------------------ */

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

/* The checkpoint file 'id' names for partition 'p' ("latest", a file name or a seq):
 * 'path' and its file name 'name'. EDDY_ERR_NOT_FOUND if there is none ("latest": no
 * valid one), EDDY_ERR_INVALID (with a message) if 'id' is another partition's. */
static eddy_err resolve_checkpoint(const struct ckptkey *key, const char *dir, uint32_t p, const char *id, char *path,
                                   size_t pathlen, char *name, size_t namelen, char *err,
                                   size_t errlen)
{
    eddy_err r;
    if (strcmp(id, "latest") == 0) {
        struct checkpoint_info info;
        if ((r = checkpoint_latest_valid(key, dir, p, &info)) != EDDY_OK)
            return r;
        snprintf(path, pathlen, "%s", info.path);
    } else if (all_digits(id)) {
        char *end = NULL;
        unsigned long long seq = strtoull(id, &end, 10);
        if ((r = checkpoint_path(path, pathlen, dir, p, seq)) != EDDY_OK)
            return r;
    } else {
        char prefix[16];
        snprintf(prefix, sizeof(prefix), "p%05u-", p);
        if (strchr(id, '/') || strncmp(id, prefix, strlen(prefix)) != 0) {
            snprintf(err, errlen,
                     "checkpoint \"%s\" is not a checkpoint of partition %u (want \"latest\", "
                     "a seq or a file name %s...)",
                     id, p, prefix);
            return EDDY_ERR_INVALID;
        }
        if (snprintf(path, pathlen, "%s/%s", dir, id) >= (int)pathlen)
            return EDDY_ERR_TOO_LARGE;
    }
    if (access(path, R_OK) != 0)
        return EDDY_ERR_NOT_FOUND;
    const char *slash = strrchr(path, '/');
    snprintf(name, namelen, "%s", slash ? slash + 1 : path);
    return EDDY_OK;
}

static bool has_dir(const struct reprocess_opts *o)
{
    return o->checkpoint_dir && o->checkpoint_dir[0];
}

bool reprocess_rebuilds_stage2(const struct reprocess_request *rq)
{
    return rq->all && !rq->checkpoint[0];
}

eddy_err reprocess_check_request(const struct reprocess_request *rq, uint32_t partitions,
                                 char *err, size_t errlen)
{
    bool any_set = rq->set[RP_AFFINITY] || rq->set[RP_POPULARITY] || rq->set[RP_NEIGHBOURS];
    if (!rq->all && rq->partition >= partitions) {
        snprintf(err, errlen, "partition %u is out of range (0 .. %u)", rq->partition,
                 partitions - 1);
        return EDDY_ERR_INVALID;
    }
    if (any_set && !rq->all) {
        snprintf(err, errlen, "--set changes a node-wide parameter: it needs --all (every "
                              "partition rebuilt with it)");
        return EDDY_ERR_INVALID;
    }
    if (rq->checkpoint[0] && any_set) {
        snprintf(err, errlen, "--from-checkpoint cannot be combined with --set: the "
                              "checkpoint's state was built with the old parameters; use "
                              "--from-start");
        return EDDY_ERR_INVALID;
    }
    if (rq->checkpoint[0] && rq->all && strcmp(rq->checkpoint, "latest") != 0) {
        snprintf(err, errlen, "with --all, --from-checkpoint takes \"latest\" (a checkpoint "
                              "id names one partition's file; use --partition)");
        return EDDY_ERR_INVALID;
    }
    return EDDY_OK;
}

eddy_err reprocess_check(const struct reprocess_opts *o, const struct reprocess_request *rq,
                         char *err, size_t errlen)
{
    eddy_err r = reprocess_check_request(rq, engine_options(o->eng)->apply.partitions, err,
                                         errlen);
    if (r != EDDY_OK)
        return r;
    if (o->owns && !o->deliver && (rq->set[RP_POPULARITY] || rq->set[RP_NEIGHBOURS])) {
        snprintf(err, errlen, "popularity-half-life and neighbour-half-life shape stage-2 "
                              "(product) state, which a cluster rebuilds only as a whole: "
                              "ask an ingest node (eddy reprocess --all --from-start)");
        return EDDY_ERR_INVALID;
    }
    if (rq->checkpoint[0] && !has_dir(o)) {
        snprintf(err, errlen, "this node has no checkpoint directory");
        return EDDY_ERR_INVALID;
    }
    if (!rq->all && o->owns && !o->owns(o->owns_ud, rq->partition)) {
        snprintf(err, errlen, "partition %u is not owned by this node", rq->partition);
        return EDDY_ERR_NOT_OWNER;
    }
    if (rq->checkpoint[0] && !rq->all) {
        char path[CHECKPOINT_PATH_MAX], name[REPROCESS_ID_MAX];
        r = resolve_checkpoint(engine_options(o->eng)->checkpoint_key, o->checkpoint_dir,
                               rq->partition, rq->checkpoint, path,
                               sizeof(path), name, sizeof(name), err, errlen);
        if (r == EDDY_ERR_NOT_FOUND || r == EDDY_ERR_TOO_LARGE)
            snprintf(err, errlen, "unknown checkpoint \"%s\" of partition %u in %s",
                     rq->checkpoint, rq->partition, o->checkpoint_dir);
        else if (r == EDDY_ERR_KEY)
            snprintf(err, errlen,
                     "checkpoint \"%s\" of partition %u: %s (the node's log names both keys)",
                     rq->checkpoint, rq->partition, eddy_strerror(r));
        if (r != EDDY_OK)
            return EDDY_ERR_INVALID;
    }
    return EDDY_OK;
}

/* ---- the rebuild ------------------------------------------------------------------------- */

struct part_state {
    uint32_t p;
    struct part_meta m;   /* the side state's metadata */
    struct reprocess_part out;
    bool any;             /* replayed at least one record */
    bool swapped;
};

struct rebuild {
    const struct reprocess_opts *o;
    store *live;
    store *side;
    store_txn *txn;               /* the side store's */
    struct apply_params ap;       /* with the new half-life, no log sweep (the log stays live) */
    struct product_params pp;
    bool stage2;                  /* product tables rebuilt and swapped here (--dev) */
    bool collect;                 /* stage-2 records kept for opts.deliver (cluster) */
    struct part_state *ps;
    size_t n;
    uint64_t pending;             /* records since the last side commit */
    uint64_t round_records;
    int64_t set[RP_PARAMS];
    int64_t pause_ms;
    char *err;
    size_t errlen;
    pthread_mutex_t mu;           /* run_swap waiting for the writer */
    pthread_cond_t cv;
    bool swap_finished;
    eddy_err swap_err;
};

/* Stage-2 records of the replay go to the side store's product partitions (--dev). */
static eddy_err emit_side(void *ud, const Eddy__Store__V1__Stage2Batch *b)
{
    struct rebuild *rb = ud;
    return product_apply(rb->txn, &rb->pp, b, NULL, NULL);
}

/* Stage-2 records of the replay wait in the side store's OUTBOX for opts.deliver. */
static eddy_err emit_collect(void *ud, const Eddy__Store__V1__Stage2Batch *b)
{
    struct rebuild *rb = ud;
    struct store_key k;
    key_init(&k, b->source_partition, T_OUTBOX);
    key_u64(&k, b->source_seq);
    return store_txn_put_msg(rb->txn, &k, &b->base);
}

struct replay_scan {
    struct rebuild *rb;
    struct part_state *st;
    eddy_err err;
};

/* One log record (key p T seq) into the side state. */
static int replay_one(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct replay_scan *rs = ud;
    struct rebuild *rb = rs->rb;
    struct part_state *st = rs->st;
    size_t off = 3;
    uint64_t seq;
    if (!key_get_u64(k, klen, &off, &seq)) {
        rs->err = EDDY_ERR_CORRUPT;
        return 1;
    }
    Eddy__Store__V1__LogRecord *r = logrec_unpack((const uint8_t *)v, vlen);
    if (!r) {
        log_error("msg=\"reprocess: log record does not decode\" partition=%u seq=%" PRIu64,
                  st->p, seq);
        rs->err = EDDY_ERR_CORRUPT;
        return 1;
    }
    enum apply_outcome oc;
    apply_emit_fn *emit = rb->stage2 ? emit_side : rb->collect ? emit_collect : NULL;
    rs->err = apply_replay(rb->txn, &rb->ap, st->p, &st->m, seq, r, emit, rb, &oc);
    eddy__store__v1__log_record__free_unpacked(r, NULL);
    if (!st->any) {
        st->any = true;
        st->out.first_seq = seq;
    }
    st->out.records++;
    rb->round_records++;
    if (rs->err == EDDY_OK && ++rb->pending >= COMMIT_EVERY) {
        rs->err = store_txn_commit(rb->txn, false);
        rb->pending = 0;
    }
    if (rs->err == EDDY_OK && rb->o->cancel && atomic_load(rb->o->cancel))
        rs->err = EDDY_ERR_UNAVAILABLE;
    return rs->err != EDDY_OK;
}

/* Replay partition st->p's log from st->m.next_seq on, from 'snap' (NULL: the committed
 * live store, only on the writer thread). */
static eddy_err replay_from(struct rebuild *rb, struct part_state *st, store_snapshot *snap)
{
    struct store_key start, end;
    struct replay_scan rs = {rb, st, EDDY_OK};
    key_init(&start, st->p, T_LOG);
    key_prefix_end(&start, &end);
    key_u64(&start, st->m.next_seq);
    eddy_err err = snap ? store_snapshot_scan(snap, &start, &end, replay_one, &rs)
                        : store_scan(rb->live, &start, &end, replay_one, &rs);
    return err != EDDY_OK ? err : rs.err;
}

/* Where partition st's rebuild starts: a checkpoint loaded into the side store, or nothing.
 * 'snap' tells whether retention had truncated the log. */
static eddy_err start_partition(struct rebuild *rb, const char *ckpt, struct part_state *st,
                                store_snapshot *snap)
{
    eddy_err err;
    char path[CHECKPOINT_PATH_MAX];
    const struct ckptkey *key = engine_options(rb->o->eng)->checkpoint_key;
    if (ckpt[0]) {
        err = resolve_checkpoint(key, rb->o->checkpoint_dir, st->p, ckpt, path, sizeof(path),
                                 st->out.checkpoint, sizeof(st->out.checkpoint), rb->err,
                                 rb->errlen);
        if (err == EDDY_ERR_NOT_FOUND && strcmp(ckpt, "latest") == 0) {
            st->out.checkpoint[0] = '\0'; /* none (yet) of this partition: from the start */
        } else if (err != EDDY_OK) {
            snprintf(rb->err, rb->errlen, "checkpoint \"%s\" of partition %u: %s", ckpt, st->p,
                     eddy_strerror(err));
            return err;
        } else if ((err = checkpoint_load(key, rb->side, st->p, path, NULL)) != EDDY_OK) {
            snprintf(rb->err, rb->errlen, "checkpoint %s does not load: %s", path,
                     eddy_strerror(err));
            return err;
        }
    }
    if ((err = apply_meta_load(rb->side, st->p, &st->m)) != EDDY_OK)
        return err;
    st->out.first_seq = st->m.next_seq;
    if (!st->out.checkpoint[0]) {
        Eddy__Store__V1__PartitionMeta *pm = NULL;
        struct store_key k;
        key_init(&k, st->p, T_META);
        err = store_snapshot_get_msg(snap, &k, &eddy__store__v1__partition_meta__descriptor,
                                     (ProtobufCMessage **)&pm);
        if (pm)
            st->out.truncated = pm->log_first_seq > 0;
        protobuf_c_message_free_unpacked(pm ? &pm->base : NULL, NULL);
    }
    return err;
}

/* ---- the swap (writer thread) ------------------------------------------------------------ */

/* The keys of the live user tables of a partition, in key order, packed one after the
 * other in 'bytes' (a partition can hold millions of window rows). */
struct keyset {
    unsigned char *bytes;
    size_t len, cap;
    size_t *off;          /* [n + 1]: key i is bytes[off[i] .. off[i + 1]) */
    size_t n, ncap;
};

static eddy_err keyset_add(struct keyset *s, const unsigned char *k, size_t klen)
{
    if (s->n + 2 > s->ncap) {
        size_t ncap = s->ncap ? 2 * s->ncap : 256;
        size_t *no = realloc(s->off, ncap * sizeof(*no));
        if (!no)
            return EDDY_ERR_NOMEM;
        s->off = no;
        s->ncap = ncap;
    }
    if (s->len + klen > s->cap) {
        size_t ncap = s->cap ? 2 * s->cap : 16384;
        while (ncap < s->len + klen)
            ncap *= 2;
        unsigned char *nb = realloc(s->bytes, ncap);
        if (!nb)
            return EDDY_ERR_NOMEM;
        s->bytes = nb;
        s->cap = ncap;
    }
    memcpy(s->bytes + s->len, k, klen);
    s->off[s->n] = s->len;
    s->len += klen;
    s->off[++s->n] = s->len;
    return EDDY_OK;
}

static void keyset_release(struct keyset *s)
{
    free(s->bytes);
    free(s->off);
}

static bool keyset_has(const struct keyset *s, const unsigned char *k, size_t klen)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = bytes_cmp(s->bytes + s->off[mid], s->off[mid + 1] - s->off[mid], k, klen);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* The user a row of USER, USER_WIN, BOUGHT, SEEN or USER_LOG belongs to (store.h layouts):
 * USER p T user_id; the others p T len:u16 user_id ... */
static bool row_user(const unsigned char *k, size_t klen, const unsigned char **u, size_t *ulen)
{
    if (klen < 3)
        return false;
    if (k[2] == T_USER) {
        *u = k + 3;
        *ulen = klen - 3;
        return true;
    }
    if (klen < 5)
        return false;
    size_t n = (size_t)k[3] << 8 | k[4];
    if (5 + n > klen)
        return false;
    *u = k + 5;
    *ulen = n;
    return true;
}

/* Linear search: the users deleted during a rebuild are few. */
static bool keyset_has_linear(const struct keyset *s, const unsigned char *k, size_t klen)
{
    for (size_t i = 0; i < s->n; i++)
        if (bytes_cmp(s->bytes + s->off[i], s->off[i + 1] - s->off[i], k, klen) == 0)
            return true;
    return false;
}

/* The scans of one partition's swap (store_scan callbacks share it). */
struct swap_scan {
    struct rebuild *rb;
    store_txn *txn;        /* the live store's: the swap's write batch */
    struct keyset live;    /* live keys of the table being compared */
    struct keyset gone;    /* users deleted while (or after) their log was replayed */
    uint64_t first_seq;    /* the live log's first seq: older USER_LOG rows were swept */
    bool putting;          /* swap_row: rebuilt rows (else live rows to delete) */
    uint64_t rows;         /* rebuilt rows written */
    eddy_err err;
};

static int collect_live(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct swap_scan *sw = ud;
    sw->err = keyset_add(&sw->live, k, klen);
    return sw->err != EDDY_OK;
}

/* A rebuilt USER or USER_LOG row without its live counterpart: DeleteUser removed the user
 * (or its log entries) after they were replayed. Its user goes to 'gone'. */
static int find_gone(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct swap_scan *sw = ud;
    const unsigned char *u;
    size_t ulen, off = klen >= 8 ? klen - 8 : 0;
    uint64_t seq = 0;
    if (k[2] == T_USER_LOG && (!key_get_u64(k, klen, &off, &seq) || seq < sw->first_seq))
        return 0; /* swept by retention live, not deleted */
    if (keyset_has(&sw->live, k, klen) || !row_user(k, klen, &u, &ulen) ||
        keyset_has_linear(&sw->gone, u, ulen))
        return 0;
    sw->err = keyset_add(&sw->gone, u, ulen);
    return sw->err != EDDY_OK;
}

static bool is_gone(const struct swap_scan *sw, const unsigned char *k, size_t klen)
{
    const unsigned char *u;
    size_t ulen;
    return sw->gone.n > 0 && user_table(k[2]) && row_user(k, klen, &u, &ulen) &&
           keyset_has_linear(&sw->gone, u, ulen);
}

/* One row of a rebuilt table: a live one is deleted, a rebuilt one put ('putting'); the
 * rows of users in 'gone' are left as they are live (what DeleteUser left: nothing, or
 * what they did afterwards). */
static int swap_row(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct swap_scan *sw = ud;
    struct store_key key;
    if (is_gone(sw, k, klen))
        return 0;
    key.len = klen;
    memcpy(key.buf, k, klen);
    sw->err = sw->putting ? store_txn_put(sw->txn, &key, v, vlen) : store_txn_del(sw->txn, &key);
    sw->rows += sw->putting;
    return sw->err != EDDY_OK;
}

/* Scan table 't' of partition 'p' in 's' with 'fn'. */
static eddy_err scan_table(store *s, uint32_t p, unsigned t, store_scan_fn *fn,
                           struct swap_scan *sw)
{
    struct store_key start, end;
    key_init(&start, p, (enum store_table)t);
    key_prefix_end(&start, &end);
    eddy_err err = store_scan(s, &start, &end, fn, sw);
    return err != EDDY_OK ? err : sw->err;
}

/* Which users were deleted live after their rows were rebuilt: rebuilt USER_LOG rows (of
 * records the live log still had to keep) and USER rows that are not live any more. */
static eddy_err find_deleted(struct rebuild *rb, uint32_t p, struct swap_scan *sw)
{
    static const unsigned tables[] = {T_USER_LOG, T_USER};
    eddy_err err = EDDY_OK;
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]) && err == EDDY_OK; i++) {
        sw->live.n = sw->live.len = 0;
        err = scan_table(rb->live, p, tables[i], collect_live, sw);
        if (err == EDDY_OK)
            err = scan_table(rb->side, p, tables[i], find_gone, sw);
    }
    return err;
}

/* Replace the rebuilt tables of partition st->p in the live store by the side store's, in
 * the writes of 'txn' (committed by the caller, at a partition boundary: each partition
 * swaps whole). The side META takes the live counters, epoch, log start and dedup sweep's
 * place first. */
static eddy_err swap_partition(struct rebuild *rb, struct part_state *st, store_txn *txn,
                               uint64_t *rows)
{
    struct part_meta live;
    eddy_err err = apply_meta_load(rb->live, st->p, &live);
    if (err != EDDY_OK)
        return err;
    st->m.events = live.events;
    st->m.late_events = live.late_events;
    st->m.duplicates = live.duplicates;
    st->m.epoch = live.epoch;
    st->m.log_first_seq = live.log_first_seq;
    st->m.dedup_next = live.dedup_next;
    st->m.dirty = st->m.next_seq > 0 || live.next_seq > 0; /* no META where there was none */
    if ((err = apply_meta_save(rb->txn, st->p, &st->m)) != EDDY_OK ||
        (err = store_txn_commit(rb->txn, false)) != EDDY_OK)
        return err;
    rb->pending = 0;

    struct swap_scan sw = {.rb = rb, .txn = txn, .first_seq = live.log_first_seq};
    err = find_deleted(rb, st->p, &sw);
    for (unsigned t = T_LOG; t <= T_COOC && err == EDDY_OK; t++) {
        if (!rebuilt_table(t, rb->stage2))
            continue;
        sw.putting = false;
        err = scan_table(rb->live, st->p, t, swap_row, &sw);
        sw.putting = true;
        if (err == EDDY_OK)
            err = scan_table(rb->side, st->p, t, swap_row, &sw);
    }
    if (err == EDDY_OK && sw.gone.n > 0)
        log_info("msg=\"reprocess: users deleted during the rebuild keep their live rows\" "
                 "partition=%u users=%zu",
                 st->p, sw.gone.n);
    keyset_release(&sw.live);
    keyset_release(&sw.gone);
    st->out.next_seq = st->m.next_seq;
    *rows += sw.rows;
    return err;
}

#define SWAP_COMMIT_ROWS 200000 /* rebuilt rows per synced write of the swap */

/* The exclusive job: the last records into the side state, then the swap of every
 * partition (whole partitions per synced write), then the new parameters. Writes wait
 * meanwhile; queries do not. */
static eddy_err swap_fn(void *ud, engine *e)
{
    struct rebuild *rb = ud;
    int64_t t0 = clock_mono_ms();
    eddy_err err = EDDY_OK;
    store_txn *txn = store_txn_new(rb->live);
    uint64_t rows = 0;
    size_t from = 0; /* first partition of the uncommitted writes */
    if (!txn)
        err = EDDY_ERR_NOMEM;
    for (size_t i = 0; i < rb->n && err == EDDY_OK; i++)
        err = replay_from(rb, &rb->ps[i], NULL);
    for (size_t i = 0; i < rb->n && err == EDDY_OK; i++) {
        struct part_state *st = &rb->ps[i];
        if (rb->o->owns && !rb->o->owns(rb->o->owns_ud, st->p))
            continue; /* moved away during the rebuild: the new owner has it */
        err = swap_partition(rb, st, txn, &rows);
        st->swapped = err == EDDY_OK; /* once committed below */
        if (err == EDDY_OK && (rows >= SWAP_COMMIT_ROWS || store_txn_pending(txn) >= SWAP_COMMIT_ROWS)) {
            err = store_txn_commit(txn, true);
            rows = 0;
            from = i + 1;
        }
    }
    if (err == EDDY_OK && txn && store_txn_pending(txn) > 0)
        err = store_txn_commit(txn, true);
    if (err != EDDY_OK) {
        for (size_t i = from; i < rb->n; i++)
            rb->ps[i].swapped = false; /* their writes were never committed */
        store_txn_reset(txn);
    }
    store_txn_free(txn);
    if (err == EDDY_OK)
        reprocess_publish_params(e, rb->set);
    rb->pause_ms = clock_mono_ms() - t0;
    return err;
}

/* The exclusive job's completion (engine_exclusive passes fn and done the same 'ud', the
 * rebuild), and reprocess_run's thread waiting for it. */
static void swap_done(void *ud, eddy_err err)
{
    struct rebuild *rb = ud;
    pthread_mutex_lock(&rb->mu);
    rb->swap_err = err;
    rb->swap_finished = true;
    pthread_cond_signal(&rb->cv);
    pthread_mutex_unlock(&rb->mu);
}

/* Run swap_fn on the writer thread and wait for it. */
static eddy_err run_swap(struct rebuild *rb)
{
    pthread_mutex_init(&rb->mu, NULL);
    clock_cond_init(&rb->cv);
    eddy_err err = engine_exclusive(rb->o->eng, swap_fn, swap_done, rb);
    pthread_mutex_lock(&rb->mu);
    while (err == EDDY_OK && !rb->swap_finished)
        pthread_cond_wait(&rb->cv, &rb->mu);
    pthread_mutex_unlock(&rb->mu);
    pthread_cond_destroy(&rb->cv);
    pthread_mutex_destroy(&rb->mu);
    return err != EDDY_OK ? err : rb->swap_err;
}

/* ---- reprocess_run ------------------------------------------------------------------------ */

/* The partitions to rebuild: one, or every partition (this node owns). */
static eddy_err pick_partitions(struct rebuild *rb, const struct reprocess_request *rq)
{
    uint32_t P = engine_options(rb->o->eng)->apply.partitions;
    rb->ps = calloc(rq->all ? P : 1, sizeof(*rb->ps));
    if (!rb->ps)
        return EDDY_ERR_NOMEM;
    for (uint32_t p = rq->all ? 0 : rq->partition; p < (rq->all ? P : rq->partition + 1); p++) {
        if (rb->o->owns && !rb->o->owns(rb->o->owns_ud, p))
            continue;
        rb->ps[rb->n].p = p;
        rb->ps[rb->n].out.partition = p;
        rb->n++;
    }
    return EDDY_OK;
}

/* Replay every partition from a fresh snapshot (round 0: from where each starts). */
static eddy_err snapshot_round(struct rebuild *rb, const struct reprocess_request *rq, int round)
{
    store_snapshot *snap = store_snapshot_new(rb->live);
    if (!snap)
        return EDDY_ERR_NOMEM;
    eddy_err err = EDDY_OK;
    rb->round_records = 0;
    for (size_t i = 0; i < rb->n && err == EDDY_OK; i++) {
        if (round == 0)
            err = start_partition(rb, rq->checkpoint, &rb->ps[i], snap);
        if (err == EDDY_OK)
            err = replay_from(rb, &rb->ps[i], snap);
    }
    if (err == EDDY_OK && rb->pending > 0) {
        err = store_txn_commit(rb->txn, false);
        rb->pending = 0;
    }
    store_snapshot_free(snap);
    return err;
}

static void fill_result(struct rebuild *rb, struct reprocess_result *out)
{
    size_t n = 0;
    for (size_t i = 0; i < rb->n; i++) {
        struct part_state *st = &rb->ps[i];
        if (!st->swapped)
            continue;
        out->parts[n++] = st->out;
        out->records += st->out.records;
        if (st->out.records > 0 && (out->first_seq == UINT64_MAX || st->out.first_seq < out->first_seq))
            out->first_seq = st->out.first_seq;
    }
    out->n = n;
    if (out->first_seq == UINT64_MAX)
        out->first_seq = 0;
    out->pause_ms = rb->pause_ms;
    out->stage2 = rb->stage2 || rb->collect;
    current_params(rb->o->eng, out->params);
}

eddy_err reprocess_run(const struct reprocess_opts *o, const struct reprocess_request *rq,
                       struct reprocess_result *out, char *err, size_t errlen)
{
    int64_t t0 = clock_mono_ms();
    memset(out, 0, sizeof(*out));
    eddy_err r = reprocess_check(o, rq, err, errlen);
    if (r != EDDY_OK)
        return r;
    const struct engine_opts *eo = engine_options(o->eng);
    struct rebuild rb = {.o = o, .live = engine_store(o->eng), .err = err, .errlen = errlen};
    memcpy(rb.set, rq->set, sizeof(rb.set));
    rb.ap = eo->apply;
    rb.ap.log_retention_ms = 0; /* the log is not rebuilt: its sweep stays the live one's */
    rb.ap.log_floor = NULL;
    rb.ap.product = NULL; /* stage 2 is rebuilt from the events, not from STAGE2 records */
    rb.pp = eo->product;
    if (rq->set[RP_AFFINITY])
        rb.ap.model.affinity.half_life_ms = rq->set[RP_AFFINITY];
    if (rq->set[RP_POPULARITY])
        rb.pp.popularity.half_life_ms = rq->set[RP_POPULARITY];
    if (rq->set[RP_NEIGHBOURS])
        rb.pp.neighbours.half_life_ms = rq->set[RP_NEIGHBOURS];
    /* Stage 2 of a product partition is fed by every user partition: only a replay of
     * every log rebuilds it, and only --dev holds every log. */
    rb.stage2 = reprocess_rebuilds_stage2(rq) && !o->owns;
    rb.collect = reprocess_rebuilds_stage2(rq) && o->owns && o->deliver;
    if (rb.collect) /* the stage-2 swap publishes these */
        rb.set[RP_POPULARITY] = rb.set[RP_NEIGHBOURS] = 0;
    err[0] = '\0';

    char lerr[256] = "";
    store_destroy(o->work_dir, NULL, 0); /* leftovers of an interrupted run */
    struct store_opts so = {o->work_dir, 8 << 20, 0};
    if ((r = store_open(&so, &rb.side, lerr, sizeof(lerr))) != EDDY_OK) {
        snprintf(err, errlen, "cannot open the side store %s: %s", o->work_dir, lerr);
        goto out;
    }
    rb.txn = store_txn_new(rb.side);
    if (!rb.txn || (r = pick_partitions(&rb, rq)) != EDDY_OK) {
        r = r != EDDY_OK ? r : EDDY_ERR_NOMEM;
        goto out;
    }
    log_info("msg=\"reprocess started\" partitions=%zu from=%s stage2=%d affinity_half_life=%" PRId64
             " popularity_half_life=%" PRId64 " neighbour_half_life=%" PRId64,
             rb.n, rq->checkpoint[0] ? rq->checkpoint : "start", rb.stage2,
             rb.ap.model.affinity.half_life_ms, rb.pp.popularity.half_life_ms,
             rb.pp.neighbours.half_life_ms);
    for (int round = 0; round <= CATCHUP_ROUNDS; round++) {
        if ((r = snapshot_round(&rb, rq, round)) != EDDY_OK)
            goto out;
        if (round > 0 && rb.round_records < CATCHUP_SMALL)
            break;
    }
    if ((r = run_swap(&rb)) != EDDY_OK)
        goto out;
    if (rb.collect && (r = o->deliver(o->deliver_ud, rb.side, err, errlen)) != EDDY_OK)
        goto out;
    out->parts = calloc(rb.n ? rb.n : 1, sizeof(*out->parts));
    if (!out->parts) {
        r = EDDY_ERR_NOMEM;
        goto out;
    }
    out->first_seq = UINT64_MAX;
    fill_result(&rb, out);
    out->duration_ms = clock_mono_ms() - t0;
    log_info("msg=\"reprocess done\" partitions=%zu records=%" PRIu64 " duration_ms=%" PRId64
             " pause_ms=%" PRId64,
             out->n, out->records, out->duration_ms, out->pause_ms);
    if (rq->set[0] || rq->set[1] || rq->set[2])
        log_warn("msg=\"reprocess changed half-lives in memory only: set the node flags "
                 "(--affinity-half-life, --popularity-half-life, --neighbour-half-life or their "
                 "EDDY_* variables) to the same values before the next restart\"");
out:
    if (r != EDDY_OK && !err[0])
        snprintf(err, errlen, "reprocess failed: %s", eddy_strerror(r));
    size_t swapped = 0;
    for (size_t i = 0; i < rb.n; i++)
        swapped += rb.ps[i].swapped;
    if (r != EDDY_OK)
        log_error("msg=\"reprocess failed\" error=\"%s\" partitions_swapped=%zu "
                  "parameters_changed=0",
                  err, swapped);
    store_txn_free(rb.txn);
    store_close(rb.side);
    store_destroy(o->work_dir, NULL, 0);
    free(rb.ps);
    return r;
}

void reprocess_result_release(struct reprocess_result *r)
{
    if (!r)
        return;
    free(r->parts);
    r->parts = NULL;
    r->n = 0;
}
