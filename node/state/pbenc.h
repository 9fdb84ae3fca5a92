/* Hand-written protobuf encoding of the state values rewritten at every group commit
 * (product states, user models, window counts), byte for byte what protobuf-c's
 * protobuf_c_message_pack writes for proto3 messages: a zero number, an empty string and
 * a NULL message are omitted, fields go in number order, int64 is a varint (10 bytes when
 * negative), double a little-endian fixed64. protobuf-c's generic encoder walks the
 * descriptors twice (sizes, then bytes), and the nested sizes again at every level: about
 * a fifth of the writer's instructions before. Each encoder computes the size, then
 * writes; the unit tests compare every one with protobuf-c. Tags here are one byte
 * (fields 1 to 15). */
#ifndef EDDY_PBENC_H
#define EDDY_PBENC_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eddy/v1/store.pb-c.h"

size_t pbenc_varint_size(uint64_t v);
uint8_t *pbenc_put_varint(uint8_t *p, uint64_t v);

/* A string field: its encoded size (0 if empty or NULL), its length in *len. */
size_t pbenc_str_size(const char *s, size_t *len);
uint8_t *pbenc_put_str(uint8_t *p, uint8_t tag, const char *s, size_t len);

/* int64 / uint64 / bool / enum fields (varints): encoded size, 0 if zero. */
size_t pbenc_u64_size(uint64_t v);
uint8_t *pbenc_put_u64(uint8_t *p, uint8_t tag, uint64_t v);

/* A double field: 9 bytes, 0 if it equals 0 (-0.0 included, as protobuf-c). */
size_t pbenc_double_size(double v);
uint8_t *pbenc_put_double(uint8_t *p, uint8_t tag, double v);

/* A Decayed sub-message field: encoded size, 0 if NULL. */
size_t pbenc_decayed_size(const Eddy__Store__V1__Decayed *d);
uint8_t *pbenc_put_decayed(uint8_t *p, uint8_t tag, const Eddy__Store__V1__Decayed *d);

/* The header of a length-delimited sub-message field of 'body' bytes. */
size_t pbenc_sub_size(size_t body);
uint8_t *pbenc_put_sub(uint8_t *p, uint8_t tag, size_t body);

/* Whether 'm' carries unknown fields (written by a newer node): leave it to protobuf-c. */
static inline bool pbenc_unknown(const ProtobufCMessage *m)
{
    return m && m->n_unknown_fields != 0;
}

#endif
