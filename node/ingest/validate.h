/* Per-event validation of Ingest (docs/design.md §9). Each rule gives its own reason, starting
 * with the field name, so a client can fix exactly what was wrong; the other events of the
 * batch are unaffected. Pure: the clock is a parameter. */
#ifndef EDDY_VALIDATE_H
#define EDDY_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eddy/v1/eddy.pb-c.h"

struct limits {
    int64_t max_id_bytes;          /* event_id, user_id, session_id, product_id (128) */
    int64_t max_name_bytes;        /* category, brand (128) */
    int64_t max_query_bytes;       /* search_query (512) */
    int64_t max_metadata_entries;  /* (32) */
    int64_t max_metadata_bytes;    /* keys + values (4096) */
    int64_t max_future_skew_ms;    /* timestamp may be this far ahead of now (5 min) */
    int64_t max_event_age_ms;      /* and this far behind (0 = no limit) */
};

/* Check 'ev' at wall time 'now_ms'. Returns true if valid; otherwise false with the field
 * name in 'field' and the reason in 'reason'. */
bool validate_event(const struct limits *l, const Eddy__V1__Event *ev, int64_t now_ms,
                    char *field, size_t fieldlen, char *reason, size_t reasonlen);

/* The field names validate_event reports: the bounded set of rejection reasons (metrics
 * label them with it). */
#define VALIDATE_FIELD_COUNT 11
extern const char *const validate_fields[VALIDATE_FIELD_COUNT];

/* Index of 'field' in validate_fields, or VALIDATE_FIELD_COUNT if it is none of them. */
size_t validate_field_index(const char *field);

/* Whether 's' is valid UTF-8 without control characters (ids must be printable). */
bool validate_printable_utf8(const char *s);

#endif
