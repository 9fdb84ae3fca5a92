/* The checkpoint key: the key file's two accepted forms and nothing else, a stable id that
 * is SHA-256's, and AES-256-GCM sealing that refuses any changed byte, nonce, tag,
 * associated data or key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "node/state/ckptkey.h"

#include "engine_fixture.h"

static void write_file(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

static void test_parse_forms(void **state)
{
    (void)state;
    struct ckptkey k;
    char why[128], id[CKPTKEY_ID_TEXT];
    unsigned char raw[CKPTKEY_LEN];
    for (int i = 0; i < CKPTKEY_LEN; i++)
        raw[i] = (unsigned char)i;

    /* 32 raw bytes; the id is the start of SHA-256 of the key (00 01 .. 1f) */
    assert_int_equal(ckptkey_parse(raw, sizeof(raw), &k, why, sizeof(why)), EDDY_OK);
    assert_memory_equal(k.key, raw, sizeof(raw));
    ckptkey_id_text(k.id, id);
    assert_string_equal(id, "630dcd2966c43366");

    /* the same key as 64 hex digits, in either case, with or without a final newline */
    const char *hex = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";
    char buf[80];
    for (int v = 0; v < 3; v++) {
        snprintf(buf, sizeof(buf), "%s%s", hex, v == 0 ? "" : v == 1 ? "\n" : "\r\n");
        memset(&k, 0, sizeof(k));
        assert_int_equal(ckptkey_parse((const unsigned char *)buf, strlen(buf), &k, why,
                                       sizeof(why)),
                         EDDY_OK);
        assert_memory_equal(k.key, raw, sizeof(raw));
        ckptkey_id_text(k.id, id);
        assert_string_equal(id, "630dcd2966c43366");
    }

    /* 32 zero bytes: the well-known SHA-256 of them */
    memset(raw, 0, sizeof(raw));
    assert_int_equal(ckptkey_parse(raw, sizeof(raw), &k, why, sizeof(why)), EDDY_OK);
    ckptkey_id_text(k.id, id);
    assert_string_equal(id, "66687aadf862bd77");

    /* anything else: too short, too long, a raw key with a newline, a non-hex digit */
    static const size_t bad_lens[] = {0, 1, 31, 33, 63, 65, 66};
    unsigned char junk[80];
    memset(junk, 'a', sizeof(junk));
    for (size_t i = 0; i < sizeof(bad_lens) / sizeof(bad_lens[0]); i++) {
        why[0] = '\0';
        if (ckptkey_parse(junk, bad_lens[i], &k, why, sizeof(why)) != EDDY_ERR_INVALID)
            fail_msg("a key file of %zu bytes was accepted", bad_lens[i]);
        assert_non_null(strstr(why, "32 raw bytes or 64 hex digits"));
    }
    snprintf(buf, sizeof(buf), "%s", hex);
    buf[10] = 'g';
    assert_int_equal(ckptkey_parse((const unsigned char *)buf, 64, &k, why, sizeof(why)),
                     EDDY_ERR_INVALID);
}

static void test_load_file(void **state)
{
    (void)state;
    char *dir = tmpdir_for("ckptkey");
    char path[512], why[128], id[CKPTKEY_ID_TEXT];
    struct ckptkey k;
    snprintf(path, sizeof(path), "%s/key", dir);
    assert_int_equal(ckptkey_load(path, &k, why, sizeof(why)), EDDY_ERR_NOT_FOUND);

    char hex[66];
    memset(hex, '0', 64);
    hex[64] = '\n';
    write_file(path, hex, 65);
    assert_int_equal(ckptkey_load(path, &k, why, sizeof(why)), EDDY_OK);
    ckptkey_id_text(k.id, id);
    assert_string_equal(id, "66687aadf862bd77");

    unsigned char big[4096];
    memset(big, '0', sizeof(big));
    write_file(path, big, sizeof(big)); /* a long file is not read to its end */
    assert_int_equal(ckptkey_load(path, &k, why, sizeof(why)), EDDY_ERR_INVALID);
    write_file(path, big, 40);
    assert_int_equal(ckptkey_load(path, &k, why, sizeof(why)), EDDY_ERR_INVALID);
    assert_non_null(strstr(why, "40 bytes"));

    ckptkey_release(&k);
    static const struct ckptkey zero;
    assert_memory_equal(&k, &zero, sizeof(k));
    ckptkey_release(NULL);
    rmrf(dir);
    free(dir);
}

static void test_seal_open(void **state)
{
    (void)state;
    struct ckptkey k, other;
    char why[128];
    unsigned char raw[CKPTKEY_LEN];
    memset(raw, 0x5a, sizeof(raw));
    assert_int_equal(ckptkey_parse(raw, sizeof(raw), &k, why, sizeof(why)), EDDY_OK);
    raw[31] ^= 1;
    assert_int_equal(ckptkey_parse(raw, sizeof(raw), &other, why, sizeof(why)), EDDY_OK);

    const char *secret = "user-very-secret-4711 bought p42";
    size_t n = strlen(secret);
    unsigned char aad[20] = "the file's header";
    unsigned char nonce[CKPTKEY_NONCE_LEN], nonce2[CKPTKEY_NONCE_LEN], tag[CKPTKEY_TAG_LEN];
    unsigned char ct[64], ct2[64], pt[64];
    assert_int_equal(ckptkey_seal(&k, aad, sizeof(aad), (const unsigned char *)secret, n, nonce,
                                  ct, tag),
                     EDDY_OK);
    assert_null(memmem(ct, n, "secret", 6));
    assert_int_equal(ckptkey_open(&k, aad, sizeof(aad), nonce, ct, n, tag, pt), EDDY_OK);
    assert_memory_equal(pt, secret, n);

    /* a fresh nonce each time: the same bytes never seal the same */
    unsigned char tag2[CKPTKEY_TAG_LEN];
    assert_int_equal(ckptkey_seal(&k, aad, sizeof(aad), (const unsigned char *)secret, n, nonce2,
                                  ct2, tag2),
                     EDDY_OK);
    assert_memory_not_equal(nonce, nonce2, sizeof(nonce));
    assert_memory_not_equal(ct, ct2, n);

    /* every changed bit of the data, the tag, the nonce and the associated data */
    for (size_t i = 0; i < n * 8; i++) {
        ct[i / 8] ^= (unsigned char)(1u << (i % 8));
        assert_int_equal(ckptkey_open(&k, aad, sizeof(aad), nonce, ct, n, tag, pt),
                         EDDY_ERR_CORRUPT);
        ct[i / 8] ^= (unsigned char)(1u << (i % 8));
    }
    for (size_t i = 0; i < sizeof(tag); i++) {
        tag[i] ^= 0x40;
        assert_int_equal(ckptkey_open(&k, aad, sizeof(aad), nonce, ct, n, tag, pt),
                         EDDY_ERR_CORRUPT);
        tag[i] ^= 0x40;
    }
    for (size_t i = 0; i < sizeof(nonce); i++) {
        nonce[i] ^= 0x02;
        assert_int_equal(ckptkey_open(&k, aad, sizeof(aad), nonce, ct, n, tag, pt),
                         EDDY_ERR_CORRUPT);
        nonce[i] ^= 0x02;
    }
    for (size_t i = 0; i < sizeof(aad); i++) {
        aad[i] ^= 0x08;
        assert_int_equal(ckptkey_open(&k, aad, sizeof(aad), nonce, ct, n, tag, pt),
                         EDDY_ERR_CORRUPT);
        aad[i] ^= 0x08;
    }
    assert_int_equal(ckptkey_open(&k, aad, sizeof(aad) - 1, nonce, ct, n, tag, pt),
                     EDDY_ERR_CORRUPT);
    assert_int_equal(ckptkey_open(&k, aad, sizeof(aad), nonce, ct, n - 1, tag, pt),
                     EDDY_ERR_CORRUPT);
    /* another key */
    assert_int_equal(ckptkey_open(&other, aad, sizeof(aad), nonce, ct, n, tag, pt),
                     EDDY_ERR_CORRUPT);
    assert_int_equal(ckptkey_open(&k, aad, sizeof(aad), nonce, ct, n, tag, pt), EDDY_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_forms),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_seal_open),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
