/* The product (stage-2) half of a cluster-wide rebuild (eddy reprocess --all --from-start
 * in a cluster; docs/operations.md, Reprocessing).
 *
 * DESIGN: a product partition's state is fed by every user partition's log, and in a
 * cluster those logs are on every state node. So each node, in one rebuild:
 *   1. prepare  freezes the stage 2 of the product partitions it owns: from then on their
 *               records, its own included, wait in the OUTBOXes (stage2_side_frozen is
 *               part of the engine's owns() hook, and Forward refuses them), and opens an
 *               empty side store for the rebuilt product state;
 *   2. apply    receives the stage-2 records that every node's rebuild of its user
 *               partitions derives from their logs (RebuildForward), into the side store,
 *               with the new half-lives, each (source partition, seq) once;
 *   3. swap     once every node sent everything (a barrier kept by the ingest node),
 *               replaces the live product tables by the side store's, sets each product
 *               partition's exactly-once mark of every source partition to that source's
 *               cut (the next seq of its rebuild), publishes the half-lives and unfreezes.
 * The records that waited in the OUTBOXes then arrive: those below a cut were replayed
 * into the rebuilt state and are skipped by the marks, the newer ones are applied. So the
 * rebuilt state is the one a fresh ingest of the same events with the new half-lives
 * gives (but for the neighbour lists' tie order, which depends on arrival order anyway).
 * A freeze lapses after 'freeze_ms' without prepare, renew or apply (the ingest node
 * driving the rebuild died): the node then serves and applies as before, and the lapsed
 * rebuild can only be aborted.
 *
 * Threads: any; one mutex serialises the calls (apply writes the side store, swap runs a
 * writer job and waits for it). stage2_side_frozen is lock-free (the engine's hot path). */
#ifndef EDDY_STAGE2_SIDE_H
#define EDDY_STAGE2_SIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/engine.h"
#include "node/state/reprocess.h"

typedef struct stage2_side stage2_side;

struct stage2_side_opts {
    engine *eng;                          /* borrowed */
    const char *work_dir;                 /* the side store's directory (copied) */
    bool (*owns)(void *ud, uint32_t q);   /* the partitions this node owns now */
    void *owns_ud;
    int64_t freeze_ms;                    /* a freeze lapses after this long unrenewed */
};

/* Where a user partition's log was cut: its records below next_seq were replayed. */
struct stage2_cut {
    uint32_t partition;
    uint64_t next_seq;
};

stage2_side *stage2_side_new(const struct stage2_side_opts *o);

/* Drops an open rebuild (unfreezes, removes the side store). Accepts NULL. */
void stage2_side_free(stage2_side *s);

/* Open rebuild 'id' (non-zero) with the half-lives 'set' (0: unchanged): freeze, wait for
 * the writer jobs that may have applied stage-2 records before the freeze, open the side
 * store. A rebuild already open with another id is dropped if its freeze lapsed, else
 * EDDY_ERR_CONFLICT. */
eddy_err stage2_side_prepare(stage2_side *s, uint64_t id, const int64_t set[RP_PARAMS],
                             char *err, size_t errlen);

/* Keep rebuild 'id''s freeze. EDDY_ERR_NOT_FOUND (message in 'err') if 'id' is not open or
 * its freeze lapsed. */
eddy_err stage2_side_renew(stage2_side *s, uint64_t id, char *err, size_t errlen);

/* Apply rebuilt stage-2 batches into the side store (the records of owned partitions). */
eddy_err stage2_side_apply(stage2_side *s, uint64_t id, Eddy__Store__V1__Stage2Batch *const *b,
                           size_t n, char *err, size_t errlen);

/* Make the side store's product state live (see DESIGN). 'cuts' name every user partition
 * (EDDY_ERR_INVALID otherwise). swapped[] (room for every partition) and *nswapped: the
 * product partitions replaced here; *batches: the batches applied into the side store.
 * EDDY_ERR_UNAVAILABLE if the partitions this node owns changed since prepare. The
 * rebuild is closed either way (on failure: dropped and unfrozen). */
eddy_err stage2_side_swap(stage2_side *s, uint64_t id, const struct stage2_cut *cuts,
                          size_t ncuts, uint32_t *swapped, size_t *nswapped, uint64_t *batches,
                          char *err, size_t errlen);

/* Drop rebuild 'id' (0: whichever is open) and unfreeze. */
void stage2_side_abort(stage2_side *s, uint64_t id);

/* Whether stage 2 is frozen by a rebuild now. Any thread, lock-free. Accepts NULL. */
bool stage2_side_frozen(const stage2_side *s);

/* Whether a rebuild is open and not lapsed (moves wait for it). */
bool stage2_side_busy(stage2_side *s);

#endif
