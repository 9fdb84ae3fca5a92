/* A log record's bytes (table LOG, docs/design.md §4 "Layout 6"): an event in a compact
 * encoding of its own, every other kind (and an event the compact encoding cannot hold) as
 * the protobuf LogRecord of proto/eddy/v1/store.proto. The two never look alike: a
 * compact record's first byte has wire type 7, which no protobuf field has, so the reader
 * takes either, and the records of an older layout, of a checkpoint or of another node
 * read as they were written.
 *
 * The compact event: a header byte (the event type), a byte of the optional fields
 * present, the time as a zigzag varint, then the strings, each a varint of its length and
 * form followed by its bytes: raw; a canonical UUID in 16 bytes; or a prefix and a decimal
 * number as a varint ("u123456": 5 bytes). The price is a varint of cents when it is one,
 * else the double's 8 bytes. No allocation but the decoded message's. */
#ifndef EDDY_LOGREC_H
#define EDDY_LOGREC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/store.pb-c.h"
#include "node/state/pbenc.h"

/* Encode 'ev' compactly into 'o' (pbenc_out's contract). False where the compact
 * encoding would not give 'ev' back as a protobuf unpack of its record does (unknown
 * fields, a type beyond the header's) or out of memory: the caller writes the protobuf
 * LogRecord instead. */
bool logrec_pack_event(const Eddy__V1__Event *ev, struct pbenc_out *o);

/* Write the compact form of the 'len' bytes at 's' (a string of a compact record, as
 * above) to 'out', which has room for len + 10 bytes; the bytes written. *raw: it is the
 * raw form (the string had no shorter one). Distinct strings have distinct forms, none of
 * which starts with byte 0x05. */
size_t logrec_pack_str(const char *s, size_t len, uint8_t *out, bool *raw);

/* Whether 'buf' holds a compact event record (else it is a protobuf LogRecord). */
bool logrec_is_compact(const uint8_t *buf, size_t len);

/* Decode a log record of either encoding. NULL if the bytes are not a record or out of
 * memory. Caller owns the result; free with eddy__store__v1__log_record__free_unpacked. */
Eddy__Store__V1__LogRecord *logrec_unpack(const uint8_t *buf, size_t len);

#endif
