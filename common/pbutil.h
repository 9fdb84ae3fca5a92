/* Small helpers for editing unpacked protobuf-c messages in place. protobuf-c unpacks
 * every string and array into its own malloc'd block, and frees them with free() in
 * protobuf_c_message_free_unpacked, so edits use malloc/realloc/free too. Unset strings
 * point to the shared protobuf_c_empty_string, which is never freed. */
#ifndef EDDY_PBUTIL_H
#define EDDY_PBUTIL_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Replace the string at *field by a copy of 'val' (NULL or "" makes it empty). */
eddy_err pb_set_str(char **field, const char *val);

/* Free a string field's value (if owned) and make it empty. */
void pb_clear_str(char **field);

/* Make room for one more element in a repeated field: *arr has n elements of 'size'
 * bytes; on success *arr may have moved and has space for *n + 1. */
eddy_err pb_grow(void **arr, size_t n, size_t size);

/* What a malloc'd block of n bytes occupies: glibc adds an 8-byte header and rounds to 16,
 * 32 at least. */
size_t pb_chunk_size(size_t n);

/* The heap a message unpacked (and edited) this way occupies: the message and each of its
 * strings, bytes, repeated arrays and sub-messages, each malloc'd piece rounded as glibc
 * does (header included). What the decoded values a txn keeps really cost. */
size_t pb_heap_size(const ProtobufCMessage *m);

/* Read the varint at *p (before 'end') into *v and move *p past it: false if it is cut
 * short or longer than 10 bytes (then *p is left anywhere before 'end'). */
bool pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v);

/* A copy of 'm' as the message type 'd' as a call from the network would hand it over
 * (protobuf-c has no copy): every string, bytes, array and sub-message in a block of its
 * own, unset strings at their shared default, unknown fields kept. Made field by field
 * when 'd' is m's own type, else through m's encoding. NULL when out of memory. Free it
 * with protobuf_c_message_free_unpacked. */
ProtobufCMessage *pb_copy(const ProtobufCMessage *m, const ProtobufCMessageDescriptor *d);

/* Whether a string field is empty (NULL or ""). */
static inline int pb_empty(const char *s)
{
    return s == NULL || s[0] == '\0';
}

#endif
