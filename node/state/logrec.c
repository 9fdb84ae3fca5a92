/* The compact encoding of an event's log record, and the reader of both encodings (see
 * logrec.h). */
#include "node/state/logrec.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pbutil.h"

/* The header byte: the event type in bits 3-6, wire type 7 in bits 0-2 (no protobuf
 * record starts so), bit 7 clear (a protobuf tag's first byte with it set still has its
 * wire type in bits 0-2, so the rule holds for those too). */
#define HEAD_WIRE 7
#define HEAD_TYPES 16

/* The byte of the optional fields present, in the order they follow. */
enum {
    HAS_SESSION = 1,
    HAS_PRODUCT = 2,
    HAS_CATEGORY = 4,
    HAS_BRAND = 8,
    HAS_PRICE = 16,
    HAS_QUERY = 32,
    HAS_RECOMMENDATION = 64,
    HAS_METADATA = 128,
};

/* A string's form, the low 2 bits of its varint (the rest: its length, or for PREFIXED
 * its prefix's length). */
enum { STR_RAW = 0, STR_UUID_LOWER = 1, STR_UUID_UPPER = 2, STR_PREFIXED = 3 };

/* The fields of eddy.v1.Event this encoding holds: an event of a descriptor with more (a
 * field added since) takes the protobuf record rather than lose it
 * (unit.node.state.logrec notices). */
#define EVENT_FIELDS 12

#define UUID_LEN 36
#define UUID_BYTES 16
#define NUMBER_DIGITS 19 /* below 10^19: a u64 */
#define PRICE_RAW 1      /* the price varint's odd value: a double's 8 bytes follow */

/* ---- encoding ------------------------------------------------------------------------ */

static int hex_value(char c, bool *lower, bool *upper)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f') {
        *lower = true;
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        *upper = true;
        return c - 'A' + 10;
    }
    return -1;
}

static bool is_dash_at(size_t i)
{
    return i == 8 || i == 13 || i == 18 || i == 23;
}

/* Whether s is a canonical UUID (8-4-4-4-12 hex digits, one case): its bytes in out. */
static bool uuid_parse(const char *s, size_t n, uint8_t out[UUID_BYTES], int *form)
{
    bool lower = false, upper = false;
    size_t at = 0;
    if (n != UUID_LEN)
        return false;
    for (size_t i = 0; i < UUID_LEN; i++) {
        if (is_dash_at(i)) {
            if (s[i] != '-')
                return false;
            continue;
        }
        int v = hex_value(s[i], &lower, &upper);
        if (v < 0)
            return false;
        if (at % 2 == 0)
            out[at / 2] = (uint8_t)(v << 4);
        else
            out[at / 2] |= (uint8_t)v;
        at++;
    }
    if (lower && upper)
        return false;
    *form = upper ? STR_UUID_UPPER : STR_UUID_LOWER;
    return true;
}

/* Where the decimal number that ends s starts (n: none): at most NUMBER_DIGITS digits,
 * without a leading zero (but "0" itself), so that printing it gives the digits back. */
static size_t number_start(const char *s, size_t n)
{
    size_t j = n;
    while (j > 0 && n - j < NUMBER_DIGITS && s[j - 1] >= '0' && s[j - 1] <= '9')
        j--;
    while (j + 1 < n && s[j] == '0')
        j++;
    return j;
}

/* A string as the compact form that takes the fewest bytes. */
struct cstr {
    int form;
    size_t len;        /* the whole string's */
    size_t prefix;     /* RAW: len; PREFIXED: the bytes before the number */
    uint64_t number;   /* PREFIXED */
    uint8_t uuid[UUID_BYTES];
    size_t size;       /* encoded */
};

static void cstr_plan(const char *s, size_t len, struct cstr *c)
{
    c->len = c->prefix = len;
    c->form = STR_RAW;
    c->size = pbenc_varint_size((uint64_t)c->len << 2) + c->len;
    if (uuid_parse(s, c->len, c->uuid, &c->form)) {
        c->size = 1 + UUID_BYTES;
        return;
    }
    size_t j = number_start(s, c->len);
    if (j == c->len)
        return;
    uint64_t v = 0;
    for (size_t i = j; i < c->len; i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    size_t size = pbenc_varint_size((uint64_t)j << 2 | STR_PREFIXED) + j + pbenc_varint_size(v);
    if (size < c->size) {
        c->form = STR_PREFIXED;
        c->prefix = j;
        c->number = v;
        c->size = size;
    }
}

static uint8_t *cstr_put(uint8_t *p, const char *s, const struct cstr *c)
{
    switch (c->form) {
    case STR_UUID_LOWER:
    case STR_UUID_UPPER:
        *p++ = (uint8_t)c->form;
        memcpy(p, c->uuid, UUID_BYTES);
        return p + UUID_BYTES;
    case STR_PREFIXED:
        p = pbenc_put_varint(p, (uint64_t)c->prefix << 2 | STR_PREFIXED);
        memcpy(p, s, c->prefix);
        return pbenc_put_varint(p + c->prefix, c->number);
    default:
        p = pbenc_put_varint(p, (uint64_t)c->len << 2 | STR_RAW);
        if (c->len)
            memcpy(p, s, c->len);
        return p + c->len;
    }
}

/* The price's varint: twice its cents when (cents / 100.0) gives it back bit for bit,
 * else PRICE_RAW and the double follows. */
static uint64_t price_code(double price)
{
    double cents = price * 100.0;
    if (!(cents >= 0 && cents < 0x1p52) || cents != floor(cents))
        return PRICE_RAW;
    uint64_t c = (uint64_t)cents;
    return (double)c / 100.0 == price ? c << 1 : PRICE_RAW;
}

static uint64_t zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

size_t logrec_pack_str(const char *s, size_t len, uint8_t *out, bool *raw)
{
    struct cstr c;
    cstr_plan(s, len, &c);
    *raw = c.form == STR_RAW;
    return (size_t)(cstr_put(out, s, &c) - out);
}

#define EVENT_STRS 8

bool logrec_pack_event(const Eddy__V1__Event *ev, struct pbenc_out *o)
{
    /* in the order they are written; the flags of the optional ones (0: always there) */
    const char *const s[EVENT_STRS] = {ev->event_id, ev->user_id,      ev->session_id,
                                       ev->product_id, ev->category,  ev->brand,
                                       ev->search_query, ev->recommendation_id};
    static const uint8_t flag[EVENT_STRS] = {0,           0,         HAS_SESSION,
                                             HAS_PRODUCT, HAS_CATEGORY, HAS_BRAND,
                                             HAS_QUERY,   HAS_RECOMMENDATION};
    struct cstr c[EVENT_STRS], mk, mv;
    if (eddy__v1__event__descriptor.n_fields != EVENT_FIELDS || pbenc_unknown(&ev->base) ||
        ev->event_type < 0 || ev->event_type >= HEAD_TYPES)
        return false;
    uint8_t has = 0;
    uint64_t price = 0;
    size_t size = 2 + pbenc_varint_size(zigzag(ev->timestamp_ms));
    for (size_t i = 0; i < EVENT_STRS; i++) {
        if (flag[i] && (!s[i] || !s[i][0]))
            continue;
        has |= flag[i];
        cstr_plan(s[i], s[i] ? strlen(s[i]) : 0, &c[i]);
        size += c[i].size;
    }
    if (ev->price != 0) { /* -0.0 too: protobuf leaves it out, and it unpacks as 0 */
        has |= HAS_PRICE;
        price = price_code(ev->price);
        size += pbenc_varint_size(price) + (price == PRICE_RAW ? sizeof(double) : 0);
    }
    if (ev->n_metadata > 0) {
        has |= HAS_METADATA;
        size += pbenc_varint_size(ev->n_metadata);
        for (size_t i = 0; i < ev->n_metadata; i++) {
            const Eddy__V1__Event__MetadataEntry *me = ev->metadata[i];
            if (!me || pbenc_unknown(&me->base))
                return false;
            cstr_plan(me->key, strlen(me->key), &mk);
            cstr_plan(me->value, strlen(me->value), &mv);
            size += mk.size + mv.size;
        }
    }
    if (!pbenc_reserve(o, size))
        return false;
    uint8_t *p = o->buf;
    *p++ = (uint8_t)(ev->event_type << 3 | HEAD_WIRE);
    *p++ = has;
    p = pbenc_put_varint(p, zigzag(ev->timestamp_ms));
    for (size_t i = 0; i < EVENT_STRS; i++) {
        if (i == 6 && (has & HAS_PRICE)) { /* the price goes after the brand */
            p = pbenc_put_varint(p, price);
            if (price == PRICE_RAW) {
                memcpy(p, &ev->price, sizeof(double));
                p += sizeof(double);
            }
        }
        if (!flag[i] || (has & flag[i]))
            p = cstr_put(p, s[i], &c[i]);
    }
    if (has & HAS_METADATA) {
        p = pbenc_put_varint(p, ev->n_metadata);
        for (size_t i = 0; i < ev->n_metadata; i++) {
            cstr_plan(ev->metadata[i]->key, strlen(ev->metadata[i]->key), &mk);
            p = cstr_put(p, ev->metadata[i]->key, &mk);
            cstr_plan(ev->metadata[i]->value, strlen(ev->metadata[i]->value), &mv);
            p = cstr_put(p, ev->metadata[i]->value, &mv);
        }
    }
    o->len = (size_t)(p - o->buf);
    return true;
}

/* ---- decoding ------------------------------------------------------------------------ */

/* Bytes being read: 'bad' once anything did not fit. */
struct reader {
    const uint8_t *p, *end;
    bool bad;
};

static uint64_t get_varint(struct reader *r)
{
    uint64_t v = 0;
    if (!pb_read_varint(&r->p, r->end, &v)) {
        r->bad = true;
        v = 0;
    }
    return v;
}

static const uint8_t *get_bytes(struct reader *r, uint64_t n)
{
    if (r->bad || n > (uint64_t)(r->end - r->p)) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *at = r->p;
    r->p += n;
    return at;
}

static void put_uuid(char *out, const uint8_t *b, int form)
{
    const char *digits = form == STR_UUID_UPPER ? "0123456789ABCDEF" : "0123456789abcdef";
    size_t at = 0;
    for (size_t i = 0; i < UUID_LEN; i++) {
        if (is_dash_at(i)) {
            out[i] = '-';
            continue;
        }
        uint8_t v = at % 2 == 0 ? b[at / 2] >> 4 : b[at / 2] & 0xf;
        out[i] = digits[v];
        at++;
    }
    out[UUID_LEN] = '\0';
}

/* The next string, malloc'd (an empty one is protobuf_c_empty_string, as an unpack
 * leaves it); NULL with r->bad on bad bytes (a NUL inside included: no event has one), or
 * out of memory (r->bad too). */
static char *get_str(struct reader *r)
{
    uint64_t h = get_varint(r);
    int form = (int)(h & 3);
    uint64_t n = h >> 2;
    const uint8_t *b = NULL;
    uint64_t number = 0;
    char digits[24] = "";
    size_t len = 0;
    switch (form) {
    case STR_UUID_LOWER:
    case STR_UUID_UPPER:
        if (n != 0)
            r->bad = true;
        b = get_bytes(r, UUID_BYTES);
        len = UUID_LEN;
        break;
    case STR_PREFIXED:
        b = get_bytes(r, n);
        number = get_varint(r);
        snprintf(digits, sizeof(digits), "%" PRIu64, number);
        len = (size_t)n + strlen(digits);
        break;
    default:
        b = get_bytes(r, n);
        len = (size_t)n;
        break;
    }
    if (r->bad)
        return NULL;
    if (form != STR_UUID_LOWER && form != STR_UUID_UPPER && memchr(b, 0, (size_t)n)) {
        r->bad = true;
        return NULL;
    }
    if (len == 0)
        return (char *)protobuf_c_empty_string;
    char *s = malloc(len + 1);
    if (!s) {
        r->bad = true;
        return NULL;
    }
    if (form == STR_UUID_LOWER || form == STR_UUID_UPPER) {
        put_uuid(s, b, form);
        return s;
    }
    memcpy(s, b, (size_t)n);
    memcpy(s + n, digits, len - (size_t)n);
    s[len] = '\0';
    return s;
}

static double get_price(struct reader *r)
{
    uint64_t code = get_varint(r);
    if (code == PRICE_RAW) {
        double v = 0;
        const uint8_t *b = get_bytes(r, sizeof(double));
        if (b)
            memcpy(&v, b, sizeof(double));
        return v;
    }
    if (code & 1)
        r->bad = true;
    return (double)(code >> 1) / 100.0;
}

static void get_metadata(struct reader *r, Eddy__V1__Event *ev)
{
    uint64_t n = get_varint(r);
    /* every entry takes 2 bytes at least: no count the bytes cannot hold is allocated */
    if (r->bad || n == 0 || n > (uint64_t)(r->end - r->p) / 2) {
        r->bad = true;
        return;
    }
    ev->metadata = calloc((size_t)n, sizeof(*ev->metadata));
    if (!ev->metadata) {
        r->bad = true;
        return;
    }
    for (size_t i = 0; i < n && !r->bad; i++) {
        Eddy__V1__Event__MetadataEntry *me = malloc(sizeof(*me));
        if (!me) {
            r->bad = true;
            break;
        }
        eddy__v1__event__metadata_entry__init(me);
        ev->metadata[ev->n_metadata++] = me;
        if ((me->key = get_str(r)) == NULL || (me->value = get_str(r)) == NULL) {
            /* as the free expects: the defaults where nothing was allocated */
            me->key = me->key ? me->key : (char *)protobuf_c_empty_string;
            me->value = (char *)protobuf_c_empty_string;
        }
    }
}

static char **event_str(Eddy__V1__Event *ev, size_t i)
{
    char **at[EVENT_STRS] = {&ev->event_id, &ev->user_id,      &ev->session_id,
                             &ev->product_id, &ev->category,  &ev->brand,
                             &ev->search_query, &ev->recommendation_id};
    return at[i];
}

/* The event of a compact record into 'ev' (initialised: whatever is set is freed with it). */
static bool decode_event(struct reader *r, Eddy__V1__Event *ev)
{
    static const uint8_t flag[EVENT_STRS] = {0,           0,         HAS_SESSION,
                                             HAS_PRODUCT, HAS_CATEGORY, HAS_BRAND,
                                             HAS_QUERY,   HAS_RECOMMENDATION};
    uint8_t head = *r->p++;
    if (r->p >= r->end)
        return false;
    uint8_t has = *r->p++;
    ev->event_type = (Eddy__V1__EventType)(head >> 3);
    uint64_t zz = get_varint(r);
    ev->timestamp_ms = (int64_t)(zz >> 1) ^ -(int64_t)(zz & 1);
    for (size_t i = 0; i < EVENT_STRS && !r->bad; i++) {
        if (i == 6 && (has & HAS_PRICE)) {
            ev->price = get_price(r);
            /* a zero price is left out, and nothing else reads as one */
            if (ev->price == 0)
                r->bad = true;
        }
        if (flag[i] && !(has & flag[i]))
            continue;
        char *s = get_str(r);
        if (s)
            *event_str(ev, i) = s;
        else
            r->bad = true;
    }
    if (!r->bad && (has & HAS_METADATA))
        get_metadata(r, ev);
    return !r->bad && r->p == r->end;
}

bool logrec_is_compact(const uint8_t *buf, size_t len)
{
    return len > 0 && (buf[0] & 0x87) == HEAD_WIRE;
}

Eddy__Store__V1__LogRecord *logrec_unpack(const uint8_t *buf, size_t len)
{
    if (!logrec_is_compact(buf, len))
        return eddy__store__v1__log_record__unpack(NULL, len, buf);
    Eddy__Store__V1__LogRecord *rec = malloc(sizeof(*rec));
    Eddy__V1__Event *ev = malloc(sizeof(*ev));
    if (!rec || !ev) {
        free(rec);
        free(ev);
        return NULL;
    }
    eddy__store__v1__log_record__init(rec);
    eddy__v1__event__init(ev);
    rec->kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_EVENT;
    rec->event = ev;
    struct reader r = {buf, buf + len, false};
    if (!decode_event(&r, ev)) {
        eddy__store__v1__log_record__free_unpacked(rec, NULL);
        return NULL;
    }
    return rec;
}
