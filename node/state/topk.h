/* A bounded best-first list of scored products, ordered by score (descending) then id
 * (ascending): the order of every stage-2 list (popularity lists and neighbours), so a
 * cached list and a fresh read rank ties the same way. A list of decayed sums (popularity)
 * is ranked by the sums themselves, exactly, and scored once complete at a reference of
 * its own (topk_score), so its entries and scores do not depend on when or where it is
 * read. */
#ifndef EDDY_TOPK_H
#define EDDY_TOPK_H

#include <stddef.h>

#include "node/state/decay.h"
#include "node/state/recommend.h"

/* 'items' (room for 'cap') is borrowed; 'n' of them are filled, best first. A list offered
 * decayed sums (topk_offer_sum) also borrows 'sums' (room for 'cap': sums[i] is items[i]'s)
 * and 'dp' (their decay); others leave both NULL. */
struct topk {
    struct scored_product *items;
    size_t n, cap;
    struct decay_sum *sums;
    const struct decay_params *dp;
};

/* Offer a product ('id' and 'category' of the given lengths, not NUL-terminated): kept if
 * it ranks among the best 'cap'. Strings longer than REC_ID_CAP are left out. */
void topk_offer(struct topk *t, const char *id, size_t idlen, const char *category,
                size_t catlen, double score);

/* topk_offer for a list of decayed sums: ranked by decay_cmp (ties: the smaller id), the
 * item's score left for topk_score. */
void topk_offer_sum(struct topk *t, const char *id, size_t idlen, const char *category,
                    size_t catlen, const struct decay_sum *v);

/* Score every item of a list of decayed sums at the start of the newest bucket among its
 * items (decay_value_at_bucket): the list's own reference, so the scores are a function of
 * its entries alone, and their ratios (all Recommend uses) those at any time. */
void topk_score(struct topk *t);

#endif
