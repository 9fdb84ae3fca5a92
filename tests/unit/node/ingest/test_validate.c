/* Each validation rule rejects with its own field and reason; a valid event passes. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "node/ingest/validate.h"

static const struct limits L = {16, 16, 32, 2, 24, 300000, 86400000};
static const int64_t NOW = 1800000000000LL;

static Eddy__V1__Event valid_event(void)
{
    Eddy__V1__Event e = EDDY__V1__EVENT__INIT;
    e.event_id = "e1";
    e.user_id = "u1";
    e.timestamp_ms = NOW - 1000;
    e.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW;
    e.product_id = "p1";
    e.price = 3.5;
    return e;
}

static void expect_reject(const Eddy__V1__Event *e, const char *field, const char *reason_part)
{
    char f[32], r[256];
    assert_false(validate_event(&L, e, NOW, f, sizeof(f), r, sizeof(r)));
    assert_string_equal(f, field);
    assert_non_null(strstr(r, reason_part));
    assert_int_equal(strncmp(r, field, strlen(field)), 0); /* reason starts with the field */
}

static void test_valid(void **state)
{
    char f[32], r[256];
    Eddy__V1__Event e = valid_event();
    assert_true(validate_event(&L, &e, NOW, f, sizeof(f), r, sizeof(r)));
    e.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH;
    e.product_id = "";
    e.search_query = "red shoes";
    assert_true(validate_event(&L, &e, NOW, f, sizeof(f), r, sizeof(r)));
}

static void test_ids(void **state)
{
    Eddy__V1__Event e = valid_event();
    e.event_id = "";
    expect_reject(&e, "event_id", "required");
    e = valid_event();
    e.user_id = "";
    expect_reject(&e, "user_id", "required");
    e = valid_event();
    e.user_id = "a-very-long-user-id-over-16";
    expect_reject(&e, "user_id", "longer than the limit of 16");
    e = valid_event();
    e.session_id = "s\x01";
    expect_reject(&e, "session_id", "control characters");
    e = valid_event();
    e.product_id = "\xff\xfe";
    expect_reject(&e, "product_id", "UTF-8");
}

static void test_types_and_required_fields(void **state)
{
    Eddy__V1__Event e = valid_event();
    e.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    expect_reject(&e, "event_type", "unspecified");
    e.event_type = (Eddy__V1__EventType)99;
    expect_reject(&e, "event_type", "unknown value 99");
    e = valid_event();
    e.product_id = "";
    expect_reject(&e, "product_id", "required");
    e = valid_event();
    e.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH;
    expect_reject(&e, "search_query", "required");
    e.search_query = "this query is definitely longer than thirty-two bytes";
    expect_reject(&e, "search_query", "longer than");
    e = valid_event();
    e.category = "a category name that is too long";
    expect_reject(&e, "category", "longer than");
}

static void test_time_and_price(void **state)
{
    Eddy__V1__Event e = valid_event();
    e.timestamp_ms = 0;
    expect_reject(&e, "timestamp_ms", "positive");
    e.timestamp_ms = NOW + 300001;
    expect_reject(&e, "timestamp_ms", "in the future");
    e.timestamp_ms = NOW - 86400001;
    expect_reject(&e, "timestamp_ms", "old");
    e = valid_event();
    e.price = -1;
    expect_reject(&e, "price", "finite");
    e.price = NAN;
    expect_reject(&e, "price", "finite");
}

static void test_metadata(void **state)
{
    Eddy__V1__Event e = valid_event();
    Eddy__V1__Event__MetadataEntry m[3] = {EDDY__V1__EVENT__METADATA_ENTRY__INIT,
                                           EDDY__V1__EVENT__METADATA_ENTRY__INIT,
                                           EDDY__V1__EVENT__METADATA_ENTRY__INIT};
    Eddy__V1__Event__MetadataEntry *mp[3] = {&m[0], &m[1], &m[2]};
    m[0].key = "a";
    m[0].value = "1";
    m[1].key = "b";
    m[1].value = "2";
    m[2].key = "c";
    m[2].value = "3";
    e.metadata = mp;
    e.n_metadata = 3;
    expect_reject(&e, "metadata", "3 entries");
    e.n_metadata = 2;
    m[1].value = "a value well over the byte limit";
    expect_reject(&e, "metadata", "bytes");
    m[1].value = "2";
    m[1].key = "";
    expect_reject(&e, "metadata", "empty key");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_types_and_required_fields),
        cmocka_unit_test(test_time_and_price),
        cmocka_unit_test(test_metadata),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
