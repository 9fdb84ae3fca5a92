/* CRC-32C: the CPU's crc32 instruction where there is one (x86-64 with SSE4.2: eight bytes
 * per instruction), else table lookup eight bytes per step ("slicing-by-8": table[0] is the
 * classic byte-at-a-time table of the reflected polynomial, and table[k][b] is the CRC of
 * byte b followed by k zero bytes, so eight lookups fold eight input bytes at once). The
 * choice and the tables are made once, before main (a constructor), so a call costs no
 * more than its bytes: checkpoints call it for every key and value. */
#include "common/crc32c.h"

#include <string.h>

#define CRC32C_POLY 0x82F63B78u /* 0x1EDC6F41 bit-reversed */

static uint32_t table[8][256];

uint32_t crc32c_update_portable(uint32_t crc, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    uint32_t c = ~crc;
    /* Bytes are combined explicitly (not loaded as a word), so the result is the same on
     * any endianness and alignment. */
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        c = table[7][lo & 0xffu] ^ table[6][(lo >> 8) & 0xffu] ^ table[5][(lo >> 16) & 0xffu] ^
            table[4][lo >> 24] ^ table[3][p[4]] ^ table[2][p[5]] ^ table[1][p[6]] ^
            table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xffu];
    return ~c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_HW 1
/* The SSE4.2 crc32 instruction computes exactly this CRC (reflected Castagnoli). */
__attribute__((target("sse4.2"))) static uint32_t crc32c_update_hw(uint32_t crc, const void *buf,
                                                                   size_t n)
{
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* x86 is little-endian; memcpy: any alignment */
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

static uint32_t (*impl)(uint32_t, const void *, size_t) = crc32c_update_portable;

__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int i = 0; i < 8; i++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        for (int k = 1; k < 8; k++)
            table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xffu];
    }
#ifdef HAVE_HW
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        impl = crc32c_update_hw;
#endif
}

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n)
{
    return impl(crc, buf, n);
}
