/* Keys of the state node's LevelDB: building them from typed components (big-endian, so
 * that keys sort as their components do) and reading components back. No I/O. */
#include "node/state/store_key.h"

#include <string.h>

static void key_put(struct store_key *k, const void *p, size_t n)
{
    /* Keys are built from validated, length-limited ids; overflow is a programmer error,
     * but truncating is safer than writing past the buffer. */
    if (k->len + n > STORE_KEY_MAX)
        n = STORE_KEY_MAX - k->len;
    memcpy(k->buf + k->len, p, n);
    k->len += n;
}

void key_init(struct store_key *k, uint32_t partition, enum store_table t)
{
    k->len = 0;
    key_u16(k, (uint16_t)partition);
    unsigned char tb = (unsigned char)t;
    key_put(k, &tb, 1);
}

void key_u16(struct store_key *k, uint16_t v)
{
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    key_put(k, b, 2);
}

void key_u64(struct store_key *k, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (56 - 8 * i));
    key_put(k, b, 8);
}

void key_i64(struct store_key *k, int64_t v)
{
    key_u64(k, (uint64_t)v ^ (UINT64_C(1) << 63));
}

void key_bytes(struct store_key *k, const char *s, size_t n)
{
    key_put(k, s, n);
}

void key_str(struct store_key *k, const char *s)
{
    key_put(k, s, strlen(s));
}

void key_lstr(struct store_key *k, const char *s)
{
    size_t n = strlen(s);
    key_u16(k, (uint16_t)n);
    key_put(k, s, n);
}

bool key_get_u64(const unsigned char *key, size_t len, size_t *off, uint64_t *v)
{
    if (*off + 8 > len)
        return false;
    uint64_t r = 0;
    for (int i = 0; i < 8; i++)
        r = (r << 8) | key[*off + (size_t)i];
    *off += 8;
    *v = r;
    return true;
}

bool key_get_i64(const unsigned char *key, size_t len, size_t *off, int64_t *v)
{
    uint64_t u;
    if (!key_get_u64(key, len, off, &u))
        return false;
    *v = (int64_t)(u ^ (UINT64_C(1) << 63));
    return true;
}

bool store_table_stage2(unsigned t)
{
    return t == T_PRODUCT || t == T_PROD_WIN || t == T_CAT_POP || t == T_S2_HW || t == T_COOC;
}

void key_prefix_end(const struct store_key *prefix, struct store_key *end)
{
    *end = *prefix;
    while (end->len > 0) {
        if (end->buf[end->len - 1] != 0xff) {
            end->buf[end->len - 1]++;
            return;
        }
        end->len--;
    }
    /* all 0xff: no upper bound; an empty end means "to the end" in store_scan */
}
