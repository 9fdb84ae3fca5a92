/* Stage 2: product-keyed state derived from user events (docs/design.md §3.4-5): per product a
 * decayed popularity, category, brand and price, co-occurrence pairs ("users who
 * interacted with X then interacted with Y": one decayed sum per pair, the strongest picked
 * when read), per-window counts, and an index of products by category for "popular now in
 * <category>". The state is the same for any arrival order of the records.
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
    int max_neighbours;             /* neighbours read per product (50); every pair is kept */
    /* Memory for the sets of pairs that exist, per product partition, which spare a new
     * pair its LevelDB read (store_txn_index_keys; --pair-set-size); 0: none, every new
     * pair is read first. */
    size_t pair_set_bytes;
};

#define PRODUCT_PAIR_SET_DEFAULT ((size_t)64 << 20)

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
 * use it at commit), into 'o' (struct pbenc_out: the caller's scratch, or malloc'd). False
 * if 'ps' carries unknown fields (use protobuf-c) or on allocation failure. */
struct pbenc_out;
bool product_state_pack(const Eddy__Store__V1__ProductState *ps, struct pbenc_out *o);

/* product_state_pack for a COOC row. */
bool product_pair_pack(const Eddy__Store__V1__CoOccurrencePair *pr, struct pbenc_out *o);

/* The PRODUCT key of a product. */
void product_key(struct store_key *k, uint32_t partitions, const char *product_id);

/* Read a product's state from committed storage; *out is NULL if unknown. Free with
 * protobuf_c_message_free_unpacked. */
eddy_err product_get(store *s, uint32_t partitions, const char *product_id,
                     Eddy__Store__V1__ProductState **out);

/* The key whose store_key_writes counts the writes of every COOC row of the product (see
 * store_write_slot): read it before product_neighbours to know later whether they changed. */
void product_pairs_key(struct store_key *k, uint32_t partitions, const char *product_id);

/* A co-occurrence neighbour as stored. */
struct product_neighbour {
    char *id;                /* malloc'd, with 'category' in the same block */
    char *category;
    int64_t bucket, cur, prev; /* the pair's Decayed */
    double score;            /* its value at the start of the newest bucket among the
                              * product's rows (decay_value_at_bucket): a reference of the
                              * product's own, whatever time or node reads it */
};

/* The 'max' strongest neighbours of 'product_id' in committed storage, best first (ties:
 * the smaller id): every COOC row of the product, ranked by its decayed score, whose order
 * is the same at every event time, and scored at the product's own reference ('score').
 * Rows whose id or category is longer than 'max_str' are left out. *out is malloc'd (NULL
 * if none); free with product_neighbours_free(*out, *n). Any thread. */
eddy_err product_neighbours(store *s, const struct product_params *pp, const char *product_id,
                            size_t max, size_t max_str, struct product_neighbour **out,
                            size_t *n);
void product_neighbours_free(struct product_neighbour *l, size_t n);

/* Convert product partition q from state format 2: each product's neighbour list
 * (ProductState.neighbours, the strongest by arrival) becomes COOC rows and leaves the
 * state; *converted counts the products. Products without a list (or whose state does not
 * decode) are untouched, so it may run again. Writer thread, into 't'. */
eddy_err product_convert(store_txn *t, uint32_t q, size_t *converted);

#endif
