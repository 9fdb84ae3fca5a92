/* Unpacked protobuf-c messages as JSON (cJSON), read through their descriptors, for the web
 * console's endpoints: one generic conversion instead of one per message. */
#ifndef EDDY_PBJSON_H
#define EDDY_PBJSON_H

#include <protobuf-c/protobuf-c.h>

struct cJSON;

/* 'm' (borrowed) as a JSON object keyed by the proto field names. Every field is present,
 * defaults included (the page never guesses a missing field), except unset oneof members;
 * an unset sub-message is null. Enums are their value names ("EVENT_TYPE_VIEW"), 64-bit
 * integers plain numbers (exact up to 2^53: counts and times), bytes their length. Returns
 * NULL on allocation failure. Caller owns the result; free with cJSON_Delete. */
struct cJSON *pbjson_from(const ProtobufCMessage *m);

#endif
