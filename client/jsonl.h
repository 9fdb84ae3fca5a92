/* JSON lines in the seed's UserEvent shape <-> Eddy__V1__Event: the parsing half of
 * `eddy ingest`. Internal to libeddy and the CLI (not part of the public API).
 *
 * Accepted keys (lowerCamel as in the seed, or the proto's snake_case): eventId, userId,
 * sessionId, timestamp (or timestampMs; ms since the epoch, a number or a numeric string),
 * eventType ("view", "click", "add_to_cart", "remove_from_cart", "purchase", "search" in any
 * case, with or without an "EVENT_TYPE_" prefix), productId, category, brand, price (number
 * or numeric string), searchQuery, metadata (object; non-string values are stored as their
 * JSON text). Unknown keys are ignored; null is the same as absent. Only what cannot be put
 * on the wire is rejected here (bad JSON, wrong JSON types, unknown event type); the server
 * validates the rest (empty ids, time limits, sizes). */
#ifndef EDDY_CLIENT_JSONL_H
#define EDDY_CLIENT_JSONL_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"

/* Why a line was rejected: the JSON key at fault ("" when the line is not valid JSON) and
 * a readable reason starting with that key, e.g. "eventType: unknown type \"like\"". */
struct jsonl_error {
    char field[32];
    char reason[256];
};

/* Parse one line of 'len' bytes (it need not be NUL-terminated; a trailing newline is
 * fine). On EDDY_OK the caller owns *out; free with jsonl_event_free. On EDDY_ERR_INVALID
 * 'err' says why; on EDDY_ERR_NOMEM nothing is allocated. *out is NULL on any error. */
eddy_err jsonl_parse_event(const char *line, size_t len, Eddy__V1__Event **out,
                           struct jsonl_error *err);

/* Free an event made by jsonl_parse_event. Accepts NULL. */
void jsonl_event_free(Eddy__V1__Event *ev);

/* Whether the line holds only white space (skipped by `eddy ingest`). */
bool jsonl_is_blank(const char *line, size_t len);

/* Parse an event type name as described above into *out; false if unknown. */
bool jsonl_event_type_parse(const char *name, Eddy__V1__EventType *out);

/* The lower-case name of 't' ("add_to_cart"); "unspecified" for unknown values. Static. */
const char *jsonl_event_type_name(Eddy__V1__EventType t);

#endif
