/* CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), the checksum of
 * checkpoint files. The CPU's crc32 instruction where there is one (x86-64 SSE4.2), else
 * portable table-driven code (slicing-by-8); both give the same results.
 *
 * The running value is the finished CRC of the bytes seen so far, like zlib's crc32():
 *   crc32c_update(crc32c_update(0, a, na), b, nb) == crc32c_update(0, a || b, na + nb)
 * Thread-safe: the tables and the choice are made once, before main. */
#ifndef EDDY_CRC32C_H
#define EDDY_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC-32C of the bytes before 'buf' (whose CRC is 'crc'; 0 for none) followed by the
 * 'n' bytes at 'buf'. */
uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n);

/* crc32c_update without CPU-specific instructions (what every CPU gets without them;
 * exposed so the tests compare both). */
uint32_t crc32c_update_portable(uint32_t crc, const void *buf, size_t n);

/* The CRC-32C of 'n' bytes at 'buf'. crc32c("123456789", 9) == 0xE3069283. */
static inline uint32_t crc32c(const void *buf, size_t n)
{
    return crc32c_update(0, buf, n);
}

#endif
