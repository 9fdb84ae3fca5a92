/* String-keyed hash map with a maximum size (see strmap.h). */
#include "common/strmap.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define STRMAP_FIRST 64 /* the first table's slots */

void strmap_init(struct strmap *m, size_t max)
{
    *m = (struct strmap)STRMAP_INIT(max);
}

void strmap_release(struct strmap *m, void (*free_value)(void *))
{
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key)
            continue;
        free(m->slots[i].key);
        if (free_value)
            free_value(m->slots[i].value);
    }
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

/* The slot holding 'key', or the empty slot where it would go. cap > 0. */
static size_t find(const struct strmap *m, const char *key, size_t len, uint64_t h)
{
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    for (;;) {
        const struct strmap_slot *s = &m->slots[i];
        if (!s->key || (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0))
            return i;
        i = (i + 1) & mask;
    }
}

static eddy_err grow(struct strmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : STRMAP_FIRST;
    if (ncap < m->cap || ncap > SIZE_MAX / sizeof(struct strmap_slot))
        return EDDY_ERR_NOMEM;
    struct strmap_slot *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        const struct strmap_slot *s = &m->slots[i];
        if (!s->key)
            continue;
        size_t j = (size_t)s->hash & (ncap - 1);
        while (ns[j].key)
            j = (j + 1) & (ncap - 1);
        ns[j] = *s;
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return EDDY_OK;
}

void *strmap_get(const struct strmap *m, const char *key, size_t len)
{
    if (m->n == 0)
        return NULL;
    const struct strmap_slot *s = &m->slots[find(m, key, len, XXH3_64bits(key, len))];
    return s->key ? s->value : NULL;
}

void **strmap_slot(struct strmap *m, const char *key, size_t len, bool *added, eddy_err *err)
{
    uint64_t h = XXH3_64bits(key, len);
    *added = false;
    *err = EDDY_OK;
    if (m->cap) {
        struct strmap_slot *s = &m->slots[find(m, key, len, h)];
        if (s->key)
            return &s->value;
    }
    if (m->n >= m->max) {
        *err = EDDY_ERR_FULL;
        return NULL;
    }
    if ((m->n + 1) * 2 > m->cap && (*err = grow(m)) != EDDY_OK)
        return NULL;
    char *copy = malloc(len + 1);
    if (!copy) {
        *err = EDDY_ERR_NOMEM;
        return NULL;
    }
    memcpy(copy, key, len);
    copy[len] = '\0';
    struct strmap_slot *s = &m->slots[find(m, key, len, h)];
    *s = (struct strmap_slot){copy, len, h, NULL};
    m->n++;
    *added = true;
    return &s->value;
}

eddy_err strmap_put(struct strmap *m, const char *key, size_t len, void *value)
{
    bool added;
    eddy_err err;
    void **slot = strmap_slot(m, key, len, &added, &err);
    if (slot)
        *slot = value;
    return err;
}

void *strmap_del(struct strmap *m, const char *key, size_t len)
{
    if (m->n == 0)
        return NULL;
    size_t mask = m->cap - 1, i = find(m, key, len, XXH3_64bits(key, len));
    if (!m->slots[i].key)
        return NULL;
    void *value = m->slots[i].value;
    free(m->slots[i].key);
    m->slots[i].key = NULL;
    m->n--;
    /* Backward-shift: move up each following entry that the hole would hide from its
     * home slot, so lookups never need tombstones. */
    for (size_t j = (i + 1) & mask; m->slots[j].key; j = (j + 1) & mask) {
        size_t home = (size_t)m->slots[j].hash & mask;
        /* the entry at j may fill the hole at i unless its home lies in (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        m->slots[i] = m->slots[j];
        m->slots[j].key = NULL;
        i = j;
    }
    return value;
}

bool strmap_next(const struct strmap *m, size_t *pos, const char **key, size_t *len,
                 void **value)
{
    for (size_t i = *pos; i < m->cap; i++) {
        if (!m->slots[i].key)
            continue;
        *key = m->slots[i].key;
        *len = m->slots[i].len;
        *value = m->slots[i].value;
        *pos = i + 1;
        return true;
    }
    *pos = m->cap;
    return false;
}
