/* Per-partition sets of key hashes, a filter with no false negatives (keyset.h). */
#include "node/state/keyset.h"

#include <stdlib.h>
#include <string.h>

/* DESIGN: one open-addressing array of hashes per set (linear probing, at most half full;
 * 0 marks an empty slot, so a hash of 0 is stored as 1). Sets are numbered densely by
 * their owner (partition x tables kept), so they index a flat array grown to the largest
 * one seen. Nothing is ever removed
 * from a set but the whole set: a delete leaves a hash that costs a read, never a wrong
 * "absent". */

struct kpart {
    uint64_t *slots;
    uint32_t cap, n; /* cap a power of two, or 0 */
    uint8_t state;   /* enum keyset_state */
};

struct keyset {
    struct kpart *parts;
    uint32_t nparts;
    size_t budget, bytes;
    uint64_t builds, overflows;
};

#define KEYSET_MIN_CAP 64u
#define KEYSET_MAX_PARTS (1u << 21) /* 65536 partitions x 32 tables */

keyset *keyset_new(size_t budget)
{
    keyset *ks = calloc(1, sizeof(*ks));
    if (ks)
        ks->budget = budget;
    return ks;
}

static void part_clear(keyset *ks, struct kpart *p, enum keyset_state st)
{
    ks->bytes -= (size_t)p->cap * sizeof(*p->slots);
    free(p->slots);
    p->slots = NULL;
    p->cap = p->n = 0;
    p->state = (uint8_t)st;
}

void keyset_free(keyset *ks)
{
    if (!ks)
        return;
    for (uint32_t i = 0; i < ks->nparts; i++)
        free(ks->parts[i].slots);
    free(ks->parts);
    free(ks);
}

void keyset_set_budget(keyset *ks, size_t budget)
{
    ks->budget = budget;
}

enum keyset_state keyset_state(const keyset *ks, uint32_t part)
{
    return part < ks->nparts ? (enum keyset_state)ks->parts[part].state : KEYSET_NONE;
}

/* The partition's entry, the array grown to hold it; NULL if out of memory. */
static struct kpart *part_of(keyset *ks, uint32_t part)
{
    if (part < ks->nparts)
        return &ks->parts[part];
    if (part >= KEYSET_MAX_PARTS)
        return NULL;
    uint32_t n = ks->nparts ? ks->nparts : 256;
    while (n <= part)
        n *= 2;
    struct kpart *np = realloc(ks->parts, (size_t)n * sizeof(*np));
    if (!np)
        return NULL;
    memset(np + ks->nparts, 0, (size_t)(n - ks->nparts) * sizeof(*np));
    ks->parts = np;
    ks->nparts = n;
    return &ks->parts[part];
}

static void give_up(keyset *ks, struct kpart *p)
{
    part_clear(ks, p, KEYSET_OFF);
    ks->overflows++;
}

/* Whether 'cap' more slots fit in the budget beside what the sets hold. */
static bool fits(const keyset *ks, size_t cap)
{
    size_t add = cap * sizeof(uint64_t);
    return ks->bytes <= ks->budget && add <= ks->budget - ks->bytes;
}

bool keyset_begin(keyset *ks, uint32_t part)
{
    struct kpart *p = part_of(ks, part);
    if (!p)
        return false;
    part_clear(ks, p, KEYSET_NONE);
    ks->builds++;
    if (!fits(ks, KEYSET_MIN_CAP) || !(p->slots = calloc(KEYSET_MIN_CAP, sizeof(*p->slots)))) {
        give_up(ks, p);
        return false;
    }
    p->cap = KEYSET_MIN_CAP;
    ks->bytes += KEYSET_MIN_CAP * sizeof(*p->slots);
    p->state = KEYSET_BUILDING;
    return true;
}

void keyset_finish(keyset *ks, uint32_t part)
{
    if (part < ks->nparts && ks->parts[part].state == KEYSET_BUILDING)
        ks->parts[part].state = KEYSET_READY;
}

static uint32_t slot_of(uint64_t h, uint32_t cap)
{
    return (uint32_t)(h ^ h >> 32) & (cap - 1);
}

/* Insert 'h' (not 0) into 'slots' of capacity 'cap'; false if it was there. */
static bool insert(uint64_t *slots, uint32_t cap, uint64_t h)
{
    for (uint32_t i = slot_of(h, cap);; i = (i + 1) & (cap - 1)) {
        if (slots[i] == h)
            return false;
        if (slots[i] == 0) {
            slots[i] = h;
            return true;
        }
    }
}

/* Double the partition's capacity; false (the set given up) over the budget or memory. */
static bool grow(keyset *ks, struct kpart *p)
{
    uint32_t ncap = p->cap * 2;
    uint64_t *ns = NULL;
    if (ncap > p->cap && fits(ks, (size_t)ncap - p->cap))
        ns = calloc(ncap, sizeof(*ns));
    if (!ns) {
        give_up(ks, p);
        return false;
    }
    for (uint32_t i = 0; i < p->cap; i++) {
        if (p->slots[i])
            insert(ns, ncap, p->slots[i]);
    }
    free(p->slots);
    ks->bytes += (size_t)(ncap - p->cap) * sizeof(*ns);
    p->slots = ns;
    p->cap = ncap;
    return true;
}

void keyset_add(keyset *ks, uint32_t part, uint64_t h)
{
    if (part >= ks->nparts)
        return;
    struct kpart *p = &ks->parts[part];
    if (p->state != KEYSET_READY && p->state != KEYSET_BUILDING)
        return;
    if (h == 0)
        h = 1;
    if ((p->n + 1) * 2 > p->cap && !grow(ks, p))
        return;
    p->n += insert(p->slots, p->cap, h);
}

bool keyset_may_hold(const keyset *ks, uint32_t part, uint64_t h)
{
    if (part >= ks->nparts || ks->parts[part].state != KEYSET_READY)
        return true;
    const struct kpart *p = &ks->parts[part];
    if (h == 0)
        h = 1;
    for (uint32_t i = slot_of(h, p->cap);; i = (i + 1) & (p->cap - 1)) {
        if (p->slots[i] == h)
            return true;
        if (p->slots[i] == 0)
            return false;
    }
}

void keyset_drop(keyset *ks, uint32_t part)
{
    if (part < ks->nparts)
        part_clear(ks, &ks->parts[part], KEYSET_NONE);
}

void keyset_drop_all(keyset *ks)
{
    for (uint32_t i = 0; i < ks->nparts; i++)
        part_clear(ks, &ks->parts[i], KEYSET_NONE);
}

void keyset_stats(const keyset *ks, struct keyset_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->bytes = ks->bytes;
    out->builds = ks->builds;
    out->overflows = ks->overflows;
    for (uint32_t i = 0; i < ks->nparts; i++) {
        if (ks->parts[i].state == KEYSET_READY)
            out->keys += ks->parts[i].n;
    }
}
