/* The best-first order of stage-2 lists (see topk.h). */
#include "node/state/topk.h"

#include <stdint.h>
#include <string.h>

#include "common/bytes.h"

/* The order of whole ids: the NUL-terminated 'kept' against 'id' of 'idlen' bytes, a
 * prefix first ("p-1" before "p-10"). */
static int id_cmp(const char *kept, const char *id, size_t idlen)
{
    return bytes_cmp(kept, strlen(kept), id, idlen);
}

/* Whether the kept item 'i' stays before a new one of 'id' and 'score' or 'v'. */
static bool stays_before(const struct topk *t, size_t i, const char *id, size_t idlen,
                         double score, const struct decay_sum *v)
{
    const struct scored_product *o = &t->items[i];
    int c = v ? decay_cmp(&t->sums[i], v, t->dp) : (o->score > score) - (o->score < score);
    return c > 0 || (c == 0 && id_cmp(o->product_id, id, idlen) <= 0);
}

static void offer(struct topk *t, const char *id, size_t idlen, const char *category,
                  size_t catlen, double score, const struct decay_sum *v)
{
    if (idlen > REC_ID_CAP || catlen > REC_ID_CAP || t->cap == 0)
        return;
    size_t pos = t->n;
    while (pos > 0 && !stays_before(t, pos - 1, id, idlen, score, v))
        pos--;
    if (pos >= t->cap)
        return;
    size_t moving = (t->n < t->cap ? t->n : t->cap - 1) - pos;
    memmove(&t->items[pos + 1], &t->items[pos], moving * sizeof(*t->items));
    if (v) {
        memmove(&t->sums[pos + 1], &t->sums[pos], moving * sizeof(*t->sums));
        t->sums[pos] = *v;
    }
    struct scored_product *it = &t->items[pos];
    memcpy(it->product_id, id, idlen);
    it->product_id[idlen] = '\0';
    memcpy(it->category, category, catlen);
    it->category[catlen] = '\0';
    it->score = score;
    if (t->n < t->cap)
        t->n++;
}

void topk_offer(struct topk *t, const char *id, size_t idlen, const char *category,
                size_t catlen, double score)
{
    offer(t, id, idlen, category, catlen, score, NULL);
}

void topk_offer_sum(struct topk *t, const char *id, size_t idlen, const char *category,
                    size_t catlen, const struct decay_sum *v)
{
    offer(t, id, idlen, category, catlen, 0.0, v);
}

void topk_score(struct topk *t)
{
    int64_t ref = INT64_MIN;
    for (size_t i = 0; i < t->n; i++)
        if (t->sums[i].bucket > ref)
            ref = t->sums[i].bucket;
    for (size_t i = 0; i < t->n; i++)
        t->items[i].score = decay_value_at_bucket(&t->sums[i], t->dp, ref);
}
