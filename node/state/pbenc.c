/* Protobuf encoding helpers of the hand-written encoders (see pbenc.h). */
#include "node/state/pbenc.h"

#include <string.h>

size_t pbenc_varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

uint8_t *pbenc_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

size_t pbenc_str_size(const char *s, size_t *len)
{
    *len = s ? strlen(s) : 0;
    return *len ? 1 + pbenc_varint_size(*len) + *len : 0;
}

uint8_t *pbenc_put_str(uint8_t *p, uint8_t tag, const char *s, size_t len)
{
    if (!len)
        return p;
    *p++ = tag;
    p = pbenc_put_varint(p, len);
    memcpy(p, s, len);
    return p + len;
}

size_t pbenc_u64_size(uint64_t v)
{
    return v ? 1 + pbenc_varint_size(v) : 0;
}

uint8_t *pbenc_put_u64(uint8_t *p, uint8_t tag, uint64_t v)
{
    if (!v)
        return p;
    *p++ = tag;
    return pbenc_put_varint(p, v);
}

size_t pbenc_double_size(double v)
{
    return v != 0 ? 9 : 0;
}

uint8_t *pbenc_put_double(uint8_t *p, uint8_t tag, double v)
{
    if (v == 0)
        return p;
    uint64_t bits;
    memcpy(&bits, &v, 8);
    *p++ = tag;
    for (int i = 0; i < 8; i++)
        *p++ = (uint8_t)(bits >> (8 * i));
    return p;
}

static size_t decayed_body(const Eddy__Store__V1__Decayed *d)
{
    return pbenc_u64_size((uint64_t)d->bucket) + pbenc_u64_size((uint64_t)d->cur) +
           pbenc_u64_size((uint64_t)d->prev);
}

size_t pbenc_decayed_size(const Eddy__Store__V1__Decayed *d)
{
    return d ? 2 + decayed_body(d) : 0; /* the body is at most 33 bytes: a 1-byte length */
}

uint8_t *pbenc_put_decayed(uint8_t *p, uint8_t tag, const Eddy__Store__V1__Decayed *d)
{
    if (!d)
        return p;
    *p++ = tag;
    *p++ = (uint8_t)decayed_body(d);
    p = pbenc_put_u64(p, PB_DECAYED_BUCKET, (uint64_t)d->bucket);
    p = pbenc_put_u64(p, PB_DECAYED_CUR, (uint64_t)d->cur);
    return pbenc_put_u64(p, PB_DECAYED_PREV, (uint64_t)d->prev);
}

size_t pbenc_sub_size(size_t body)
{
    return 1 + pbenc_varint_size(body) + body;
}

uint8_t *pbenc_put_sub(uint8_t *p, uint8_t tag, size_t body)
{
    *p++ = tag;
    return pbenc_put_varint(p, body);
}
