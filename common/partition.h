/* Keys to partitions: p = (xxh64(namespace || key) * P) >> 64, so partition p is the
 * contiguous hash range [p * 2^64 / P, (p + 1) * 2^64 / P). Users and products share the
 * partition space under the namespaces "u:" and "i:". */
#ifndef EDDY_PARTITION_H
#define EDDY_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#define PARTITION_DEFAULT_COUNT 256
#define PARTITION_MAX_COUNT 65535

/* The 64-bit hash of 'ns' followed by 'key' ('len' bytes). Stable across versions. */
uint64_t partition_hash(const char *ns, const char *key, size_t len);

/* The partition (0 .. nparts-1) of hash 'h'. */
uint32_t partition_of_hash(uint64_t h, uint32_t nparts);

/* The partition of user 'user_id' / product 'product_id' (NUL-terminated). */
uint32_t partition_of_user(const char *user_id, uint32_t nparts);
uint32_t partition_of_product(const char *product_id, uint32_t nparts);

#endif
