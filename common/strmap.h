/* A hash map from strings (any bytes, with a length) to the caller's pointers, with a
 * maximum number of entries: open addressing, linear probing, kept at most half full. */
#ifndef EDDY_STRMAP_H
#define EDDY_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct strmap_slot {
    char *key;      /* the map's copy, NUL-terminated; NULL = empty slot */
    size_t len;
    uint64_t hash;
    void *value;    /* the caller's */
};

/* Embedded in its owner; one thread at a time. The map owns copies of its keys; the values
 * stay the caller's (strmap_release can free them). */
struct strmap {
    struct strmap_slot *slots; /* [cap], cap a power of two (0 before the first add) */
    size_t cap, n;
    size_t max;                /* entries at most */
};

#define STRMAP_INIT(max_entries) {NULL, 0, 0, (max_entries)}

void strmap_init(struct strmap *m, size_t max);
/* Free the keys and the table, and each value with 'free_value' if not NULL. The map is
 * empty afterwards (same maximum) and usable again. */
void strmap_release(struct strmap *m, void (*free_value)(void *));

/* The value of 'key' ('len' bytes); NULL if absent. */
void *strmap_get(const struct strmap *m, const char *key, size_t len);

/* The value slot of 'key', added with a NULL value if absent (*added says which): the
 * caller stores through it. Borrowed until the next add or delete. NULL with *err set:
 * EDDY_ERR_FULL at the maximum, EDDY_ERR_NOMEM. */
void **strmap_slot(struct strmap *m, const char *key, size_t len, bool *added, eddy_err *err);

/* Set the value of 'key', replacing any; the errors of strmap_slot. */
eddy_err strmap_put(struct strmap *m, const char *key, size_t len, void *value);

/* Remove 'key'; returns its value (NULL if absent), which stays the caller's. */
void *strmap_del(struct strmap *m, const char *key, size_t len);

/* Walk the entries in no particular order: start with *pos = 0; false at the end. No adds
 * or deletes during the walk. */
bool strmap_next(const struct strmap *m, size_t *pos, const char **key, size_t *len,
                 void **value);

#endif
