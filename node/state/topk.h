/* A bounded best-first list of scored products, ordered by score (descending) then id
 * (ascending): the order of every stage-2 list (popularity lists and neighbours), so a
 * cached list and a fresh read rank ties the same way. */
#ifndef EDDY_TOPK_H
#define EDDY_TOPK_H

#include <stddef.h>

#include "node/state/recommend.h"

/* 'items' (room for 'cap') is borrowed; 'n' of them are filled, best first. */
struct topk {
    struct scored_product *items;
    size_t n, cap;
};

/* Offer a product ('id' and 'category' of the given lengths, not NUL-terminated): kept if
 * it ranks among the best 'cap'. Strings longer than REC_ID_CAP are left out. */
void topk_offer(struct topk *t, const char *id, size_t idlen, const char *category,
                size_t catlen, double score);

#endif
