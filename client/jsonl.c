/* One JSON line (the seed's UserEvent) -> one Eddy__V1__Event. The event is built from
 * malloc'd strings so that protobuf_c_message_free_unpacked can free it like a decoded one. */
#include "client/jsonl.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    Eddy__V1__EventType type;
} event_types[] = {
    {"view", EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW},
    {"click", EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK},
    {"add_to_cart", EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART},
    {"remove_from_cart", EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART},
    {"purchase", EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE},
    {"search", EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH},
};

#define NTYPES (sizeof(event_types) / sizeof(event_types[0]))

bool jsonl_event_type_parse(const char *name, Eddy__V1__EventType *out)
{
    if (!name)
        return false;
    if (strncasecmp(name, "EVENT_TYPE_", 11) == 0)
        name += 11;
    for (size_t i = 0; i < NTYPES; i++) {
        if (strcasecmp(name, event_types[i].name) == 0) {
            *out = event_types[i].type;
            return true;
        }
    }
    return false;
}

const char *jsonl_event_type_name(Eddy__V1__EventType t)
{
    for (size_t i = 0; i < NTYPES; i++) {
        if (event_types[i].type == t)
            return event_types[i].name;
    }
    return "unspecified";
}

bool jsonl_is_blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (!isspace((unsigned char)line[i]))
            return false;
    }
    return true;
}

void jsonl_event_free(Eddy__V1__Event *ev)
{
    if (ev)
        protobuf_c_message_free_unpacked(&ev->base, NULL);
}

__attribute__((format(printf, 3, 4))) static eddy_err reject(struct jsonl_error *err,
                                                             const char *field,
                                                             const char *fmt, ...)
{
    va_list ap;

    snprintf(err->field, sizeof(err->field), "%s", field);
    va_start(ap, fmt);
    vsnprintf(err->reason, sizeof(err->reason), fmt, ap);
    va_end(ap);
    return EDDY_ERR_INVALID;
}

/* The item under the seed's lowerCamel key, else under the proto's snake_case key. *key is
 * set to the key found (or the camel one) for error messages. null counts as absent. */
static const cJSON *field(const cJSON *obj, const char *camel, const char *snake,
                          const char **key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, camel);
    *key = camel;
    if (!it && snake) {
        it = cJSON_GetObjectItemCaseSensitive(obj, snake);
        if (it)
            *key = snake;
    }
    return cJSON_IsNull(it) ? NULL : it;
}

static eddy_err take_string(const cJSON *obj, const char *camel, const char *snake, char **dst,
                            struct jsonl_error *err)
{
    const char *key;
    const cJSON *it = field(obj, camel, snake, &key);

    if (!it)
        return EDDY_OK; /* stays protobuf_c_empty_string */
    if (!cJSON_IsString(it))
        return reject(err, key, "%s: expected a string", key);
    char *s = strdup(it->valuestring);
    if (!s)
        return EDDY_ERR_NOMEM;
    *dst = s;
    return EDDY_OK;
}

static eddy_err take_timestamp(const cJSON *obj, int64_t *dst, struct jsonl_error *err)
{
    const char *key;
    const cJSON *it = field(obj, "timestamp", "timestamp_ms", &key);

    if (!it)
        it = field(obj, "timestampMs", NULL, &key);
    if (!it)
        return EDDY_OK; /* 0: the server rejects it with its own reason */
    if (cJSON_IsNumber(it)) {
        double v = it->valuedouble;
        if (!isfinite(v) || v != floor(v) || fabs(v) > 9.0e18)
            return reject(err, key, "%s: not an integer number of milliseconds", key);
        *dst = (int64_t)v;
        return EDDY_OK;
    }
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        char *end = NULL;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || *end != '\0' || errno != 0 || isspace((unsigned char)*s))
            return reject(err, key, "%s: not an integer number of milliseconds", key);
        *dst = v;
        return EDDY_OK;
    }
    return reject(err, key, "%s: expected a number", key);
}

static eddy_err take_price(const cJSON *obj, double *dst, struct jsonl_error *err)
{
    const char *key;
    const cJSON *it = field(obj, "price", NULL, &key);

    if (!it)
        return EDDY_OK;
    if (cJSON_IsNumber(it)) {
        *dst = it->valuedouble;
        return EDDY_OK;
    }
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        char *end = NULL;
        errno = 0;
        double v = strtod(s, &end);
        if (end == s || *end != '\0' || errno != 0 || isspace((unsigned char)*s))
            return reject(err, key, "%s: not a number", key);
        *dst = v;
        return EDDY_OK;
    }
    return reject(err, key, "%s: expected a number", key);
}

static eddy_err take_type(const cJSON *obj, Eddy__V1__EventType *dst, struct jsonl_error *err)
{
    const char *key;
    const cJSON *it = field(obj, "eventType", "event_type", &key);

    if (!it)
        return EDDY_OK; /* UNSPECIFIED: the server rejects it */
    if (!cJSON_IsString(it))
        return reject(err, key, "%s: expected a string", key);
    if (!jsonl_event_type_parse(it->valuestring, dst))
        return reject(err, key, "%s: unknown type \"%.64s\"", key, it->valuestring);
    return EDDY_OK;
}

static eddy_err take_metadata(const cJSON *obj, Eddy__V1__Event *ev, struct jsonl_error *err)
{
    const char *key;
    const cJSON *it = field(obj, "metadata", NULL, &key);

    if (!it)
        return EDDY_OK;
    if (!cJSON_IsObject(it))
        return reject(err, key, "%s: expected an object", key);
    size_t n = (size_t)cJSON_GetArraySize(it);
    if (n == 0)
        return EDDY_OK;
    ev->metadata = calloc(n, sizeof(*ev->metadata));
    if (!ev->metadata)
        return EDDY_ERR_NOMEM;
    const cJSON *kv;
    cJSON_ArrayForEach(kv, it)
    {
        Eddy__V1__Event__MetadataEntry *e = malloc(sizeof(*e));
        if (!e)
            return EDDY_ERR_NOMEM;
        eddy__v1__event__metadata_entry__init(e);
        ev->metadata[ev->n_metadata++] = e; /* owned by ev from here on */
        e->key = strdup(kv->string ? kv->string : "");
        if (!e->key)
            return EDDY_ERR_NOMEM;
        /* Strings as they are; anything else as its compact JSON text (3, true, {"a":1}). */
        e->value = cJSON_IsString(kv) ? strdup(kv->valuestring) : cJSON_PrintUnformatted(kv);
        if (!e->value) {
            e->value = (char *)protobuf_c_empty_string;
            return EDDY_ERR_NOMEM;
        }
    }
    return EDDY_OK;
}

eddy_err jsonl_parse_event(const char *line, size_t len, Eddy__V1__Event **out,
                           struct jsonl_error *err)
{
    const char *end = NULL;
    Eddy__V1__Event *ev = NULL;
    eddy_err rc;

    *out = NULL;
    err->field[0] = err->reason[0] = '\0';
    cJSON *root = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (!root) {
        size_t col = end && end >= line ? (size_t)(end - line) + 1 : 1;
        return reject(err, "", "invalid JSON near column %zu", col);
    }
    while (end && end < line + len && isspace((unsigned char)*end))
        end++;
    if (end && end < line + len) {
        rc = reject(err, "", "invalid JSON: unexpected text after the object at column %zu",
                    (size_t)(end - line) + 1);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        rc = reject(err, "", "expected a JSON object");
        goto out;
    }
    rc = EDDY_ERR_NOMEM;
    ev = malloc(sizeof(*ev));
    if (!ev)
        goto out;
    eddy__v1__event__init(ev);

    if ((rc = take_string(root, "eventId", "event_id", &ev->event_id, err)) ||
        (rc = take_string(root, "userId", "user_id", &ev->user_id, err)) ||
        (rc = take_string(root, "sessionId", "session_id", &ev->session_id, err)) ||
        (rc = take_timestamp(root, &ev->timestamp_ms, err)) ||
        (rc = take_type(root, &ev->event_type, err)) ||
        (rc = take_string(root, "productId", "product_id", &ev->product_id, err)) ||
        (rc = take_string(root, "category", NULL, &ev->category, err)) ||
        (rc = take_string(root, "brand", NULL, &ev->brand, err)) ||
        (rc = take_price(root, &ev->price, err)) ||
        (rc = take_string(root, "searchQuery", "search_query", &ev->search_query, err)) ||
        (rc = take_string(root, "recommendationId", "recommendation_id", &ev->recommendation_id,
                          err)) ||
        (rc = take_metadata(root, ev, err)))
        goto out;
    *out = ev;
    ev = NULL;
out:
    if (rc == EDDY_ERR_NOMEM)
        reject(err, "", "out of memory");
    jsonl_event_free(ev);
    cJSON_Delete(root);
    return rc;
}
