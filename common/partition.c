/* Key hashing and the hash-range partitioning of docs/design.md §2. */
#include "common/partition.h"

#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

uint64_t partition_hash(const char *ns, const char *key, size_t len)
{
    /* XXH64 of the concatenation is the streaming state's answer, and one call over a copy
     * costs less than reset, two updates and digest (each event's products are hashed) */
    char joined[256];
    size_t nlen = strlen(ns);
    if (nlen + len <= sizeof(joined)) {
        memcpy(joined, ns, nlen);
        memcpy(joined + nlen, key, len);
        return XXH64(joined, nlen + len, 0);
    }
    XXH64_state_t st;
    XXH64_reset(&st, 0);
    XXH64_update(&st, ns, strlen(ns));
    XXH64_update(&st, key, len);
    return XXH64_digest(&st);
}

uint32_t partition_of_hash(uint64_t h, uint32_t nparts)
{
    return (uint32_t)(((unsigned __int128)h * nparts) >> 64);
}

uint32_t partition_of_user(const char *user_id, uint32_t nparts)
{
    return partition_of_hash(partition_hash("u:", user_id, strlen(user_id)), nparts);
}

uint32_t partition_of_product(const char *product_id, uint32_t nparts)
{
    return partition_of_hash(partition_hash("i:", product_id, strlen(product_id)), nparts);
}
