/* Per-window event counts by type (the Counts value of USER_WIN, PART_WIN and PROD_WIN):
 * one place that maps an event type to its counter. */
#ifndef EDDY_COUNTS_H
#define EDDY_COUNTS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/store.pb-c.h"
#include "node/state/store_key.h"
#include "node/state/store_txn.h"

/* The counter of 'type' in 'c', or NULL for an unspecified / unknown type. */
uint64_t *counts_slot(Eddy__Store__V1__Counts *c, Eddy__V1__EventType type);

/* The count of 'type', or the total of every type for EVENT_TYPE_UNSPECIFIED. */
uint64_t counts_get(const Eddy__Store__V1__Counts *c, Eddy__V1__EventType type);

/* a += b (counters only). */
void counts_add(Eddy__Store__V1__Counts *a, const Eddy__Store__V1__Counts *b);

/* Read the Counts at 'key' through the txn (zero if absent), add one event of 'type', set
 * the category if 'category' is non-empty, and write it back. 'absent': the caller knows
 * the row does not exist (in the txn or the store), so it is created without a read — a
 * read of a new window's row goes down to LevelDB to miss there. */
eddy_err counts_bump(store_txn *t, const struct store_key *key, Eddy__V1__EventType type,
                     const char *category, bool absent);

/* The public TypeCounts of 'c' (with its total). Caller owns the result; NULL on OOM. */
Eddy__V1__TypeCounts *counts_to_public(const Eddy__Store__V1__Counts *c);

#endif
