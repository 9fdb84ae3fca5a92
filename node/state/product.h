/* Stage 2: product-keyed state derived from user events (docs/design.md §3.4-5): per product a
 * decayed popularity, category, brand and price, co-occurrence neighbours ("users who
 * interacted with X then interacted with Y"), per-window counts, and an index of products
 * by category for "popular now in <category>".
 *
 * Stage-2 records arrive as Stage2Batch messages tagged with (source partition, source
 * seq). product_apply keeps a mark per (product partition, source partition), all of a
 * product partition's in one S2_HW row, and skips records it has already applied, so a batch applied twice (a retry, a replay)
 * changes nothing. In --dev the batches are applied in the same write batch as the event;
 * in the cluster they travel in Forward calls to the product partition's owner. */
#ifndef EDDY_PRODUCT_H
#define EDDY_PRODUCT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "eddy/v1/store.pb-c.h"
#include "node/state/decay.h"
#include "node/state/store.h"
#include "node/state/store_txn.h"

struct product_params {
    uint32_t partitions;
    struct decay_params popularity; /* half-life of product popularity */
    struct decay_params neighbours; /* half-life of co-occurrence scores */
    int max_neighbours;             /* neighbours kept per product (50) */
};

/* The records of a batch, updates then pairs: how many, and the product whose partition
 * record 'i' belongs to (an update's product, a pair's from_product). */
static inline size_t product_records(const Eddy__Store__V1__Stage2Batch *b)
{
    return b->n_updates + b->n_pairs;
}

static inline const char *product_record_key(const Eddy__Store__V1__Stage2Batch *b, size_t i)
{
    return i < b->n_updates ? b->updates[i]->product_id : b->pairs[i - b->n_updates]->from_product;
}

/* Apply the records of 'b' that fall in partitions accepted by 'owns' (NULL = all). */
eddy_err product_apply(store_txn *t, const struct product_params *p,
                       const Eddy__Store__V1__Stage2Batch *b,
                       bool (*owns)(void *ud, uint32_t partition), void *owns_ud);

/* Whether the batch (source partition 'src', seq 'seq') is new for product partition q
 * (its marks do not hold it yet); nothing is recorded. */
eddy_err product_fresh(store_txn *t, uint32_t q, uint32_t src, uint64_t seq, bool *fresh);

/* Set product partition q's mark of source partition 'src': every batch of 'src' with a
 * seq below 'next_seq' counts as applied. */
eddy_err product_mark_set(store_txn *t, uint32_t q, uint32_t src, uint64_t next_seq);

/* Encode 'ps' exactly as protobuf_c_message_pack does, faster (product_apply has the txn
 * use it at commit). *buf is malloc'd (caller frees). False if 'ps' carries unknown fields
 * (use protobuf-c) or on allocation failure. */
bool product_state_pack(const Eddy__Store__V1__ProductState *ps, uint8_t **buf, size_t *len);

/* The PRODUCT key of a product. */
void product_key(struct store_key *k, uint32_t partitions, const char *product_id);

/* Read a product's state from committed storage; *out is NULL if unknown. Free with
 * protobuf_c_message_free_unpacked. */
eddy_err product_get(store *s, uint32_t partitions, const char *product_id,
                     Eddy__Store__V1__ProductState **out);

#endif
