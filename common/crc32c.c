/* CRC-32C by table lookup, eight bytes per step ("slicing-by-8"): table[0] is the classic
 * byte-at-a-time table of the reflected polynomial, and table[k][b] is the CRC of byte b
 * followed by k zero bytes, so eight lookups fold eight input bytes at once. */
#include "common/crc32c.h"

#include <pthread.h>

#define CRC32C_POLY 0x82F63B78u /* 0x1EDC6F41 bit-reversed */

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_build(void)
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
}

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n)
{
    pthread_once(&table_once, table_build);
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
