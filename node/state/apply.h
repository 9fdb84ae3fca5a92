/* The deterministic apply (docs/design.md §3.3, §4): one log record of a user partition in,
 * state changes out, all into the caller's store_txn (one WriteBatch per group of
 * applies). No wall clock and no randomness: a partition's state is a pure function of
 * its log, which is what replay, moves and the determinism tests rely on.
 *
 * Applying an event: dedup by event_id -> append to the log (next seq) -> late or not
 * under the partition's watermark -> user windows and partition window (unless late) ->
 * user model -> stage-2 records (product popularity and windows, co-occurrence pairs)
 * handed to 'emit' -> advance the watermark -> event-time TTL sweeps when the watermark
 * crosses a sweep boundary.
 *
 * Threads: only the engine's thread that holds its txn calls these (the writer, or the
 * apply thread behind it: engine.c's txn token). */
#ifndef EDDY_APPLY_H
#define EDDY_APPLY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/store.pb-c.h"
#include "node/state/model.h"
#include "node/state/product.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"
#include "node/state/window.h"

struct apply_params {
    uint32_t partitions;
    struct window_params window;
    struct model_params model;
    int64_t cooccurrence_span_ms;  /* X then Y count as a pair within this time (30 min) */
    int cooccurrence_items;        /* recent items paired with a new one (10) */
    int64_t dedup_window_ms;       /* event ids remembered this long (event time, 24 h) */
    int64_t state_ttl_ms;          /* user model expires after this inactivity (30 d) */
    int64_t window_retention_ms;   /* windows kept this long after they end (7 d) */
    int64_t log_retention_ms;      /* log entries kept this long (7 d) */
    int64_t sweep_interval_ms;     /* TTL sweeps when the watermark crosses a multiple (1 h) */
    /* [partitions] or NULL. The log sweep never deletes a record whose seq is >= the
     * partition's floor: the seq of its oldest retained checkpoint (UINT64_MAX: none), set
     * by the checkpoint scheduler, so a checkpoint plus the log after it always rebuild the
     * partition. Read with relaxed loads: it only decides how much LOG (with its LATE and
     * USER_LOG entries) and META.log_first_seq lag behind, never the derived state. */
    const _Atomic uint64_t *log_floor;
    /* Stage-2 parameters for the STAGE2 log records (borrowed). NULL: a rebuild, whose
     * stage 2 comes from the replayed events: STAGE2 and OUTBOX_DONE records apply
     * nothing (a rebuild's OUTBOX holds its own batches for delivery). */
    const struct product_params *product;
    /* Memory for the writer's sets of the USER, PRODUCT and IMPR keys that exist, per
     * partition (store_txn_index_keys; --key-set-size): a user, a product or a user
     * without impressions seen for the first time is then no LevelDB read. 0: none. */
    size_t key_set_bytes;
};

#define APPLY_KEY_SET_DEFAULT ((size_t)32 << 20)

/* In-memory copy of a partition's META record; the writer owns it. */
struct part_meta {
    uint64_t next_seq;
    int64_t max_ts;
    int64_t watermark;
    uint64_t late_events;
    uint64_t events;
    uint64_t duplicates;
    int64_t swept_until;
    uint64_t log_first_seq;
    uint64_t epoch;      /* highest ownership epoch seen (cluster fencing) */
    uint64_t dedup_next; /* first log seq whose event id the dedup sweep has not forgotten */
    uint32_t format;     /* PartitionMeta.format as stored (0: no META yet, or format 0) */
    bool stored;         /* read from a META row (false: the partition has none yet) */
    uint64_t acked_duplicates, acked_epoch; /* what the PART_ACK row holds */
    bool dirty;          /* changed since last saved into a txn */
};

/* Receives the stage-2 records of one applied event. */
typedef eddy_err apply_emit_fn(void *ud, const Eddy__Store__V1__Stage2Batch *b);

enum apply_outcome { APPLY_ACCEPTED, APPLY_DUPLICATE, APPLY_LATE };

/* The PartitionMeta.format this binary writes (and the newest it reads). */
uint32_t apply_meta_format(void);

/* Load partition 'p's meta from the store (zero/none values if absent). Older formats
 * are converted (saved with the next group); a newer one fails with EDDY_ERR_TOO_LARGE. */
eddy_err apply_meta_load(store *s, uint32_t p, struct part_meta *m);

/* Convert user partition p's models from state format 4 (model_convert: no event ids, the
 * recent lists in (time, id) order); *converted counts them. Models already converted (or
 * that do not decode) are untouched, so it may run again. Writer thread, into 't'. */
eddy_err apply_convert_models(store_txn *t, uint32_t p, size_t *converted);

/* Convert partition p's log and dedup rows from state format 5 or older to 6: each event
 * record the compact encoding can hold is rewritten in it (logrec.h), and each DEDUP_ID
 * row becomes a DEDUP row keyed by the id's hash (apply_dedup_key). *records counts the
 * rows rewritten. What is converted already is left as it is, so it may run again.
 * Writer thread, into 't' (a partition's converted rows are pending at once). */
eddy_err apply_convert_log(store_txn *t, uint32_t p, size_t *records);

/* The DEDUP key of an event id (format 6): partition p's table DEDUP, then the id's
 * compact form (logrec_pack_str: a UUID in 17 bytes, "order-123456" as its prefix and a
 * varint; exact, so that ids numbered in sequence share their prefix in LevelDB's
 * blocks), or for an id of 16 bytes or more with no shorter form, byte 0x05 and XXH3-128
 * of its 'len' bytes: two such ids remembered at once share a key with probability
 * n^2 / 2^129 for n of them (10^-21 for a billion), far below a disk's rate of undetected
 * errors (docs/design.md §4, "Layout 6"). */
void apply_dedup_key(struct store_key *k, uint32_t p, const char *event_id, size_t len);

/* Write the meta into the txn if dirty, and the PART_ACK row (the duplicates and the
 * epoch, which no log record rebuilds: it is written with the log, not behind) if they
 * changed. */
eddy_err apply_meta_save(store_txn *t, uint32_t p, struct part_meta *m);

/* Append 'ev' to partition 'p''s log and apply it. 'ev' must be valid (validate.h) and
 * belong to partition p. */
eddy_err apply_event(store_txn *t, const struct apply_params *ap, uint32_t p,
                     struct part_meta *m, const Eddy__V1__Event *ev, apply_emit_fn *emit,
                     void *emit_ud, enum apply_outcome *outcome);

/* Log first, apply behind (engine.h): an event's log record is appended, and its
 * acknowledgement answered, before the event is applied. What the answer reports must be
 * what the apply will decide, so the append keeps, per partition, what the apply of the
 * events appended ahead of it will have made of the partition: its log end, its
 * watermark (late or not), and when it sweeps (the dedup sweep forgets ids: an append
 * after a sweep point waits until the records before it are applied). Writer-owned, like
 * part_meta; valid while the partition has records appended and not applied. */
struct apply_ahead {
    uint64_t end;         /* the next record's seq */
    int64_t watermark, max_ts, swept_until;
};

/* Start 'a' from the applied state 'm' (nothing ahead of it). */
void apply_ahead_init(struct apply_ahead *a, const struct part_meta *m);

/* The event of a record apply_append_event appended, as the record decodes: what its
 * apply (apply_appended) and every replay of the record apply. Owned by the appender;
 * release with apply_logged_release (which accepts an empty one). */
struct apply_logged {
    Eddy__V1__Event *ev;  /* NULL: none */
    bool unpacked;        /* freed as unpacked messages are (pb_copy), else one block */
};
void apply_logged_release(struct apply_logged *l);

/* The append half of apply_event: 'ev' (valid, of partition p) is checked against the
 * remembered event ids (a duplicate is counted in 'm' and *duplicate set, nothing
 * written); otherwise its log record is written at seq a->end with its DEDUP row, and
 * *logged receives its event as the record decodes (call apply_ahead_event, then apply it
 * with apply_appended at that seq). Nothing in *logged for a duplicate. */
eddy_err apply_append_event(store_txn *t, uint32_t p, struct part_meta *m,
                            struct apply_ahead *a, const Eddy__V1__Event *ev,
                            struct apply_logged *logged, bool *duplicate);

/* Account an appended event of time 'ts' in 'a': *late is what its apply will decide.
 * True when its apply will sweep the partition (the dedup sweep included): apply every
 * appended record before appending the next event of the partition. */
bool apply_ahead_event(const struct apply_params *ap, struct apply_ahead *a, int64_t ts,
                       bool *late);

/* Append an idle-watermark record moving the watermark to 'wm' and apply it. */
eddy_err apply_idle(store_txn *t, const struct apply_params *ap, uint32_t p,
                    struct part_meta *m, int64_t wm);

/* Apply the event of a record apply_append_event appended at 'seq' (apply_replay of its
 * record, less the DEDUP row the append wrote), in log order, with nothing written to
 * its DEDUP key in between. */
eddy_err apply_appended(store_txn *t, const struct apply_params *ap, uint32_t p,
                        struct part_meta *m, uint64_t seq, const Eddy__V1__Event *ev,
                        apply_emit_fn *emit, void *emit_ud, enum apply_outcome *outcome);

/* Apply one log record during replay (any kind), without appending it again. 'seq' is its
 * log seq. */
eddy_err apply_replay(store_txn *t, const struct apply_params *ap, uint32_t p,
                      struct part_meta *m, uint64_t seq, const Eddy__Store__V1__LogRecord *r,
                      apply_emit_fn *emit, void *emit_ud, enum apply_outcome *outcome);

/* Append a DeleteUser record for 'user_id' to partition 'p''s log and apply it: the
 * user's model, windows, purchases and earlier log entries go (the ones whose event ids
 * are still remembered for dedup keep only the id and time). A follower's replay of the
 * record removes the same. */
eddy_err apply_delete_user(store_txn *t, uint32_t p, struct part_meta *m,
                           const char *user_id, bool *model_deleted, uint64_t *windows_deleted,
                           uint64_t *log_deleted);

/* Append an IMPRESSION record (a Recommend answer in an experiment, attribution.h) to
 * partition 'p''s log and apply it. */
eddy_err apply_impression(store_txn *t, uint32_t p, struct part_meta *m,
                          const Eddy__Store__V1__Impression *imp);

/* Append a STAGE2 record holding 'b' to product partition 'q''s log and apply it, unless
 * q's marks say 'b' was applied already (then nothing is written; *logged false). Every
 * record of 'b' must fall in partition q (ap->product must be set). */
eddy_err apply_stage2(store_txn *t, const struct apply_params *ap, uint32_t q,
                      struct part_meta *m, const Eddy__Store__V1__Stage2Batch *b, bool *logged);

/* Append an OUTBOX_DONE record to partition 'p''s log and apply it: the OUTBOX rows of
 * the source seqs 'seqs' (delivered by the forwarder) go. *removed (may be NULL): rows
 * that were there. */
eddy_err apply_outbox_done(store_txn *t, uint32_t p, struct part_meta *m, const uint64_t *seqs,
                           size_t n, uint64_t *removed);

/* The OUTBOX rows of partition p as 't' sees them (a DeleteUser drops the user's: the
 * engine counts them before and after). */
uint64_t apply_outbox_rows(store_txn *t, uint32_t p);

/* OUTBOX rows an OUTBOX_DONE record 'r' removes when applied now (what the engine
 * subtracts from its OUTBOX depth on a replay). */
uint64_t apply_outbox_present(store_txn *t, uint32_t p, const Eddy__Store__V1__LogRecord *r);

#endif
