/* The deterministic apply of a user partition's log records. */
#include "node/state/apply.h"

#include <openssl/evp.h>
#include <math.h>
#include <openssl/rand.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/pbutil.h"
#include "node/state/attribution.h"
#include "node/state/counts.h"
#include "node/state/logrec.h"
#include "node/state/pbenc.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

/* ---- meta ---------------------------------------------------------------------------- */

/* PartitionMeta.format: 1, the dedup sweep walks the log; 2, stage-2 batches, DeleteUser
 * and OUTBOX deliveries are log records too; 3, co-occurrence pairs are COOC rows instead of
 * ProductState.neighbours lists; 4, the state is written behind the log (META may lag it:
 * the records after META.next_seq are replayed at open, and the duplicates and the epoch
 * are in the PART_ACK row). A format-1 partition converts as it is (its log is a valid
 * format-2 log); a format-2 one has its lists converted by the engine when loaded
 * (product_convert); a format-3 one as it is (its log ends at its META, and it has no
 * PART_ACK row); a format-4 one has its user models converted by the engine when loaded
 * (apply_convert_models: 5, the models keep no event ids, and DEDUP values are empty); a
 * format-5 one has its log and DEDUP rows converted (apply_convert_log: 6, events are
 * compact log records, logrec.h, and DEDUP rows are keyed by a hash of the event id); a
 * newer one is refused rather than misread (a binary before format 4 would not replay the
 * log's tail, one before 5 would write models of the older order into converted state,
 * one before 6 would not read the compact records nor find the hashed ids). */
#define META_FORMAT 6

uint32_t apply_meta_format(void)
{
    return META_FORMAT;
}

/* The first byte of a hashed DEDUP key: no compact string starts with it (logrec.h). */
#define DEDUP_HASHED 0x05

void apply_dedup_key(struct store_key *k, uint32_t p, const char *event_id, size_t len)
{
    uint8_t form[STORE_KEY_MAX + 16];
    bool raw = true;
    size_t n = len < STORE_KEY_MAX ? logrec_pack_str(event_id, len, form, &raw) : 0;
    key_init(k, p, T_DEDUP);
    if (n > 0 && (!raw || len < sizeof(XXH128_canonical_t))) {
        key_bytes(k, (const char *)form, n);
        return;
    }
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(event_id, len));
    form[0] = DEDUP_HASHED;
    memcpy(form + 1, c.digest, sizeof(c.digest));
    key_bytes(k, (const char *)form, 1 + sizeof(c.digest));
}

/* The PART_ACK row: what no log record rebuilds, written with the log. Its values only
 * grow, so they win over META's (which may be older: written behind). */
static eddy_err load_ack(store *s, uint32_t p, struct part_meta *m)
{
    struct store_key k;
    Eddy__Store__V1__PartitionMeta *ack = NULL;
    key_init(&k, p, T_PART_ACK);
    eddy_err err = store_get_msg(s, &k, &eddy__store__v1__partition_meta__descriptor,
                                 (ProtobufCMessage **)&ack);
    if (err != EDDY_OK || !ack)
        return err;
    if (ack->duplicates > m->duplicates)
        m->duplicates = ack->duplicates;
    if (ack->epoch > m->epoch)
        m->epoch = ack->epoch;
    m->acked_duplicates = ack->duplicates;
    m->acked_epoch = ack->epoch;
    protobuf_c_message_free_unpacked(&ack->base, NULL);
    return EDDY_OK;
}

eddy_err apply_meta_load(store *s, uint32_t p, struct part_meta *m)
{
    struct store_key k;
    Eddy__Store__V1__PartitionMeta *pm = NULL;
    memset(m, 0, sizeof(*m));
    m->max_ts = WATERMARK_NONE;
    m->watermark = WATERMARK_NONE;
    m->swept_until = WATERMARK_NONE;
    key_init(&k, p, T_META);
    eddy_err err = store_get_msg(s, &k, &eddy__store__v1__partition_meta__descriptor,
                                 (ProtobufCMessage **)&pm);
    if (err != EDDY_OK || !pm)
        return err;
    m->next_seq = pm->next_seq;
    m->max_ts = pm->max_ts;
    m->watermark = pm->watermark;
    m->late_events = pm->late_events;
    m->events = pm->events;
    m->duplicates = pm->duplicates;
    m->swept_until = pm->swept_until;
    m->log_first_seq = pm->log_first_seq;
    m->epoch = pm->epoch;
    m->dedup_next = pm->dedup_next_seq;
    m->format = pm->format;
    m->stored = true;
    if (pm->format <= META_FORMAT && (err = load_ack(s, p, m)) != EDDY_OK) {
        protobuf_c_message_free_unpacked(&pm->base, NULL);
        return err;
    }
    if (pm->format > META_FORMAT) {
        protobuf_c_message_free_unpacked(&pm->base, NULL);
        return EDDY_ERR_TOO_LARGE; /* engine_open says which layout it found */
    }
    if (pm->format < META_FORMAT)
        m->dirty = true; /* converted: saved with the next group */
    if (pm->format < 1) {
        /* the older layout's events have DEDUP_EXP rows (sweep_dedup_index): the walk
         * along the log starts after them, and the conversion is saved with the next group */
        m->dedup_next = pm->next_seq;
    }
    protobuf_c_message_free_unpacked(&pm->base, NULL);
    return EDDY_OK;
}

eddy_err apply_meta_save(store_txn *t, uint32_t p, struct part_meta *m)
{
    if (!m->dirty)
        return EDDY_OK;
    struct store_key k;
    if (m->duplicates != m->acked_duplicates || m->epoch != m->acked_epoch) {
        Eddy__Store__V1__PartitionMeta ack = EDDY__STORE__V1__PARTITION_META__INIT;
        ack.duplicates = m->duplicates;
        ack.epoch = m->epoch;
        key_init(&k, p, T_PART_ACK);
        eddy_err err = store_txn_put_msg(t, &k, &ack.base);
        if (err != EDDY_OK)
            return err;
        m->acked_duplicates = m->duplicates;
        m->acked_epoch = m->epoch;
    }
    Eddy__Store__V1__PartitionMeta pm = EDDY__STORE__V1__PARTITION_META__INIT;
    pm.next_seq = m->next_seq;
    pm.max_ts = m->max_ts;
    pm.watermark = m->watermark;
    pm.late_events = m->late_events;
    pm.events = m->events;
    pm.duplicates = m->duplicates;
    pm.swept_until = m->swept_until;
    pm.log_first_seq = m->log_first_seq;
    pm.epoch = m->epoch;
    pm.format = META_FORMAT;
    pm.dedup_next_seq = m->dedup_next;
    key_init(&k, p, T_META);
    eddy_err err = store_txn_put_msg(t, &k, &pm.base);
    if (err == EDDY_OK) {
        m->dirty = false;
        m->format = META_FORMAT;
    }
    return err;
}

/* ---- stage 2 ------------------------------------------------------------------------- */

static bool pairs_with(Eddy__V1__EventType type)
{
    return type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW ||
           type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK ||
           type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART ||
           type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE;
}

#define MAX_PAIR_ITEMS 64

/* Build and emit the stage-2 records of one event. 'm' is the user model before the
 * event: its recent items are what the user interacted with before this one. */
static eddy_err emit_stage2(const struct apply_params *ap, uint32_t p, uint64_t seq,
                            const Eddy__V1__Event *ev, bool late,
                            const Eddy__Store__V1__UserModel *m, apply_emit_fn *emit, void *ud)
{
    if (!emit || pb_empty(ev->product_id))
        return EDDY_OK;
    Eddy__Store__V1__Stage2Batch b = EDDY__STORE__V1__STAGE2_BATCH__INIT;
    Eddy__Store__V1__ProductUpdate u = EDDY__STORE__V1__PRODUCT_UPDATE__INIT;
    Eddy__Store__V1__ProductUpdate *ups[1] = {&u};
    Eddy__Store__V1__CoOccurrence pairs[2 * MAX_PAIR_ITEMS];
    Eddy__Store__V1__CoOccurrence *pp[2 * MAX_PAIR_ITEMS];
    const char *seen[MAX_PAIR_ITEMS];
    size_t nseen = 0, npairs = 0;

    b.source_partition = p;
    b.source_seq = seq;
    u.product_id = ev->product_id;
    u.category = ev->category;
    u.brand = ev->brand;
    u.price = ev->price;
    u.event_type = ev->event_type;
    u.ts = ev->timestamp_ms;
    u.late = late;
    u.window_start = window_start(ev->timestamp_ms, ap->window.size_ms);
    b.updates = ups;
    b.n_updates = 1;

    if (m && pairs_with(ev->event_type)) {
        double w = model_event_weight(ev->event_type);
        int limit = ap->cooccurrence_items < MAX_PAIR_ITEMS ? ap->cooccurrence_items
                                                            : MAX_PAIR_ITEMS;
        /* The user's newest items, views and purchases merged by time (both lists are
         * newest first): taking the views first left a user who views a lot no pair
         * with what they bought. Span 0: no time limit, the newest items whenever they
         * were seen, so the pairs do not depend on how fast time runs in the data. */
        size_t vi = 0, pi = 0;
        while ((vi < m->n_views || pi < m->n_purchases) && (int)nseen < limit) {
            bool take_view = pi >= m->n_purchases ||
                             (vi < m->n_views && m->views[vi]->ts >= m->purchases[pi]->ts);
            const Eddy__Store__V1__Recent *r = take_view ? m->views[vi++] : m->purchases[pi++];
            int64_t dt = ev->timestamp_ms - r->ts;
            if (dt < 0)
                dt = -dt;
            if ((ap->cooccurrence_span_ms > 0 && dt > ap->cooccurrence_span_ms) ||
                strcmp(r->id, ev->product_id) == 0)
                continue;
            bool dup = false;
            for (size_t j = 0; j < nseen && !dup; j++)
                dup = strcmp(seen[j], r->id) == 0;
            if (dup)
                continue;
            seen[nseen++] = r->id;
            /* co-occurrence is symmetric: each item becomes the other's neighbour */
            for (int dir = 0; dir < 2; dir++) {
                Eddy__Store__V1__CoOccurrence *c = &pairs[npairs];
                eddy__store__v1__co_occurrence__init(c);
                c->from_product = dir == 0 ? r->id : ev->product_id;
                c->to_product = dir == 0 ? ev->product_id : r->id;
                c->to_category = dir == 0 ? ev->category : r->category;
                c->ts = ev->timestamp_ms;
                c->weight = w;
                pp[npairs] = c;
                npairs++;
            }
        }
    }
    b.pairs = pp;
    b.n_pairs = npairs;
    return emit(ud, &b);
}

/* ---- TTL sweeps ---------------------------------------------------------------------- */

struct keyvals {
    struct store_key *keys;
    int64_t *ts;
    size_t n, cap;
    eddy_err err;
};

static eddy_err kv_push(struct keyvals *l, const unsigned char *k, size_t klen, int64_t ts)
{
    if (klen > STORE_KEY_MAX)
        return EDDY_OK;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 64;
        struct store_key *nk = realloc(l->keys, ncap * sizeof(*nk));
        if (!nk)
            return EDDY_ERR_NOMEM;
        l->keys = nk;
        int64_t *nt = realloc(l->ts, ncap * sizeof(*nt));
        if (!nt)
            return EDDY_ERR_NOMEM;
        l->ts = nt;
        l->cap = ncap;
    }
    memcpy(l->keys[l->n].buf, k, klen);
    l->keys[l->n].len = klen;
    l->ts[l->n] = ts;
    l->n++;
    return EDDY_OK;
}

static void kv_release(struct keyvals *l)
{
    free(l->keys);
    free(l->ts);
}

static int collect_all(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct keyvals *l = ud;
    l->err = kv_push(l, k, klen, 0);
    return l->err != EDDY_OK;
}

/* USER_WIN keys end with the window start: collect those older than the cutoff. */
struct win_cut {
    struct keyvals l;
    int64_t cutoff;
};

static int collect_old_user_windows(void *ud, const unsigned char *k, size_t klen,
                                    const char *v, size_t vlen)
{
    struct win_cut *c = ud;
    size_t off = klen >= 8 ? klen - 8 : klen;
    int64_t ws;
    if (key_get_i64(k, klen, &off, &ws) && ws < c->cutoff)
        c->l.err = kv_push(&c->l, k, klen, ws);
    return c->l.err != EDDY_OK;
}

static int collect_expired_users(void *ud, const unsigned char *k, size_t klen, const char *v,
                                 size_t vlen)
{
    struct win_cut *c = ud;
    int64_t last_ts;
    if (model_last_ts((const uint8_t *)v, vlen, &last_ts) && last_ts < c->cutoff)
        c->l.err = kv_push(&c->l, k, klen, last_ts);
    return c->l.err != EDDY_OK;
}

static eddy_err del_all(store_txn *t, struct keyvals *l)
{
    eddy_err err = l->err;
    for (size_t i = 0; i < l->n && err == EDDY_OK; i++)
        err = store_txn_del(t, &l->keys[i]);
    return err;
}

/* Older layout: DEDUP_EXP rows index the ids of the events logged before the partition's
 * conversion (PartitionMeta.format 0); they go, with their DEDUP rows, as before. */
static eddy_err sweep_dedup_index(store_txn *t, uint32_t p, int64_t cutoff)
{
    struct store_key start, end;
    struct keyvals l = {0};
    key_init(&start, p, T_DEDUP_EXP);
    key_init(&end, p, T_DEDUP_EXP);
    key_i64(&end, cutoff);
    eddy_err err = store_txn_scan(t, &start, &end, collect_all, &l);
    for (size_t i = 0; i < l.n && err == EDDY_OK && l.err == EDDY_OK; i++) {
        struct store_key dk;
        apply_dedup_key(&dk, p, (const char *)l.keys[i].buf + 11, l.keys[i].len - 11);
        err = store_txn_del(t, &dk);
    }
    if (err == EDDY_OK)
        err = del_all(t, &l);
    kv_release(&l);
    return err;
}

/* A STAGE2 record's time for the sweeps: its newest record's. */
static int64_t stage2_ts(const Eddy__Store__V1__Stage2Batch *b)
{
    int64_t ts = WATERMARK_NONE;
    for (size_t i = 0; i < b->n_updates; i++)
        ts = b->updates[i]->ts > ts ? b->updates[i]->ts : ts;
    for (size_t i = 0; i < b->n_pairs; i++)
        ts = b->pairs[i]->ts > ts ? b->pairs[i]->ts : ts;
    return ts;
}

/* The log record under key k (NULL: none), decoded from either encoding (logrec.h).
 * Caller owns it; free with eddy__store__v1__log_record__free_unpacked. */
static eddy_err get_record(store_txn *t, const struct store_key *k,
                           Eddy__Store__V1__LogRecord **r)
{
    const char *v;
    size_t vlen;
    bool found;
    *r = NULL;
    eddy_err err = store_txn_get(t, k, &v, &vlen, &found);
    if (err != EDDY_OK || !found)
        return err;
    if (!(*r = logrec_unpack((const uint8_t *)v, vlen))) {
        log_error("msg=\"log record does not decode\" partition=%u",
                  (unsigned)k->buf[0] << 8 | k->buf[1]);
        return EDDY_ERR_CORRUPT;
    }
    return EDDY_OK;
}

/* The event id and time of a log record (NULL id: a record of no event). */
static bool record_id_ts(const Eddy__Store__V1__LogRecord *r, const char **id, int64_t *ts)
{
    *id = NULL;
    switch (r->kind_case) {
    case EDDY__STORE__V1__LOG_RECORD__KIND_EVENT:
        *id = r->event->event_id;
        *ts = r->event->timestamp_ms;
        return true;
    case EDDY__STORE__V1__LOG_RECORD__KIND_ERASED:
        *id = r->erased->event_id;
        *ts = r->erased->timestamp_ms;
        return true;
    case EDDY__STORE__V1__LOG_RECORD__KIND_IDLE_WATERMARK:
        *ts = r->idle_watermark;
        return true;
    case EDDY__STORE__V1__LOG_RECORD__KIND_STAGE2:
        *ts = stage2_ts(r->stage2);
        return true;
    case EDDY__STORE__V1__LOG_RECORD__KIND_DELETE_USER:
        *ts = r->delete_user->ts;
        return true;
    case EDDY__STORE__V1__LOG_RECORD__KIND_OUTBOX_DONE:
        *ts = r->outbox_done->ts;
        return true;
    case EDDY__STORE__V1__LOG_RECORD__KIND_IMPRESSION:
        *ts = r->impression->ts;
        return true;
    default:
        return false;
    }
}

/* The user a log record belongs to (its USER_LOG entry), or NULL. */
static const char *record_user(const Eddy__Store__V1__LogRecord *r)
{
    if (r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_EVENT)
        return r->event->user_id;
    if (r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_IMPRESSION)
        return r->impression->user_id;
    return NULL;
}

/* Forget the ids of the events logged before the cutoff: walk the log from where the last
 * sweep stopped, in seq order, to the first record at or after the cutoff. The log is in
 * arrival order, nearly event-time order: an id may be remembered a little longer than
 * --dedup-window (an event behind a newer one waits for it), never shorter, and the walk
 * is a function of the log like everything else. (One get per record: a sweep passes a
 * sweep interval's records, and a scan of the txn would sort all its pending keys.) */
static eddy_err sweep_dedup(store_txn *t, uint32_t p, struct part_meta *m, int64_t cutoff)
{
    eddy_err err = sweep_dedup_index(t, p, cutoff);
    if (m->dedup_next < m->log_first_seq) { /* --dedup-window was 0 while the log was swept */
        m->dedup_next = m->log_first_seq;
        m->dirty = true;
    }
    while (err == EDDY_OK && m->dedup_next < m->next_seq) {
        struct store_key k;
        Eddy__Store__V1__LogRecord *r = NULL;
        const char *id = NULL;
        int64_t ts = 0;
        key_init(&k, p, T_LOG);
        key_u64(&k, m->dedup_next);
        err = get_record(t, &k, &r);
        if (err == EDDY_OK && r && !record_id_ts(r, &id, &ts))
            err = EDDY_ERR_CORRUPT;
        bool stop = err != EDDY_OK || (r && ts >= cutoff);
        if (!stop && r && id) {
            apply_dedup_key(&k, p, id, strlen(id));
            err = store_txn_del(t, &k);
        }
        if (r)
            protobuf_c_message_free_unpacked(&r->base, NULL);
        if (stop || err != EDDY_OK)
            break;
        m->dedup_next++; /* passed (or a seq without a record: deleted before) */
        m->dirty = true;
    }
    return err;
}

static eddy_err sweep_table_by_cut(store_txn *t, uint32_t p, enum store_table table,
                                   store_scan_fn *fn, int64_t cutoff)
{
    struct store_key start, end;
    struct win_cut c = {{0}, cutoff};
    key_init(&start, p, table);
    key_prefix_end(&start, &end);
    eddy_err err = store_txn_scan(t, &start, &end, fn, &c);
    if (err == EDDY_OK)
        err = del_all(t, &c.l);
    kv_release(&c.l);
    return err;
}

/* Expired user models go, with the purchases and interactions remembered for them. */
static eddy_err sweep_users(store_txn *t, uint32_t p, int64_t cutoff)
{
    struct store_key start, end;
    struct win_cut c = {{0}, cutoff};
    key_init(&start, p, T_USER);
    key_prefix_end(&start, &end);
    eddy_err err = store_txn_scan(t, &start, &end, collect_expired_users, &c);
    if (err == EDDY_OK)
        err = c.l.err;
    for (size_t i = 0; i < c.l.n && err == EDDY_OK; i++) {
        for (int j = 0; j < 3 && err == EDDY_OK; j++) {
            struct store_key b, bend;
            key_init(&b, p, j == 0 ? T_BOUGHT : j == 1 ? T_SEEN : T_IMPR);
            key_u16(&b, (uint16_t)(c.l.keys[i].len - 3));
            key_bytes(&b, (const char *)c.l.keys[i].buf + 3, c.l.keys[i].len - 3);
            key_prefix_end(&b, &bend);
            err = store_txn_del_range(t, &b, &bend, NULL);
        }
    }
    if (err == EDDY_OK)
        err = del_all(t, &c.l);
    kv_release(&c.l);
    return err;
}

static eddy_err sweep_time_range(store_txn *t, uint32_t p, enum store_table table, int64_t cutoff)
{
    struct store_key start, end;
    key_init(&start, p, table);
    key_init(&end, p, table);
    key_i64(&end, cutoff);
    return store_txn_del_range(t, &start, &end, NULL);
}

static eddy_err delete_log_entry(store_txn *t, uint32_t p, uint64_t seq, const char *user_id)
{
    struct store_key k;
    key_init(&k, p, T_LOG);
    key_u64(&k, seq);
    eddy_err err = store_txn_del(t, &k);
    if (err == EDDY_OK) {
        key_init(&k, p, T_LATE);
        key_u64(&k, seq);
        err = store_txn_del(t, &k);
    }
    if (err == EDDY_OK && user_id) {
        key_init(&k, p, T_USER_LOG);
        key_lstr(&k, user_id);
        key_u64(&k, seq);
        err = store_txn_del(t, &k);
    }
    return err;
}

/* A user's log record whose event id is still remembered for dedup: the event gives way to
 * its id and time (LogRecord.erased), which the dedup sweep needs to forget the id. */
static eddy_err erase_log_entry(store_txn *t, uint32_t p, uint64_t seq, const char *user_id)
{
    struct store_key k;
    Eddy__Store__V1__LogRecord *r = NULL;
    key_init(&k, p, T_LOG);
    key_u64(&k, seq);
    eddy_err err = get_record(t, &k, &r);
    if (err != EDDY_OK)
        return err;
    if (!r || r->kind_case != EDDY__STORE__V1__LOG_RECORD__KIND_EVENT) {
        if (r)
            protobuf_c_message_free_unpacked(&r->base, NULL);
        return delete_log_entry(t, p, seq, user_id);
    }
    Eddy__Store__V1__ErasedEvent er = EDDY__STORE__V1__ERASED_EVENT__INIT;
    Eddy__Store__V1__LogRecord out = EDDY__STORE__V1__LOG_RECORD__INIT;
    er.event_id = r->event->event_id;
    er.timestamp_ms = r->event->timestamp_ms;
    out.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_ERASED;
    out.erased = &er;
    err = delete_log_entry(t, p, seq, user_id);
    if (err == EDDY_OK)
        err = store_txn_put_msg(t, &k, &out.base);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return err;
}

/* Drop log records older than the cutoff from the front of the log. The log is in arrival
 * order, which is nearly event-time order; the sweep stops at the first newer record, so
 * it never removes a record newer than the cutoff, and at 'floor' (the oldest retained
 * checkpoint's seq), so the log always reaches back to that checkpoint. */
static eddy_err sweep_log(store_txn *t, uint32_t p, struct part_meta *m, int64_t cutoff,
                          uint64_t floor)
{
    eddy_err err = EDDY_OK;
    uint64_t stop = floor < m->next_seq ? floor : m->next_seq;
    while (m->log_first_seq < stop && err == EDDY_OK) {
        struct store_key k;
        Eddy__Store__V1__LogRecord *r = NULL;
        key_init(&k, p, T_LOG);
        key_u64(&k, m->log_first_seq);
        err = get_record(t, &k, &r);
        if (err != EDDY_OK)
            break;
        if (r) {
            const char *id;
            int64_t ts = cutoff;
            if (!record_id_ts(r, &id, &ts) || ts >= cutoff) {
                protobuf_c_message_free_unpacked(&r->base, NULL);
                break;
            }
            err = delete_log_entry(t, p, m->log_first_seq, record_user(r));
            protobuf_c_message_free_unpacked(&r->base, NULL);
        }
        m->log_first_seq++;
        m->dirty = true;
    }
    return err;
}

static eddy_err sweep(store_txn *t, const struct apply_params *ap, uint32_t p,
                      struct part_meta *m)
{
    int64_t wm = m->watermark;
    eddy_err err = EDDY_OK;
    if (ap->dedup_window_ms > 0)
        err = sweep_dedup(t, p, m, wm - ap->dedup_window_ms);
    if (err == EDDY_OK && ap->window_retention_ms > 0) {
        int64_t cut = wm - ap->window_retention_ms;
        err = sweep_time_range(t, p, T_PART_WIN, cut);
        if (err == EDDY_OK)
            err = sweep_time_range(t, p, T_PROD_WIN, cut);
        if (err == EDDY_OK)
            err = sweep_table_by_cut(t, p, T_USER_WIN, collect_old_user_windows, cut);
    }
    if (err == EDDY_OK && ap->state_ttl_ms > 0)
        err = sweep_users(t, p, wm - ap->state_ttl_ms);
    if (err == EDDY_OK && ap->log_retention_ms > 0) {
        uint64_t floor = ap->log_floor
                             ? atomic_load_explicit(&ap->log_floor[p], memory_order_relaxed)
                             : UINT64_MAX;
        if (ap->dedup_window_ms > 0 && m->dedup_next < floor)
            floor = m->dedup_next; /* the walk of the dedup sweep still needs these */
        err = sweep_log(t, p, m, wm - ap->log_retention_ms, floor);
    }
    m->swept_until = wm;
    m->dirty = true;
    return err;
}

enum sweep_due { SWEEP_NO, SWEEP_FIRST, SWEEP_NOW };

/* What advance does at watermark 'wm' after sweeping until 'swept' (apply_ahead_event
 * predicts it with the same rule). */
static enum sweep_due sweep_due(const struct apply_params *ap, int64_t swept, int64_t wm)
{
    int64_t iv = ap->sweep_interval_ms;
    if (iv <= 0 || wm == WATERMARK_NONE)
        return SWEEP_NO;
    if (swept == WATERMARK_NONE)
        return SWEEP_FIRST; /* first watermark: nothing to sweep yet */
    return window_start(wm, iv) > window_start(swept, iv) ? SWEEP_NOW : SWEEP_NO;
}

static eddy_err advance(store_txn *t, const struct apply_params *ap, uint32_t p,
                        struct part_meta *m)
{
    switch (sweep_due(ap, m->swept_until, m->watermark)) {
    case SWEEP_NO:
        return EDDY_OK;
    case SWEEP_FIRST:
        m->swept_until = m->watermark;
        m->dirty = true;
        return EDDY_OK;
    case SWEEP_NOW:
        break;
    }
    return sweep(t, ap, p, m);
}

static bool pack_model(const ProtobufCMessage *m, struct pbenc_out *o)
{
    return model_pack((const Eddy__Store__V1__UserModel *)m, o);
}

/* ---- conversion of format 4 ---------------------------------------------------------- */

eddy_err apply_convert_models(store_txn *t, uint32_t p, size_t *converted)
{
    struct store_key start, end;
    struct keyvals l = {0};
    *converted = 0;
    store_txn_set_packer(t, &eddy__store__v1__user_model__descriptor, pack_model);
    key_init(&start, p, T_USER);
    key_prefix_end(&start, &end);
    eddy_err err = store_txn_scan(t, &start, &end, collect_all, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t i = 0; i < l.n && err == EDDY_OK; i++) {
        Eddy__Store__V1__UserModel *um = NULL;
        err = store_txn_obj_get(t, &l.keys[i], &eddy__store__v1__user_model__descriptor,
                                (ProtobufCMessage **)&um);
        if (err == EDDY_ERR_CORRUPT) {
            err = EDDY_OK; /* logged; left as it is, for the readers to find as before */
            continue;
        }
        if (err == EDDY_OK && um && model_convert(um)) {
            err = store_txn_obj_set(t, &l.keys[i], &um->base);
            ++*converted;
        }
    }
    kv_release(&l);
    return err;
}

/* ---- conversion of format 5 ---------------------------------------------------------- */

#define CONVERT_CHUNK 4096 /* rows collected per scan of a conversion */

static eddy_err put_event_record(store_txn *t, const struct store_key *k,
                                 const Eddy__V1__Event *ev);

/* LOG rows in the protobuf encoding, up to a chunk. */
static int collect_protobuf_records(void *ud, const unsigned char *k, size_t klen,
                                    const char *v, size_t vlen)
{
    struct keyvals *l = ud;
    if (!logrec_is_compact((const uint8_t *)v, vlen))
        l->err = kv_push(l, k, klen, 0);
    return l->err != EDDY_OK || l->n == CONVERT_CHUNK;
}

static int collect_chunk(void *ud, const unsigned char *k, size_t klen, const char *v,
                         size_t vlen)
{
    struct keyvals *l = ud;
    l->err = kv_push(l, k, klen, 0);
    return l->err != EDDY_OK || l->n == CONVERT_CHUNK;
}

/* Rewrite the chunk's event records compactly; *more: the scan goes on after 'start'. */
static eddy_err convert_records(store_txn *t, struct store_key *start, const struct store_key *end,
                                size_t *records, bool *more)
{
    struct keyvals l = {0};
    eddy_err err = store_txn_scan(t, start, end, collect_protobuf_records, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t i = 0; i < l.n && err == EDDY_OK; i++) {
        Eddy__Store__V1__LogRecord *r = NULL;
        err = get_record(t, &l.keys[i], &r);
        if (err == EDDY_ERR_CORRUPT) {
            err = EDDY_OK; /* logged; left as it is, for the replay to refuse as before */
            continue;
        }
        if (err == EDDY_OK && r && r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_EVENT &&
            r->event) {
            err = put_event_record(t, &l.keys[i], r->event);
            ++*records;
        }
        if (r)
            eddy__store__v1__log_record__free_unpacked(r, NULL);
    }
    *more = err == EDDY_OK && l.n == CONVERT_CHUNK;
    if (*more) { /* the first key after the chunk's last */
        *start = l.keys[l.n - 1];
        key_bytes(start, "", 1);
    }
    kv_release(&l);
    return err;
}

/* Move a chunk of DEDUP_ID rows to DEDUP (the scan after it starts over: they are gone). */
static eddy_err convert_dedup(store_txn *t, uint32_t p, size_t *records, bool *more)
{
    struct store_key start, end;
    struct keyvals l = {0};
    key_init(&start, p, T_DEDUP_ID);
    key_prefix_end(&start, &end);
    eddy_err err = store_txn_scan(t, &start, &end, collect_chunk, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t i = 0; i < l.n && err == EDDY_OK; i++) {
        struct store_key k;
        apply_dedup_key(&k, p, (const char *)l.keys[i].buf + 3, l.keys[i].len - 3);
        err = store_txn_put(t, &k, "", 0);
        if (err == EDDY_OK)
            err = store_txn_del(t, &l.keys[i]);
    }
    *records += l.n;
    *more = err == EDDY_OK && l.n == CONVERT_CHUNK;
    kv_release(&l);
    return err;
}

eddy_err apply_convert_log(store_txn *t, uint32_t p, size_t *records)
{
    struct store_key start, end;
    bool more = true;
    eddy_err err = EDDY_OK;
    *records = 0;
    key_init(&start, p, T_LOG);
    key_prefix_end(&start, &end);
    while (more && err == EDDY_OK)
        err = convert_records(t, &start, &end, records, &more);
    more = true;
    while (more && err == EDDY_OK)
        err = convert_dedup(t, p, records, &more);
    return err;
}

/* ---- apply --------------------------------------------------------------------------- */

/* The tables whose keys the txn keeps sets of (apply_params.key_set_bytes): rows of
 * users, products and impressions, whose number grows with users and products, not with
 * time, and which an event reads before it writes them (the rows of time windows and
 * event ids would fill any budget, and co-occurrence pairs have their own). */
#define KEY_SET_TABLES \
    ((UINT32_C(1) << T_USER) | (UINT32_C(1) << T_PRODUCT) | (UINT32_C(1) << T_IMPR))

static void index_keys(store_txn *t, const struct apply_params *ap)
{
    store_txn_index_keys(t, KEY_SET_TABLES, ap->key_set_bytes);
}

/* The user's model as an object of the txn (borrowed until commit), created if absent or
 * expired. */
static eddy_err load_model(store_txn *t, const struct apply_params *ap, uint32_t p,
                           const struct part_meta *m, const char *user_id,
                           Eddy__Store__V1__UserModel **um, struct store_key *k)
{
    key_init(k, p, T_USER);
    key_str(k, user_id);
    store_txn_set_packer(t, &eddy__store__v1__user_model__descriptor, pack_model);
    eddy_err err = store_txn_obj_get(t, k, &eddy__store__v1__user_model__descriptor,
                                     (ProtobufCMessage **)um);
    if (err != EDDY_OK)
        return err;
    /* expired but not yet swept: start afresh, as if the sweep had run */
    bool expired = *um && ap->state_ttl_ms > 0 && m->watermark != WATERMARK_NONE &&
                   (*um)->last_ts < m->watermark - ap->state_ttl_ms;
    if (!*um || expired) {
        *um = malloc(sizeof(**um));
        if (!*um)
            return EDDY_ERR_NOMEM;
        eddy__store__v1__user_model__init(*um);
        return store_txn_obj_set(t, k, &(*um)->base);
    }
    return EDDY_OK;
}

/* Whether the user's USER_WIN row of window 'ws' cannot exist, so that it is created
 * without a read (the read of a row that does not exist goes down to LevelDB to miss:
 * a user's first event in each window). 'um' is the user's model before the event. A row
 * is written only by a non-late event, which the model's last_ts then covers: the rows of
 * this model are of windows at or before last_ts. A model that expired (--state-ttl, swept
 * or started afresh by load_model) had its last event before the watermark of then minus
 * the TTL, so its rows left behind are of windows before the watermark minus the TTL
 * now. DeleteUser removes the rows with the model. */
static bool user_window_new(const struct apply_params *ap, const struct part_meta *m,
                            const Eddy__Store__V1__UserModel *um, int64_t ws)
{
    if (um->last_ts >= ws)
        return false;
    return ap->state_ttl_ms <= 0 || m->watermark == WATERMARK_NONE ||
           ws >= m->watermark - ap->state_ttl_ms;
}

/* 'deduped': the event's DEDUP row is written already, with these bytes
 * (apply_append_event, apply_event), so that it is not written a second time. */
static eddy_err apply_logged_event(store_txn *t, const struct apply_params *ap, uint32_t p,
                                   struct part_meta *m, uint64_t seq, const Eddy__V1__Event *ev,
                                   bool deduped, apply_emit_fn *emit, void *emit_ud,
                                   enum apply_outcome *outcome)
{
    struct store_key k, uk;
    Eddy__Store__V1__UserModel *um = NULL;
    eddy_err err;
    int64_t ts = ev->timestamp_ms;
    index_keys(t, ap);

    /* dedup entry: its key is all the apply reads, and the dedup sweep finds it along the
     * log, so the value is empty (format 5; older rows hold a Dedup nothing reads) */
    if (!deduped) {
        apply_dedup_key(&k, p, ev->event_id, strlen(ev->event_id));
        if ((err = store_txn_put(t, &k, "", 0)) != EDDY_OK)
            return err;
    }
    key_init(&k, p, T_USER_LOG);
    key_lstr(&k, ev->user_id);
    key_u64(&k, seq);
    if ((err = store_txn_put(t, &k, "", 0)) != EDDY_OK)
        return err;

    /* the model before the event: its last event time bounds the user's window rows */
    if ((err = load_model(t, ap, p, m, ev->user_id, &um, &uk)) != EDDY_OK)
        return err;
    bool late = window_is_late(&ap->window, ts, m->watermark);
    int64_t ws = window_start(ts, ap->window.size_ms);
    if (late) {
        m->late_events++;
        key_init(&k, p, T_LATE);
        key_u64(&k, seq);
        if ((err = store_txn_put(t, &k, "", 0)) != EDDY_OK)
            return err;
    } else {
        key_init(&k, p, T_USER_WIN);
        key_lstr(&k, ev->user_id);
        key_i64(&k, ws);
        if ((err = counts_bump(t, &k, ev->event_type, NULL, user_window_new(ap, m, um, ws))) !=
            EDDY_OK)
            return err;
        key_init(&k, p, T_PART_WIN);
        key_i64(&k, ws);
        if ((err = counts_bump(t, &k, ev->event_type, NULL, false)) != EDDY_OK)
            return err;
    }

    if (ev->event_type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE ||
        ev->event_type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW ||
        ev->event_type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK ||
        ev->event_type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART) {
        /* what Recommend leaves out: purchases always, the rest unless asked for */
        bool bought = ev->event_type == EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE;
        key_init(&k, p, bought ? T_BOUGHT : T_SEEN);
        key_lstr(&k, ev->user_id);
        key_str(&k, ev->product_id);
        if ((err = store_txn_put(t, &k, "", 0)) != EDDY_OK)
            return err;
    }
    if ((err = attribution_event(t, p, ev)) != EDDY_OK)
        return err;
    if ((err = emit_stage2(ap, p, seq, ev, late, um, emit, emit_ud)) != EDDY_OK)
        return err;
    if ((err = model_apply(um, &ap->model, ev)) != EDDY_OK)
        return err;
    if ((err = store_txn_obj_set(t, &uk, &um->base)) != EDDY_OK)
        return err; /* the model belongs to the txn */

    m->watermark = window_advance(&ap->window, m->watermark, &m->max_ts, ts);
    m->events++;
    m->dirty = true;
    *outcome = late ? APPLY_LATE : APPLY_ACCEPTED;
    return advance(t, ap, p, m);
}

/* Append 'r' to partition p's log under its next seq. */
static eddy_err append_record(store_txn *t, uint32_t p, struct part_meta *m,
                              const Eddy__Store__V1__LogRecord *r)
{
    struct store_key k;
    key_init(&k, p, T_LOG);
    key_u64(&k, m->next_seq++);
    m->dirty = true;
    return store_txn_put_msg(t, &k, &r->base);
}

/* The log record of 'ev' under key k: compact (logrec.h), or where that cannot hold it,
 * the protobuf LogRecord. */
static eddy_err put_event_record(store_txn *t, const struct store_key *k,
                                 const Eddy__V1__Event *ev)
{
    uint8_t scratch[1024];
    struct pbenc_out o = {scratch, sizeof(scratch), NULL, 0};
    if (!logrec_pack_event(ev, &o)) {
        Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
        r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_EVENT;
        r.event = (Eddy__V1__Event *)ev;
        return store_txn_put_msg(t, k, &r.base);
    }
    eddy_err err = store_txn_put(t, k, o.buf, o.len);
    if (o.buf != scratch)
        free(o.buf);
    return err;
}

/* Whether 'ev' is a duplicate of an event id partition p remembers (then counted); *k is
 * its DEDUP key, for the row a new event writes (the key hashes a long id: made once). */
static eddy_err dedup_check(store_txn *t, uint32_t p, struct part_meta *m,
                            const Eddy__V1__Event *ev, struct store_key *k, bool *duplicate)
{
    const char *v;
    size_t vlen;
    apply_dedup_key(k, p, ev->event_id, strlen(ev->event_id));
    eddy_err err = store_txn_get(t, k, &v, &vlen, duplicate);
    if (err == EDDY_OK && *duplicate) {
        m->duplicates++;
        m->dirty = true;
    }
    return err;
}

eddy_err apply_event(store_txn *t, const struct apply_params *ap, uint32_t p,
                     struct part_meta *m, const Eddy__V1__Event *ev, apply_emit_fn *emit,
                     void *emit_ud, enum apply_outcome *outcome)
{
    struct store_key k, dk;
    bool dup;
    eddy_err err = dedup_check(t, p, m, ev, &dk, &dup);
    if (err != EDDY_OK)
        return err;
    if (dup) {
        *outcome = APPLY_DUPLICATE;
        return EDDY_OK;
    }
    uint64_t seq = m->next_seq++;
    m->dirty = true;
    key_init(&k, p, T_LOG);
    key_u64(&k, seq);
    if ((err = put_event_record(t, &k, ev)) != EDDY_OK ||
        (err = store_txn_put(t, &dk, "", 0)) != EDDY_OK)
        return err;
    return apply_logged_event(t, ap, p, m, seq, ev, true, emit, emit_ud, outcome);
}

void apply_ahead_init(struct apply_ahead *a, const struct part_meta *m)
{
    a->end = m->next_seq;
    a->watermark = m->watermark;
    a->max_ts = m->max_ts;
    a->swept_until = m->swept_until;
}

void apply_logged_release(struct apply_logged *l)
{
    if (l->ev && l->unpacked)
        eddy__v1__event__free_unpacked(l->ev, NULL);
    else
        free(l->ev);
    l->ev = NULL;
}

/* The fields of eddy.v1.Event that event_copy copies: a descriptor with more (a field
 * added since) makes it refuse, and the records decode instead (unit.node.state.apply
 * notices it). */
#define EVENT_FIELDS 12
#define EVENT_STRINGS 8

/* Bytes of string 's' in a copy (0: left as protobuf_c_empty_string, as an unpack leaves
 * an empty string field), its NUL included. */
static size_t copied_len(const char *s)
{
    return s && s[0] ? strlen(s) + 1 : 0;
}

static char *copy_str(char **at, const char *s, size_t n)
{
    if (n == 0)
        return (char *)protobuf_c_empty_string;
    char *p = *at;
    memcpy(p, s, n);
    *at += n;
    return p;
}

/* 'ev' as protobuf_c_message_unpack makes of its packed bytes, in one malloc'd block (free
 * it with free()), without the encoding and the decoding; NULL where a copy would not be
 * that: unknown fields (kept by an unpack), a price of -0.0 (not packed: it unpacks as 0),
 * a descriptor with other fields; or out of memory. */
static Eddy__V1__Event *event_copy(const Eddy__V1__Event *ev)
{
    static const size_t str_at[EVENT_STRINGS] = {
        offsetof(Eddy__V1__Event, event_id),     offsetof(Eddy__V1__Event, user_id),
        offsetof(Eddy__V1__Event, session_id),   offsetof(Eddy__V1__Event, product_id),
        offsetof(Eddy__V1__Event, category),     offsetof(Eddy__V1__Event, brand),
        offsetof(Eddy__V1__Event, search_query), offsetof(Eddy__V1__Event, recommendation_id)};
    if (eddy__v1__event__descriptor.n_fields != EVENT_FIELDS || ev->base.n_unknown_fields ||
        (ev->price == 0 && signbit(ev->price)))
        return NULL;
    const char *str[EVENT_STRINGS];
    size_t len[EVENT_STRINGS], total = sizeof(*ev);
    for (size_t i = 0; i < EVENT_STRINGS; i++) {
        str[i] = *(const char *const *)((const char *)ev + str_at[i]);
        total += len[i] = copied_len(str[i]);
    }
    size_t nmeta = ev->n_metadata;
    for (size_t i = 0; i < nmeta; i++) {
        const Eddy__V1__Event__MetadataEntry *me = ev->metadata[i];
        if (!me || me->base.n_unknown_fields)
            return NULL;
        total += sizeof(*ev->metadata) + sizeof(*me) + copied_len(me->key) +
                 copied_len(me->value);
    }
    Eddy__V1__Event *c = malloc(total);
    if (!c)
        return NULL;
    *c = *ev; /* the scalars; every pointer is replaced below */
    /* the entries' pointers, the entries (both 8-byte multiples), then the strings */
    Eddy__V1__Event__MetadataEntry **arr = (Eddy__V1__Event__MetadataEntry **)(c + 1);
    Eddy__V1__Event__MetadataEntry *ent = (Eddy__V1__Event__MetadataEntry *)(arr + nmeta);
    char *at = (char *)(ent + nmeta);
    for (size_t i = 0; i < EVENT_STRINGS; i++)
        *(char **)((char *)c + str_at[i]) = copy_str(&at, str[i], len[i]);
    c->metadata = nmeta ? arr : NULL;
    for (size_t i = 0; i < nmeta; i++) {
        const Eddy__V1__Event__MetadataEntry *me = ev->metadata[i];
        ent[i] = *me;
        ent[i].key = copy_str(&at, me->key, copied_len(me->key));
        ent[i].value = copy_str(&at, me->value, copied_len(me->value));
        arr[i] = &ent[i];
    }
    return c;
}

/* 'ev' as its log record decodes into *logged, without encoding or decoding it: in one
 * block (event_copy), or where that copy would differ, field by field (pb_copy, which
 * also gives what a decode gives). */
static eddy_err logged_event(const Eddy__V1__Event *ev, struct apply_logged *logged)
{
    logged->unpacked = false;
    if ((logged->ev = event_copy(ev)) != NULL)
        return EDDY_OK;
    logged->ev = (Eddy__V1__Event *)pb_copy(&ev->base, &eddy__v1__event__descriptor);
    logged->unpacked = true;
    return logged->ev ? EDDY_OK : EDDY_ERR_NOMEM;
}

eddy_err apply_append_event(store_txn *t, uint32_t p, struct part_meta *m,
                            struct apply_ahead *a, const Eddy__V1__Event *ev,
                            struct apply_logged *logged, bool *duplicate)
{
    struct store_key k, dk;
    logged->ev = NULL;
    eddy_err err = dedup_check(t, p, m, ev, &dk, duplicate);
    if (err != EDDY_OK || *duplicate)
        return err;
    key_init(&k, p, T_LOG);
    key_u64(&k, a->end);
    err = put_event_record(t, &k, ev);
    /* the dedup row now, for the appends after it, with the bytes its apply would write
     * (apply_appended writes none) */
    if (err == EDDY_OK)
        err = store_txn_put(t, &dk, "", 0);
    if (err == EDDY_OK)
        err = logged_event(ev, logged);
    return err;
}

bool apply_ahead_event(const struct apply_params *ap, struct apply_ahead *a, int64_t ts,
                       bool *late)
{
    a->end++;
    *late = window_is_late(&ap->window, ts, a->watermark);
    a->watermark = window_advance(&ap->window, a->watermark, &a->max_ts, ts);
    switch (sweep_due(ap, a->swept_until, a->watermark)) {
    case SWEEP_NO:
        return false;
    case SWEEP_FIRST:
        a->swept_until = a->watermark;
        return false;
    case SWEEP_NOW:
        break;
    }
    return true;
}

static eddy_err apply_logged_idle(store_txn *t, const struct apply_params *ap, uint32_t p,
                                  struct part_meta *m, int64_t wm)
{
    if (wm > m->watermark) {
        m->watermark = wm;
        m->dirty = true;
    }
    return advance(t, ap, p, m);
}

eddy_err apply_idle(store_txn *t, const struct apply_params *ap, uint32_t p,
                    struct part_meta *m, int64_t wm)
{
    struct store_key k;
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_IDLE_WATERMARK;
    r.idle_watermark = wm;
    uint64_t seq = m->next_seq++;
    m->dirty = true;
    key_init(&k, p, T_LOG);
    key_u64(&k, seq);
    eddy_err err = store_txn_put_msg(t, &k, &r.base);
    if (err != EDDY_OK)
        return err;
    return apply_logged_idle(t, ap, p, m, wm);
}

/* An impression is indexed under its user (DeleteUser removes it from the log) and
 * counted; it moves neither the watermark nor the event counts: it is not an event, and
 * its time is the serving node's clock. */
static eddy_err apply_logged_impression(store_txn *t, uint32_t p, uint64_t seq,
                                        const Eddy__Store__V1__Impression *imp)
{
    struct store_key k;
    key_init(&k, p, T_USER_LOG);
    key_lstr(&k, imp->user_id);
    key_u64(&k, seq);
    eddy_err err = store_txn_put(t, &k, "", 0);
    return err == EDDY_OK ? attribution_impression(t, p, imp) : err;
}

eddy_err apply_impression(store_txn *t, uint32_t p, struct part_meta *m,
                          const Eddy__Store__V1__Impression *imp)
{
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_IMPRESSION;
    r.impression = (Eddy__Store__V1__Impression *)imp;
    uint64_t seq = m->next_seq;
    eddy_err err = append_record(t, p, m, &r);
    return err == EDDY_OK ? apply_logged_impression(t, p, seq, imp) : err;
}

static eddy_err delete_user_state(store_txn *t, uint32_t p, const struct part_meta *m,
                                  const char *user_id, bool *model_deleted,
                                  uint64_t *windows_deleted, uint64_t *log_deleted);
static eddy_err replay_delete_user(store_txn *t, uint32_t p, const struct part_meta *m,
                                   const Eddy__Store__V1__DeleteUserRecord *du);
static eddy_err remove_outbox(store_txn *t, uint32_t p, const uint64_t *seqs, size_t n,
                              uint64_t *removed);

/* A STAGE2 record of partition q applies the records of q only. */
static bool only_partition(void *ud, uint32_t q)
{
    return *(const uint32_t *)ud == q;
}

/* apply_replay; 'deduped': an event's DEDUP row is written already (apply_appended). */
static eddy_err replay_record(store_txn *t, const struct apply_params *ap, uint32_t p,
                              struct part_meta *m, uint64_t seq,
                              const Eddy__Store__V1__LogRecord *r, bool deduped,
                              apply_emit_fn *emit, void *emit_ud, enum apply_outcome *outcome)
{
    if (seq >= m->next_seq) {
        m->next_seq = seq + 1;
        m->dirty = true;
    }
    if (r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_IDLE_WATERMARK) {
        *outcome = APPLY_ACCEPTED;
        return apply_logged_idle(t, ap, p, m, r->idle_watermark);
    }
    if (r->kind_case == EDDY__STORE__V1__LOG_RECORD__KIND_ERASED && r->erased) {
        *outcome = APPLY_DUPLICATE; /* DeleteUser erased it: nothing to apply */
        return EDDY_OK;
    }
    *outcome = APPLY_ACCEPTED;
    switch (r->kind_case) {
    case EDDY__STORE__V1__LOG_RECORD__KIND_EVENT:
        if (!r->event)
            return EDDY_ERR_CORRUPT;
        return apply_logged_event(t, ap, p, m, seq, r->event, deduped, emit, emit_ud, outcome);
    case EDDY__STORE__V1__LOG_RECORD__KIND_STAGE2:
        return ap->product ? product_apply(t, ap->product, r->stage2, only_partition, &p)
                           : EDDY_OK;
    case EDDY__STORE__V1__LOG_RECORD__KIND_DELETE_USER:
        return replay_delete_user(t, p, m, r->delete_user);
    case EDDY__STORE__V1__LOG_RECORD__KIND_IMPRESSION:
        if (!r->impression)
            return EDDY_ERR_CORRUPT;
        return apply_logged_impression(t, p, seq, r->impression);
    case EDDY__STORE__V1__LOG_RECORD__KIND_OUTBOX_DONE:
        if (!ap->product)
            return EDDY_OK;
        return remove_outbox(t, p, r->outbox_done->source_seqs, r->outbox_done->n_source_seqs,
                             NULL);
    default:
        return EDDY_ERR_CORRUPT; /* a kind this binary does not know: never skipped */
    }
}

eddy_err apply_replay(store_txn *t, const struct apply_params *ap, uint32_t p,
                      struct part_meta *m, uint64_t seq, const Eddy__Store__V1__LogRecord *r,
                      apply_emit_fn *emit, void *emit_ud, enum apply_outcome *outcome)
{
    return replay_record(t, ap, p, m, seq, r, false, emit, emit_ud, outcome);
}

eddy_err apply_appended(store_txn *t, const struct apply_params *ap, uint32_t p,
                        struct part_meta *m, uint64_t seq, const Eddy__V1__Event *ev,
                        apply_emit_fn *emit, void *emit_ud, enum apply_outcome *outcome)
{
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_EVENT;
    r.event = (Eddy__V1__Event *)ev;
    return replay_record(t, ap, p, m, seq, &r, true, emit, emit_ud, outcome);
}

/* ---- stage 2 and OUTBOX records ------------------------------------------------------ */

eddy_err apply_stage2(store_txn *t, const struct apply_params *ap, uint32_t q,
                      struct part_meta *m, const Eddy__Store__V1__Stage2Batch *b, bool *logged)
{
    bool fresh;
    *logged = false;
    index_keys(t, ap);
    eddy_err err = product_fresh(t, q, b->source_partition, b->source_seq, &fresh);
    if (err != EDDY_OK || !fresh)
        return err;
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_STAGE2;
    r.stage2 = (Eddy__Store__V1__Stage2Batch *)b;
    if ((err = append_record(t, q, m, &r)) != EDDY_OK)
        return err;
    *logged = true;
    return product_apply(t, ap->product, b, only_partition, &q);
}

static eddy_err remove_outbox(store_txn *t, uint32_t p, const uint64_t *seqs, size_t n,
                              uint64_t *removed)
{
    eddy_err err = EDDY_OK;
    for (size_t i = 0; i < n && err == EDDY_OK; i++) {
        struct store_key k;
        key_init(&k, p, T_OUTBOX);
        key_u64(&k, seqs[i]);
        if (removed) {
            const char *v;
            size_t vlen;
            bool found;
            err = store_txn_get(t, &k, &v, &vlen, &found);
            *removed += err == EDDY_OK && found;
        }
        if (err == EDDY_OK)
            err = store_txn_del(t, &k);
    }
    return err;
}

eddy_err apply_outbox_done(store_txn *t, uint32_t p, struct part_meta *m, const uint64_t *seqs,
                           size_t n, uint64_t *removed)
{
    Eddy__Store__V1__OutboxDone od = EDDY__STORE__V1__OUTBOX_DONE__INIT;
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    od.source_seqs = (uint64_t *)seqs;
    od.n_source_seqs = n;
    od.ts = m->max_ts;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_OUTBOX_DONE;
    r.outbox_done = &od;
    eddy_err err = append_record(t, p, m, &r);
    if (err == EDDY_OK)
        err = remove_outbox(t, p, seqs, n, removed);
    return err;
}

static int count_row(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    (void)k;
    (void)klen;
    (void)v;
    (void)vlen;
    (*(uint64_t *)ud)++;
    return 0;
}

uint64_t apply_outbox_rows(store_txn *t, uint32_t p)
{
    struct store_key k, end;
    uint64_t n = 0;
    key_init(&k, p, T_OUTBOX);
    key_prefix_end(&k, &end);
    if (store_txn_scan(t, &k, &end, count_row, &n) != EDDY_OK)
        return 0;
    return n;
}

uint64_t apply_outbox_present(store_txn *t, uint32_t p, const Eddy__Store__V1__LogRecord *r)
{
    uint64_t n = 0;
    if (r->kind_case != EDDY__STORE__V1__LOG_RECORD__KIND_OUTBOX_DONE)
        return 0;
    for (size_t i = 0; i < r->outbox_done->n_source_seqs; i++) {
        struct store_key k;
        const char *v;
        size_t vlen;
        bool found;
        key_init(&k, p, T_OUTBOX);
        key_u64(&k, r->outbox_done->source_seqs[i]);
        n += store_txn_get(t, &k, &v, &vlen, &found) == EDDY_OK && found;
    }
    return n;
}

/* ---- delete user --------------------------------------------------------------------- */

static int collect_user_log(void *ud, const unsigned char *k, size_t klen, const char *v,
                            size_t vlen)
{
    struct keyvals *l = ud;
    size_t off = klen - 8;
    uint64_t seq;
    if (klen >= 8 && key_get_u64(k, klen, &off, &seq))
        l->err = kv_push(l, k, klen, (int64_t)seq);
    return l->err != EDDY_OK;
}

static eddy_err delete_user_state(store_txn *t, uint32_t p, const struct part_meta *m,
                                  const char *user_id, bool *model_deleted,
                                  uint64_t *windows_deleted, uint64_t *log_deleted)
{
    struct store_key k, end;
    const char *v;
    size_t vlen;
    bool found;
    struct keyvals l = {0};

    key_init(&k, p, T_USER);
    key_str(&k, user_id);
    eddy_err err = store_txn_get(t, &k, &v, &vlen, &found);
    if (err != EDDY_OK)
        return err;
    *model_deleted = found;
    if (found && (err = store_txn_del(t, &k)) != EDDY_OK)
        return err;

    key_init(&k, p, T_USER_WIN);
    key_lstr(&k, user_id);
    key_prefix_end(&k, &end);
    if ((err = store_txn_del_range(t, &k, &end, windows_deleted)) != EDDY_OK)
        return err;

    static const enum store_table per_user[] = {T_BOUGHT, T_SEEN, T_IMPR};
    for (size_t j = 0; j < sizeof(per_user) / sizeof(per_user[0]); j++) {
        key_init(&k, p, per_user[j]);
        key_lstr(&k, user_id);
        key_prefix_end(&k, &end);
        if ((err = store_txn_del_range(t, &k, &end, NULL)) != EDDY_OK)
            return err;
    }

    key_init(&k, p, T_USER_LOG);
    key_lstr(&k, user_id);
    key_prefix_end(&k, &end);
    err = store_txn_scan(t, &k, &end, collect_user_log, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t i = 0; i < l.n && err == EDDY_OK; i++) {
        uint64_t seq = (uint64_t)l.ts[i];
        err = seq >= m->dedup_next ? erase_log_entry(t, p, seq, user_id)
                                   : delete_log_entry(t, p, seq, user_id);
        /* the stage-2 records of the event not yet forwarded go too (on every copy alike:
         * the forwarder's OUTBOX_DONE for a row already gone removes nothing) */
        if (err == EDDY_OK)
            err = remove_outbox(t, p, &seq, 1, NULL);
    }
    *log_deleted = err == EDDY_OK ? l.n : 0;
    kv_release(&l);
    return err;
}

#define USER_HASH_LEN 32
#define USER_SALT_LEN 16

/* SHA-256(salt, partition as big-endian u16, user id): a DeleteUser record's name for its
 * user. */
static eddy_err user_hash(const unsigned char *salt, size_t saltlen, uint32_t p,
                          const char *user_id, size_t idlen, unsigned char out[USER_HASH_LEN])
{
    unsigned char pb[2] = {(unsigned char)(p >> 8), (unsigned char)p};
    unsigned int n = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(c, salt, saltlen) == 1 && EVP_DigestUpdate(c, pb, 2) == 1 &&
              EVP_DigestUpdate(c, user_id, idlen) == 1 && EVP_DigestFinal_ex(c, out, &n) == 1 &&
              n == USER_HASH_LEN;
    EVP_MD_CTX_free(c);
    return ok ? EDDY_OK : EDDY_ERR_NOMEM;
}

/* Looking for the user of a hash: the id of the first key at or after 'from' in one
 * table, and where the next user's keys start. */
struct user_probe {
    enum store_table t;
    char id[STORE_KEY_MAX + 1];
    size_t idlen;
    bool found;
};

static int probe_first(void *ud, const unsigned char *k, size_t klen, const char *v,
                       size_t vlen)
{
    (void)v;
    (void)vlen;
    struct user_probe *pr = ud;
    size_t off = 3, len = klen - off; /* USER: the id is the rest of the key */
    if (pr->t != T_USER) {            /* the others: u16 length, then the id */
        if (klen < 5)
            return 1;
        len = (size_t)k[3] << 8 | k[4];
        off = 5;
        if (len > klen - off)
            return 1;
    }
    memcpy(pr->id, k + off, len);
    pr->id[len] = '\0';
    pr->idlen = len;
    pr->found = true;
    return 1;
}

/* Find the user whose hash 'du' holds among the ids in partition p's tables keyed by
 * user, one seek per user and table (deletes are rare; a partition's users are at most
 * millions). *found false: none (the user had nothing left here). */
static eddy_err find_hashed_user(store_txn *t, uint32_t p,
                                 const Eddy__Store__V1__DeleteUserRecord *du, char *id,
                                 bool *found)
{
    static const enum store_table tables[] = {T_USER, T_USER_LOG, T_USER_WIN, T_BOUGHT, T_SEEN,
                                              T_IMPR};
    *found = false;
    if (du->user_hash.len != USER_HASH_LEN)
        return EDDY_ERR_CORRUPT;
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        struct store_key from, end, next;
        key_init(&from, p, tables[i]);
        key_prefix_end(&from, &end);
        for (;;) {
            struct user_probe pr = {.t = tables[i]};
            eddy_err err = store_txn_scan(t, &from, &end, probe_first, &pr);
            if (err != EDDY_OK)
                return err;
            if (!pr.found)
                break;
            unsigned char h[USER_HASH_LEN];
            if ((err = user_hash(du->salt.data, du->salt.len, p, pr.id, pr.idlen, h)) !=
                EDDY_OK)
                return err;
            if (memcmp(h, du->user_hash.data, USER_HASH_LEN) == 0 &&
                strlen(pr.id) == pr.idlen) {
                memcpy(id, pr.id, pr.idlen + 1);
                *found = true;
                return EDDY_OK;
            }
            /* on to the keys of the next user */
            key_init(&next, p, tables[i]);
            if (tables[i] == T_USER) {
                key_str(&next, pr.id);
                key_u16(&next, 0); /* the first key after this id: id + NUL byte */
                next.len--;
            } else {
                key_lstr(&next, pr.id);
                key_prefix_end(&next, &from);
                continue;
            }
            from = next;
        }
    }
    return EDDY_OK;
}

/* A DeleteUser record found in the log: the same removal as where it was appended. */
static eddy_err replay_delete_user(store_txn *t, uint32_t p, const struct part_meta *m,
                                   const Eddy__Store__V1__DeleteUserRecord *du)
{
    bool model;
    uint64_t windows, logged;
    if (du->user_id && du->user_id[0]) /* a record of an older build */
        return delete_user_state(t, p, m, du->user_id, &model, &windows, &logged);
    char *id = malloc(STORE_KEY_MAX + 1);
    if (!id)
        return EDDY_ERR_NOMEM;
    bool found;
    eddy_err err = find_hashed_user(t, p, du, id, &found);
    if (err == EDDY_OK && found)
        err = delete_user_state(t, p, m, id, &model, &windows, &logged);
    free(id);
    return err;
}

eddy_err apply_delete_user(store_txn *t, uint32_t p, struct part_meta *m,
                           const char *user_id, bool *model_deleted, uint64_t *windows_deleted,
                           uint64_t *log_deleted)
{
    Eddy__Store__V1__DeleteUserRecord du = EDDY__STORE__V1__DELETE_USER_RECORD__INIT;
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    unsigned char salt[USER_SALT_LEN], hash[USER_HASH_LEN];
    if (RAND_bytes(salt, sizeof(salt)) != 1)
        return EDDY_ERR_IO;
    eddy_err err = user_hash(salt, sizeof(salt), p, user_id, strlen(user_id), hash);
    if (err != EDDY_OK)
        return err;
    du.salt = (ProtobufCBinaryData){sizeof(salt), salt};
    du.user_hash = (ProtobufCBinaryData){sizeof(hash), hash};
    du.ts = m->max_ts;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_DELETE_USER;
    r.delete_user = &du;
    err = append_record(t, p, m, &r);
    if (err == EDDY_OK)
        err = delete_user_state(t, p, m, user_id, model_deleted, windows_deleted, log_deleted);
    return err;
}
