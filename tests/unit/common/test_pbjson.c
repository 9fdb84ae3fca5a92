/* pbjson: messages as JSON through their descriptors: scalars, 64-bit values, enums by
 * name, strings (unset ones ""), repeated scalars and messages, unset sub-messages as null,
 * and only the set member of a oneof. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdlib.h>

#include "common/pbjson.h"
#include "eddy/v1/cluster.pb-c.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/state.pb-c.h"

static char *json_of(const ProtobufCMessage *m)
{
    cJSON *j = pbjson_from(m);
    assert_non_null(j);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}

static void test_scalars_repeated_and_null(void **state)
{
    Eddy__V1__Recommendation items[2] = {EDDY__V1__RECOMMENDATION__INIT,
                                         EDDY__V1__RECOMMENDATION__INIT};
    items[0].product_id = "p-1";
    items[0].score = 2.5;
    items[0].reason = "viewed together with \"p-2\"";
    items[1].product_id = "p-3";
    Eddy__V1__Recommendation *ptrs[] = {&items[0], &items[1]};
    Eddy__V1__RecommendResponse r = EDDY__V1__RECOMMEND_RESPONSE__INIT;
    r.n_items = 2;
    r.items = ptrs;
    r.cold_start = 1;
    char *text = json_of(&r.base);
    assert_string_equal(text, "{\"items\":[{\"product_id\":\"p-1\",\"score\":2.5,\"reason\":"
                              "\"viewed together with \\\"p-2\\\"\",\"category\":\"\"},"
                              "{\"product_id\":\"p-3\",\"score\":0,\"reason\":\"\","
                              "\"category\":\"\"}],\"cold_start\":true,\"staleness\":null,"
                              "\"recommendation_id\":\"\",\"experiment\":\"\","
                              "\"variant\":\"\"}");
    free(text);
}

static void test_enums_64_bit_and_repeated_strings(void **state)
{
    Eddy__V1__TopProductsRequest t = EDDY__V1__TOP_PRODUCTS_REQUEST__INIT;
    t.event_type = EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE;
    t.start_ms = 1764000000123;
    t.limit = 7;
    cJSON *j = pbjson_from(&t.base);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "event_type")),
                        "EVENT_TYPE_PURCHASE");
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "start_ms")) == 1764000000123.0);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "limit")), 7);
    cJSON_Delete(j);

    char *roles[] = {"ingest", "state"};
    Eddy__Cluster__V1__Node n = EDDY__CLUSTER__V1__NODE__INIT;
    n.id = "n1";
    n.n_roles = 2;
    n.roles = roles;
    n.started_ms = -5;
    j = pbjson_from(&n.base);
    cJSON *r = cJSON_GetObjectItem(j, "roles");
    assert_int_equal(cJSON_GetArraySize(r), 2);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetArrayItem(r, 1)), "state");
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "started_ms")) == -5.0);
    cJSON_Delete(j);
}

static void test_oneof_only_the_set_member(void **state)
{
    Eddy__V1__RecommendRequest rec = EDDY__V1__RECOMMEND_REQUEST__INIT;
    rec.user_id = "u-7";
    Eddy__State__V1__UserRequest ur = EDDY__STATE__V1__USER_REQUEST__INIT;
    ur.request_case = EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND;
    ur.recommend = &rec;
    cJSON *j = pbjson_from(&ur.base);
    cJSON *got = cJSON_GetObjectItem(j, "recommend");
    assert_non_null(got);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(got, "user_id")), "u-7");
    assert_null(cJSON_GetObjectItem(j, "profile"));
    assert_null(cJSON_GetObjectItem(j, "delete_user"));
    cJSON_Delete(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars_repeated_and_null),
        cmocka_unit_test(test_enums_64_bit_and_repeated_strings),
        cmocka_unit_test(test_oneof_only_the_set_member),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
