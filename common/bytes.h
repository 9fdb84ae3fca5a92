/* Byte strings in LevelDB's bytewise order. */
#ifndef EDDY_BYTES_H
#define EDDY_BYTES_H

#include <stddef.h>
#include <string.h>

/* memcmp over the shorter length, then the shorter first (<0, 0, >0): the order of
 * LevelDB's keys, and of ids wherever a tie must break the same way on every node. */
static inline int bytes_cmp(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

#endif
