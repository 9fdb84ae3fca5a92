/* pb_copy: the copy encodes to the original's bytes, holds the values a decode of them
 * holds (-0.0 as 0.0, a bool as 1) and owns every block of its own (the original is freed
 * before the copy is read: ASan in CI catches a shared string, array or sub-message), with
 * the shapes the in-process calls carry: a oneof holding a sub-message, repeated
 * sub-messages and strings, empty, unset and long strings, bytes, unknown fields. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/pbutil.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/state.pb-c.h"

struct packed {
    uint8_t *buf;
    size_t len;
};

static struct packed pack(const ProtobufCMessage *m)
{
    struct packed p = {NULL, protobuf_c_message_get_packed_size(m)};
    p.buf = malloc(p.len ? p.len : 1);
    assert_non_null(p.buf);
    assert_int_equal(protobuf_c_message_pack(m, p.buf), p.len);
    return p;
}

/* Copy 'm' (which it frees), then check the copy encodes to m's bytes; returns the copy. */
static ProtobufCMessage *copy_and_free(ProtobufCMessage *m)
{
    struct packed want = pack(m);
    ProtobufCMessage *c = pb_copy(m, m->descriptor);
    assert_non_null(c);
    assert_ptr_equal(c->descriptor, m->descriptor);
    protobuf_c_message_free_unpacked(m, NULL);
    struct packed got = pack(c);
    assert_int_equal(got.len, want.len);
    assert_memory_equal(got.buf, want.buf, want.len);
    free(want.buf);
    free(got.buf);
    return c;
}

static ProtobufCMessage *decode(const ProtobufCMessageDescriptor *d, const struct packed *p)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, p->len, p->buf);
    assert_non_null(m);
    return m;
}

/* An answer as the state service builds it (items of malloc'd strings, some left empty
 * or unset), then as a network call decodes it (unset strings at the shared default). */
static void test_recommend_answer(void **state)
{
    (void)state;
    char long_id[300];
    memset(long_id, 'p', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    Eddy__V1__RecommendResponse *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    eddy__v1__recommend_response__init(r);
    r->n_items = 12;
    r->items = calloc(r->n_items, sizeof(*r->items));
    assert_non_null(r->items);
    for (size_t i = 0; i < r->n_items; i++) {
        Eddy__V1__Recommendation *it = malloc(sizeof(*it));
        assert_non_null(it);
        eddy__v1__recommendation__init(it);
        r->items[i] = it;
        it->score = 1.0 / (double)(i + 1);
        assert_int_equal(pb_set_str(&it->product_id, i == 3 ? long_id : "p-17"), EDDY_OK);
        assert_int_equal(pb_set_str(&it->reason, "viewed together with p-2"), EDDY_OK);
        if (i % 3)
            assert_int_equal(pb_set_str(&it->category, "books"), EDDY_OK);
    }
    r->items[1]->score = -0.0; /* proto3 writes no zero: decoded as 0.0 */
    r->cold_start = 2;         /* written as 1 */
    r->staleness = malloc(sizeof(*r->staleness));
    assert_non_null(r->staleness);
    eddy__v1__read_staleness__init(r->staleness);
    r->staleness->from_follower = true;
    r->staleness->lag_records = 42;
    assert_int_equal(pb_set_str(&r->recommendation_id, "0123456789abcdef"), EDDY_OK);
    Eddy__State__V1__UserResponse *u = malloc(sizeof(*u));
    assert_non_null(u);
    eddy__state__v1__user_response__init(u);
    u->response_case = EDDY__STATE__V1__USER_RESPONSE__RESPONSE_RECOMMEND;
    u->recommend = r;

    ProtobufCMessage *c = copy_and_free(&u->base);
    const Eddy__V1__RecommendResponse *cr = ((const Eddy__State__V1__UserResponse *)c)->recommend;
    assert_false(signbit(cr->items[1]->score)); /* what a decode gives, bit for bit */
    assert_int_equal(cr->cold_start, 1);
    struct packed p = pack(c);
    ProtobufCMessage *c2 = copy_and_free(decode(c->descriptor, &p));
    const Eddy__State__V1__UserResponse *cu = (const Eddy__State__V1__UserResponse *)c2;
    assert_int_equal(cu->response_case, EDDY__STATE__V1__USER_RESPONSE__RESPONSE_RECOMMEND);
    assert_int_equal(cu->recommend->n_items, 12);
    assert_string_equal(cu->recommend->items[3]->product_id, long_id);
    assert_string_equal(cu->recommend->items[0]->category, "");
    assert_string_equal(cu->recommend->experiment, "");
    assert_int_equal(cu->recommend->staleness->lag_records, 42);
    protobuf_c_message_free_unpacked(c, NULL);
    protobuf_c_message_free_unpacked(c2, NULL);
    free(p.buf);
}

/* A request as the router sends it: a oneof's sub-message with a sub-message of repeated
 * strings (an empty one among them), a string left NULL, the scalars beside the oneof. */
static void test_user_request(void **state)
{
    (void)state;
    Eddy__V1__Context ctx = EDDY__V1__CONTEXT__INIT;
    char *cart[] = {"p-1", "", "p-3"};
    ctx.current_product = "p-9";
    ctx.n_shopping_cart = 3;
    ctx.shopping_cart = cart;
    Eddy__V1__RecommendRequest rr = EDDY__V1__RECOMMEND_REQUEST__INIT;
    rr.user_id = "u-1";
    rr.session_id = NULL;
    rr.context = &ctx;
    rr.max_recommendations = 20;
    rr.exclude = EDDY__V1__EXCLUSION__EXCLUSION_PURCHASED;
    Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
    ur.partition = 7;
    ur.epoch = 3;
    ur.allow_stale = true;
    ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND;
    ur.recommend = &rr;
    struct packed want = pack(&ur.base);

    Eddy__State__V1__UserRequest *c =
        (Eddy__State__V1__UserRequest *)pb_copy(&ur.base, ur.base.descriptor);
    assert_non_null(c);
    struct packed got = pack(&c->base);
    assert_int_equal(got.len, want.len);
    assert_memory_equal(got.buf, want.buf, want.len);
    assert_ptr_not_equal(c->recommend, &rr);
    assert_ptr_not_equal(c->recommend->context->shopping_cart, cart);
    assert_string_equal(c->recommend->context->shopping_cart[1], "");
    assert_string_equal(c->recommend->session_id, ""); /* as the network decodes it */
    assert_string_equal(c->recommend->context->current_page, "");
    protobuf_c_message_free_unpacked(&c->base, NULL);
    free(want.buf);
    free(got.buf);
}

/* Repeated sub-messages with bytes (one empty), and fields the type does not know: a
 * FetchLogRequest's max_records, move_id and fence_epoch (fields 3-5) read as a
 * ForwardResponse, which has fields 1 and 2 only. */
static void test_bytes_and_unknown_fields(void **state)
{
    (void)state;
    uint8_t rec[200];
    for (size_t i = 0; i < sizeof(rec); i++)
        rec[i] = (uint8_t)i;
    Eddy__State__V1__LogEntry e[2] = {EDDY__STATE__V1__LOG_ENTRY__INIT,
                                      EDDY__STATE__V1__LOG_ENTRY__INIT};
    e[0].seq = 5;
    e[0].record = (ProtobufCBinaryData){sizeof(rec), rec};
    e[1].seq = 6;
    Eddy__State__V1__LogEntry *entries[] = {&e[0], &e[1]};
    Eddy__State__V1__FetchLogResponse fl = EDDY__STATE__V1__FETCH_LOG_RESPONSE__INIT;
    fl.n_entries = 2;
    fl.entries = entries;
    fl.next_seq = 7;
    struct packed p = pack(&fl.base);
    ProtobufCMessage *c =
        copy_and_free(decode(&eddy__state__v1__fetch_log_response__descriptor, &p));
    const Eddy__State__V1__FetchLogResponse *cl = (const Eddy__State__V1__FetchLogResponse *)c;
    assert_int_equal(cl->n_entries, 2);
    assert_memory_equal(cl->entries[0]->record.data, rec, sizeof(rec));
    assert_int_equal(cl->entries[1]->record.len, 0);
    protobuf_c_message_free_unpacked(c, NULL);
    free(p.buf);

    Eddy__State__V1__FetchLogRequest req = EDDY__STATE__V1__FETCH_LOG_REQUEST__INIT;
    req.max_records = 1000;
    req.move_id = 1ULL << 40;
    req.fence_epoch = 9;
    p = pack(&req.base);
    ProtobufCMessage *fwd = decode(&eddy__state__v1__forward_response__descriptor, &p);
    assert_int_equal(fwd->n_unknown_fields, 3);
    c = copy_and_free(fwd);
    assert_int_equal(c->n_unknown_fields, 3);
    protobuf_c_message_free_unpacked(c, NULL);
    free(p.buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recommend_answer),
        cmocka_unit_test(test_user_request),
        cmocka_unit_test(test_bytes_and_unknown_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
