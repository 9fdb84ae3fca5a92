/* Validation rules for incoming events. */
#include "node/ingest/validate.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const validate_fields[VALIDATE_FIELD_COUNT] = {
    "event_id", "user_id",  "session_id", "event_type", "product_id", "search_query",
    "category", "brand",    "timestamp_ms", "price",    "metadata",
};

size_t validate_field_index(const char *field)
{
    size_t i = 0;
    while (i < VALIDATE_FIELD_COUNT && strcmp(validate_fields[i], field) != 0)
        i++;
    return i;
}

bool validate_printable_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            p++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        p += n + 1;
    }
    return true;
}

#define FAIL(f, ...)                                                                     \
    do {                                                                                 \
        snprintf(field, fieldlen, "%s", f);                                              \
        snprintf(reason, reasonlen, f ": " __VA_ARGS__);                                 \
        return false;                                                                    \
    } while (0)

static bool check_str(const char *name, const char *s, int64_t max, bool required, char *field,
                      size_t fieldlen, char *reason, size_t reasonlen)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0) {
        if (!required)
            return true;
        snprintf(field, fieldlen, "%s", name);
        snprintf(reason, reasonlen, "%s: required", name);
        return false;
    }
    if ((int64_t)n > max) {
        snprintf(field, fieldlen, "%s", name);
        snprintf(reason, reasonlen, "%s: %zu bytes, longer than the limit of %" PRId64, name, n,
                 max);
        return false;
    }
    if (!validate_printable_utf8(s)) {
        snprintf(field, fieldlen, "%s", name);
        snprintf(reason, reasonlen, "%s: not valid UTF-8 or contains control characters", name);
        return false;
    }
    return true;
}

bool validate_event(const struct limits *l, const Eddy__V1__Event *ev, int64_t now_ms,
                    char *field, size_t fieldlen, char *reason, size_t reasonlen)
{
#define STR(name, val, max, req)                                                         \
    if (!check_str(name, val, max, req, field, fieldlen, reason, reasonlen))            \
        return false
    STR("event_id", ev->event_id, l->max_id_bytes, true);
    STR("user_id", ev->user_id, l->max_id_bytes, true);
    STR("session_id", ev->session_id, l->max_id_bytes, false);
    STR("recommendation_id", ev->recommendation_id, l->max_id_bytes, false);

    switch (ev->event_type) {
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW:
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK:
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART:
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_REMOVE_FROM_CART:
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE:
        STR("product_id", ev->product_id, l->max_id_bytes, true);
        STR("search_query", ev->search_query, l->max_query_bytes, false);
        break;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_SEARCH:
        STR("product_id", ev->product_id, l->max_id_bytes, false);
        STR("search_query", ev->search_query, l->max_query_bytes, true);
        break;
    case EDDY__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED:
        FAIL("event_type", "unspecified");
    default:
        FAIL("event_type", "unknown value %d", (int)ev->event_type);
    }
    STR("category", ev->category, l->max_name_bytes, false);
    STR("brand", ev->brand, l->max_name_bytes, false);
#undef STR

    if (ev->timestamp_ms <= 0)
        FAIL("timestamp_ms", "must be a positive Unix time in milliseconds, got %" PRId64,
             ev->timestamp_ms);
    if (ev->timestamp_ms > now_ms + l->max_future_skew_ms)
        FAIL("timestamp_ms", "%" PRId64 " ms in the future (limit %" PRId64 ")",
             ev->timestamp_ms - now_ms, l->max_future_skew_ms);
    if (l->max_event_age_ms > 0 && ev->timestamp_ms < now_ms - l->max_event_age_ms)
        FAIL("timestamp_ms", "%" PRId64 " ms old (limit %" PRId64 ")", now_ms - ev->timestamp_ms,
             l->max_event_age_ms);
    if (!isfinite(ev->price) || ev->price < 0)
        FAIL("price", "must be a finite number >= 0");

    if ((int64_t)ev->n_metadata > l->max_metadata_entries)
        FAIL("metadata", "%zu entries, more than the limit of %" PRId64, ev->n_metadata,
             l->max_metadata_entries);
    int64_t bytes = 0;
    for (size_t i = 0; i < ev->n_metadata; i++) {
        const Eddy__V1__Event__MetadataEntry *e = ev->metadata[i];
        if (!e->key || !e->key[0])
            FAIL("metadata", "entry %zu has an empty key", i);
        bytes += (int64_t)strlen(e->key) + (e->value ? (int64_t)strlen(e->value) : 0);
    }
    if (bytes > l->max_metadata_bytes)
        FAIL("metadata", "%" PRId64 " bytes, more than the limit of %" PRId64, bytes,
             l->max_metadata_bytes);
    return true;
}
