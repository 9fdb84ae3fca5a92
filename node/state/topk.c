/* The best-first order of stage-2 lists (see topk.h). */
#include "node/state/topk.h"

#include <string.h>
void topk_offer(struct topk *t, const char *id, size_t idlen, const char *category,
                size_t catlen, double score)
{
    if (idlen > REC_ID_CAP || catlen > REC_ID_CAP || t->cap == 0)
        return;
    size_t pos = t->n;
    while (pos > 0) {
        const struct scored_product *o = &t->items[pos - 1];
        if (o->score > score || (o->score == score && strncmp(o->product_id, id, idlen) <= 0))
            break;
        pos--;
    }
    if (pos >= t->cap)
        return;
    size_t moving = (t->n < t->cap ? t->n : t->cap - 1) - pos;
    memmove(&t->items[pos + 1], &t->items[pos], moving * sizeof(*t->items));
    struct scored_product *it = &t->items[pos];
    memcpy(it->product_id, id, idlen);
    it->product_id[idlen] = '\0';
    memcpy(it->category, category, catlen);
    it->category[catlen] = '\0';
    it->score = score;
    if (t->n < t->cap)
        t->n++;
}
