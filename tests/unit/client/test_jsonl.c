/* client/jsonl.c: JSON lines in the seed's UserEvent shape -> Eddy__V1__Event, and the
 * client-side rejections `eddy ingest` reports with their line numbers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/jsonl.h"

static Eddy__V1__Event *parse_ok(const char *line)
{
    struct jsonl_error err;
    Eddy__V1__Event *ev = NULL;
    eddy_err rc = jsonl_parse_event(line, strlen(line), &ev, &err);
    if (rc != EDDY_OK)
        fail_msg("unexpected rejection of %s: [%s] %s", line, err.field, err.reason);
    assert_non_null(ev);
    return ev;
}

static void parse_bad(const char *line, const char *field, const char *reason_part)
{
    struct jsonl_error err;
    Eddy__V1__Event *ev = (Eddy__V1__Event *)1;
    assert_int_equal(jsonl_parse_event(line, strlen(line), &ev, &err), EDDY_ERR_INVALID);
    assert_null(ev);
    assert_string_equal(err.field, field);
    if (!strstr(err.reason, reason_part))
        fail_msg("reason \"%s\" lacks \"%s\"", err.reason, reason_part);
}

static const char *meta(const Eddy__V1__Event *ev, const char *key)
{
    for (size_t i = 0; i < ev->n_metadata; i++) {
        if (strcmp(ev->metadata[i]->key, key) == 0)
            return ev->metadata[i]->value;
    }
    return NULL;
}

static void test_full_seed_event(void **state)
{
    Eddy__V1__Event *ev = parse_ok(
        "{\"eventId\":\"e-1\",\"userId\":\"u-1\",\"sessionId\":\"s-1\","
        "\"timestamp\":1714564800123,\"eventType\":\"add_to_cart\",\"productId\":\"p-9\","
        "\"category\":\"electronics\",\"brand\":\"acme\",\"price\":19.5,"
        "\"searchQuery\":\"usb cable\",\"metadata\":{\"source\":\"web\",\"pos\":3,"
        "\"ab\":true,\"nested\":{\"a\":[1,2]},\"none\":null},\"unknownKey\":42}\n");

    assert_string_equal(ev->event_id, "e-1");
    assert_string_equal(ev->user_id, "u-1");
    assert_string_equal(ev->session_id, "s-1");
    assert_int_equal(ev->timestamp_ms, 1714564800123LL);
    assert_int_equal(ev->event_type, EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART);
    assert_string_equal(ev->product_id, "p-9");
    assert_string_equal(ev->category, "electronics");
    assert_string_equal(ev->brand, "acme");
    assert_true(ev->price == 19.5);
    assert_string_equal(ev->search_query, "usb cable");
    assert_int_equal(ev->n_metadata, 5);
    assert_string_equal(meta(ev, "source"), "web");
    assert_string_equal(meta(ev, "pos"), "3");
    assert_string_equal(meta(ev, "ab"), "true");
    assert_string_equal(meta(ev, "nested"), "{\"a\":[1,2]}");
    assert_string_equal(meta(ev, "none"), "null");
    jsonl_event_free(ev);
}

static void test_snake_case_and_string_numbers(void **state)
{
    Eddy__V1__Event *ev = parse_ok(
        "{\"event_id\":\"e-2\",\"user_id\":\"u-2\",\"timestamp_ms\":\"1714564800999\","
        "\"event_type\":\"EVENT_TYPE_SEARCH\",\"search_query\":\"shoes\",\"price\":\"7.25\"}");
    assert_string_equal(ev->event_id, "e-2");
    assert_string_equal(ev->user_id, "u-2");
    assert_int_equal(ev->timestamp_ms, 1714564800999LL);
    assert_int_equal(ev->event_type, EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH);
    assert_string_equal(ev->search_query, "shoes");
    assert_true(ev->price == 7.25);
    jsonl_event_free(ev);
}

/* Missing fields are not the client's business: they go out empty and the server rejects
 * them with its own reasons. */
static void test_missing_fields_left_to_server(void **state)
{
    Eddy__V1__Event *ev = parse_ok("{}");
    assert_string_equal(ev->event_id, "");
    assert_string_equal(ev->user_id, "");
    assert_int_equal(ev->timestamp_ms, 0);
    assert_int_equal(ev->event_type, EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED);
    assert_int_equal(ev->n_metadata, 0);
    jsonl_event_free(ev);

    ev = parse_ok("{\"userId\":null,\"eventType\":null,\"timestamp\":null}");
    assert_string_equal(ev->user_id, "");
    jsonl_event_free(ev);
}

static void test_event_type_names(void **state)
{
    static const struct {
        const char *name;
        Eddy__V1__EventType type;
    } cases[] = {
        {"view", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW},
        {"VIEW", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW},
        {"Click", EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK},
        {"ADD_TO_CART", EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART},
        {"remove_from_cart", EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART},
        {"purchase", EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE},
        {"event_type_purchase", EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE},
        {"search", EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Eddy__V1__EventType t = EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
        assert_true(jsonl_event_type_parse(cases[i].name, &t));
        assert_int_equal(t, cases[i].type);
    }
    Eddy__V1__EventType t = EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    assert_false(jsonl_event_type_parse("like", &t));
    assert_false(jsonl_event_type_parse("unspecified", &t));
    assert_false(jsonl_event_type_parse("", &t));
    assert_false(jsonl_event_type_parse("view ", &t));
    assert_string_equal(jsonl_event_type_name(EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART),
                        "add_to_cart");
    assert_string_equal(jsonl_event_type_name((Eddy__V1__EventType)99), "unspecified");
}

static void test_client_side_rejections(void **state)
{
    parse_bad("{\"eventType\":\"like\"}", "eventType", "unknown type \"like\"");
    parse_bad("{\"eventType\":3}", "eventType", "expected a string");
    parse_bad("{\"userId\":17}", "userId", "expected a string");
    parse_bad("{\"user_id\":[\"a\"]}", "user_id", "expected a string");
    parse_bad("{\"timestamp\":1.5}", "timestamp", "not an integer");
    parse_bad("{\"timestamp\":\"12ab\"}", "timestamp", "not an integer");
    parse_bad("{\"timestamp\":\"\"}", "timestamp", "not an integer");
    parse_bad("{\"timestamp\":true}", "timestamp", "expected a number");
    parse_bad("{\"price\":\"cheap\"}", "price", "not a number");
    parse_bad("{\"metadata\":[1]}", "metadata", "expected an object");
}

static void test_invalid_json(void **state)
{
    parse_bad("{\"eventId\":\"e-1\",", "", "invalid JSON");
    parse_bad("not json", "", "invalid JSON near column 1");
    parse_bad("{\"a\":1} {\"b\":2}", "", "unexpected text after the object at column 9");
    parse_bad("[1,2]", "", "expected a JSON object");
    parse_bad("\"str\"", "", "expected a JSON object");
    parse_bad("", "", "invalid JSON");
}

/* The parser honours 'len': the bytes after it are not part of the line. */
static void test_length_bounded(void **state)
{
    const char buf[] = "{\"eventId\":\"e-3\"}GARBAGE";
    struct jsonl_error err;
    Eddy__V1__Event *ev = NULL;
    assert_int_equal(jsonl_parse_event(buf, strlen("{\"eventId\":\"e-3\"}"), &ev, &err),
                     EDDY_OK);
    assert_string_equal(ev->event_id, "e-3");
    jsonl_event_free(ev);
}

/* A parsed event is a valid wire message: it packs and unpacks to the same values. */
static void test_round_trip_on_the_wire(void **state)
{
    Eddy__V1__Event *ev = parse_ok("{\"eventId\":\"e-4\",\"userId\":\"u-4\",\"timestamp\":5,"
                                   "\"eventType\":\"purchase\",\"productId\":\"p-1\","
                                   "\"metadata\":{\"k\":\"v\"}}");
    size_t n = eddy__v1__event__get_packed_size(ev);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    assert_int_equal(eddy__v1__event__pack(ev, buf), n);
    Eddy__V1__Event *back = eddy__v1__event__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_string_equal(back->event_id, "e-4");
    assert_int_equal(back->timestamp_ms, 5);
    assert_int_equal(back->event_type, EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE);
    assert_int_equal(back->n_metadata, 1);
    assert_string_equal(back->metadata[0]->key, "k");
    assert_string_equal(back->metadata[0]->value, "v");
    eddy__v1__event__free_unpacked(back, NULL);
    free(buf);
    jsonl_event_free(ev);
}

static void test_blank(void **state)
{
    assert_true(jsonl_is_blank("", 0));
    assert_true(jsonl_is_blank(" \t\r\n", 4));
    assert_false(jsonl_is_blank("  {}", 4));
    jsonl_event_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_seed_event),
        cmocka_unit_test(test_snake_case_and_string_numbers),
        cmocka_unit_test(test_missing_fields_left_to_server),
        cmocka_unit_test(test_event_type_names),
        cmocka_unit_test(test_client_side_rejections),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_length_bounded),
        cmocka_unit_test(test_round_trip_on_the_wire),
        cmocka_unit_test(test_blank),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
