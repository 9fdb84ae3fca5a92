/* CRC-32C against published vectors (RFC 3720 §B.4, the "123456789" check value), against a
 * bit-at-a-time reference on unaligned buffers of every length up to 300, and chaining. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/crc32c.h"

/* The definition, one bit at a time: nothing shared with the code under test. */
static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++)
            c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

static void test_known_vectors(void **state)
{
    unsigned char buf[48];
    assert_int_equal(crc32c("", 0), 0);
    assert_int_equal(crc32c("123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c("a", 1), 0xC1D04330u);
    memset(buf, 0, 32);
    assert_int_equal(crc32c(buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, 32);
    assert_int_equal(crc32c(buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)i;
    assert_int_equal(crc32c(buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)(31 - i);
    assert_int_equal(crc32c(buf, 32), 0x113FDB5Cu);
    /* RFC 3720 B.4: an iSCSI read command PDU */
    static const unsigned char pdu[48] = {
        0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
        0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    assert_int_equal(crc32c(pdu, sizeof(pdu)), 0xD9963A56u);
}

static void test_matches_reference_and_chains(void **state)
{
    unsigned char raw[320];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(raw); i++) {
        x = x * 1103515245u + 12345u;
        raw[i] = (unsigned char)(x >> 16);
    }
    for (size_t align = 0; align < 8; align++) {
        const unsigned char *p = raw + align;
        for (size_t n = 0; n <= 300; n++) {
            uint32_t want = crc_bitwise(p, n);
            assert_int_equal(crc32c(p, n), want);
            size_t cut = n / 3;
            assert_int_equal(crc32c_update(crc32c(p, cut), p + cut, n - cut), want);
        }
    }
    /* one flipped bit changes the result */
    uint32_t before = crc32c(raw, 100);
    raw[50] ^= 0x10;
    assert_int_not_equal(crc32c(raw, 100), before);
}

/* The instruction path (when this CPU has it) and the portable one agree on every length
 * and alignment, and both chain. */
static void test_hardware_and_portable_agree(void **state)
{
    (void)state;
    unsigned char buf[1100];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(buf); i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)(x >> 16);
    }
    for (size_t off = 0; off < 9; off++) {
        for (size_t n = 0; n + off <= sizeof(buf); n += n < 40 ? 1 : 97) {
            uint32_t want = crc32c_update_portable(0, buf + off, n);
            assert_int_equal(crc32c_update(0, buf + off, n), want);
            size_t half = n / 2;
            assert_int_equal(crc32c_update(crc32c_update(0, buf + off, half), buf + off + half,
                                           n - half),
                             want);
        }
    }
    assert_int_equal(crc32c_update_portable(0, "123456789", 9), 0xE3069283u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_vectors),
        cmocka_unit_test(test_matches_reference_and_chains),
        cmocka_unit_test(test_hardware_and_portable_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
