/* The log record encodings (node/state/logrec.c): a compact event record reads back as
 * the event a protobuf record of it unpacks to, for any strings (UUIDs of either case,
 * numbered ids, leading zeros, long digit runs, metadata) and prices; protobuf records of
 * every kind still read; and bytes that are not a record (truncated, trailing bytes, a
 * NUL inside a string) are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "node/state/logrec.h"

#include "xorshift.h"

/* A string of one of the shapes the encoder treats apart (malloc'd). */
static char *str(void)
{
    char *s = calloc(1, 80);
    assert_non_null(s);
    switch (next() % 8) {
    case 0:
        break; /* empty */
    case 1:
        snprintf(s, 80, "%08llx-%04llx-%04llx-%04llx-%012llx",
                 (unsigned long long)(next() & 0xffffffff), (unsigned long long)(next() & 0xffff),
                 (unsigned long long)(next() & 0xffff), (unsigned long long)(next() & 0xffff),
                 (unsigned long long)(next() & 0xffffffffffffULL));
        break;
    case 2:
        snprintf(s, 80, "%08llX-%04llX-%04llX-%04llX-%012llX",
                 (unsigned long long)(next() & 0xffffffff), (unsigned long long)(next() & 0xffff),
                 (unsigned long long)(next() & 0xffff), (unsigned long long)(next() & 0xffff),
                 (unsigned long long)(next() & 0xffffffffffffULL));
        break;
    case 3:
        snprintf(s, 80, "u%llu", (unsigned long long)(next() % 10000000));
        break;
    case 4:
        snprintf(s, 80, "order-%03llu", (unsigned long long)(next() % 1000)); /* zeros */
        break;
    case 5:
        snprintf(s, 80, "%llu%llu", (unsigned long long)next(), (unsigned long long)next());
        break;
    case 6: /* a UUID of mixed case, or one broken: raw */
        snprintf(s, 80, "0f8fAd5b-d9cb-469f-a165-70867728950%c", "eg-"[next() % 3]);
        break;
    default:
        for (size_t i = 0, n = next() % 40; i < n; i++)
            s[i] = (char)(1 + next() % 255);
        break;
    }
    return s;
}

static double price(void)
{
    switch (next() % 5) {
    case 0:
        return 0;
    case 1:
        return (double)(next() % 100000) / 100.0;
    case 2:
        return 0.1 + 0.2;
    case 3:
        return -0.0;
    default:
        return (double)(int64_t)next() / 7.0;
    }
}

static Eddy__V1__Event *random_event(void)
{
    Eddy__V1__Event *ev = malloc(sizeof(*ev));
    assert_non_null(ev);
    eddy__v1__event__init(ev);
    ev->event_id = str();
    ev->user_id = str();
    ev->session_id = str();
    ev->timestamp_ms = next() % 4 == 0 ? -(int64_t)(next() >> 2) : (int64_t)(next() >> 20);
    ev->event_type = (Eddy__V1__EventType)(next() % 7);
    ev->product_id = str();
    ev->category = str();
    ev->brand = str();
    ev->price = price();
    ev->search_query = str();
    ev->recommendation_id = str();
    ev->n_metadata = next() % 3;
    ev->metadata = ev->n_metadata ? calloc(ev->n_metadata, sizeof(*ev->metadata)) : NULL;
    for (size_t i = 0; i < ev->n_metadata; i++) {
        ev->metadata[i] = malloc(sizeof(*ev->metadata[i]));
        assert_non_null(ev->metadata[i]);
        eddy__v1__event__metadata_entry__init(ev->metadata[i]);
        ev->metadata[i]->key = str();
        ev->metadata[i]->value = str();
    }
    return ev;
}

/* The protobuf bytes of an event (malloc'd): how events are compared. */
static uint8_t *event_bytes(const Eddy__V1__Event *ev, size_t *len)
{
    *len = eddy__v1__event__get_packed_size(ev);
    uint8_t *b = malloc(*len + 1);
    assert_non_null(b);
    eddy__v1__event__pack(ev, b);
    return b;
}

/* The compact record reads back as the protobuf record of the event unpacks. */
static void test_round_trip(void **state)
{
    (void)state;
    for (int round = 0; round < 2000; round++) {
        Eddy__V1__Event *ev = random_event();
        uint8_t scratch[64]; /* some fit, some do not */
        struct pbenc_out o = {scratch, sizeof(scratch), NULL, 0};
        assert_true(logrec_pack_event(ev, &o));
        assert_true(logrec_is_compact(o.buf, o.len));
        Eddy__Store__V1__LogRecord *r = logrec_unpack(o.buf, o.len);
        assert_non_null(r);
        assert_int_equal(r->kind_case, EDDY__STORE__V1__LOG_RECORD__KIND_EVENT);
        size_t n1, n2;
        uint8_t *want = event_bytes(ev, &n1), *got = event_bytes(r->event, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(want, got, n1);
        /* the refusals: every shorter prefix, and one byte more */
        for (size_t cut = 1; cut < o.len; cut++) /* (no bytes: an empty protobuf record) */
            assert_null(logrec_unpack(o.buf, cut));
        uint8_t *longer = malloc(o.len + 1);
        memcpy(longer, o.buf, o.len);
        longer[o.len] = 0;
        assert_null(logrec_unpack(longer, o.len + 1));
        free(longer);
        free(want);
        free(got);
        if (o.buf != scratch)
            free(o.buf);
        eddy__store__v1__log_record__free_unpacked(r, NULL);
        eddy__v1__event__free_unpacked(ev, NULL);
    }
}

static size_t packed_len(Eddy__V1__Event *ev)
{
    uint8_t scratch[256];
    struct pbenc_out o = {scratch, sizeof(scratch), NULL, 0};
    assert_true(logrec_pack_event(ev, &o));
    assert_ptr_equal(o.buf, scratch);
    return o.len;
}

/* What the encoding is for: a benchmark's event in about half its protobuf bytes, a UUID
 * event id in 17 bytes. */
static void test_sizes(void **state)
{
    (void)state;
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = "r18b2c3d4e5f-3-123456";
    ev.user_id = "u123456";
    ev.session_id = "s123456";
    ev.timestamp_ms = 1796000000000;
    ev.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
    ev.product_id = "p4242";
    ev.category = "c12";
    ev.brand = "b34";
    ev.price = 123.99;
    Eddy__Store__V1__LogRecord r = EDDY__STORE__V1__LOG_RECORD__INIT;
    r.kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_EVENT;
    r.event = &ev;
    size_t pb = eddy__store__v1__log_record__get_packed_size(&r);
    size_t compact = packed_len(&ev);
    assert_int_equal(pb, 78);
    assert_int_equal(compact, 50);
    size_t before = packed_len(&ev);
    ev.event_id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    assert_int_equal(packed_len(&ev), before - 19 + 1 + 16);
}

/* Records of every other kind are protobuf LogRecords, read as they are. */
static void test_protobuf_records_read(void **state)
{
    (void)state;
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    Eddy__Store__V1__ErasedEvent er = EDDY__STORE__V1__ERASED_EVENT__INIT;
    Eddy__Store__V1__LogRecord recs[3] = {EDDY__STORE__V1__LOG_RECORD__INIT,
                                          EDDY__STORE__V1__LOG_RECORD__INIT,
                                          EDDY__STORE__V1__LOG_RECORD__INIT};
    ev.event_id = "e1";
    ev.user_id = "u1";
    ev.timestamp_ms = 5;
    er.event_id = "e2";
    er.timestamp_ms = 7;
    recs[0].kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_EVENT; /* an older layout's */
    recs[0].event = &ev;
    recs[1].kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_IDLE_WATERMARK;
    recs[1].idle_watermark = 1234567;
    recs[2].kind_case = EDDY__STORE__V1__LOG_RECORD__KIND_ERASED;
    recs[2].erased = &er;
    for (size_t i = 0; i < 3; i++) {
        uint8_t buf[128];
        size_t n = eddy__store__v1__log_record__pack(&recs[i], buf);
        assert_false(logrec_is_compact(buf, n));
        Eddy__Store__V1__LogRecord *r = logrec_unpack(buf, n);
        assert_non_null(r);
        assert_int_equal(r->kind_case, recs[i].kind_case);
        uint8_t again[128];
        assert_int_equal(eddy__store__v1__log_record__pack(r, again), n);
        assert_memory_equal(again, buf, n);
        eddy__store__v1__log_record__free_unpacked(r, NULL);
    }
}

/* A NUL inside a string is no event's: refused, in the raw form and in a prefix. */
static void test_nul_refused(void **state)
{
    (void)state;
    Eddy__V1__Event ev = EDDY__V1__EVENT__INIT;
    ev.event_id = "abc";
    ev.user_id = "u12";
    ev.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
    uint8_t scratch[64];
    struct pbenc_out o = {scratch, sizeof(scratch), NULL, 0};
    assert_true(logrec_pack_event(&ev, &o));
    Eddy__Store__V1__LogRecord *ok = logrec_unpack(o.buf, o.len);
    assert_non_null(ok);
    eddy__store__v1__log_record__free_unpacked(ok, NULL);
    /* head, flags, time 0, then "abc" raw (length 3 << 2) and "u" + 12 */
    assert_int_equal(o.buf[3], 3 << 2);
    uint8_t bad[64];
    memcpy(bad, o.buf, o.len);
    bad[5] = 0; /* "a\0c" */
    assert_null(logrec_unpack(bad, o.len));
    memcpy(bad, o.buf, o.len);
    assert_int_equal(bad[7], (1 << 2) | 3);
    bad[8] = 0; /* the prefix "\0" */
    assert_null(logrec_unpack(bad, o.len));
}

/* The encoding holds eddy.v1.Event's 12 fields: one added must be encoded (logrec.c), or
 * its events would take the protobuf record. */
static void test_event_fields(void **state)
{
    (void)state;
    if (eddy__v1__event__descriptor.n_fields != 12)
        fail_msg("eddy.v1.Event has %u fields: node/state/logrec.c encodes 12",
                 eddy__v1__event__descriptor.n_fields);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_protobuf_records_read),
        cmocka_unit_test(test_nul_refused),
        cmocka_unit_test(test_event_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
