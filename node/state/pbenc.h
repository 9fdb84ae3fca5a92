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
#include <stdlib.h>

#include "eddy/v1/store.pb-c.h"

/* Wire types, and a field's tag (its key byte) from its number and wire type. */
enum { PB_WIRE_VARINT = 0, PB_WIRE_I64 = 1, PB_WIRE_LEN = 2, PB_WIRE_I32 = 5 };
#define PB_TAG(field, wire) ((uint8_t)(((field) << 3) | (wire)))
#define PB_FIELD(tag) ((uint32_t)(tag) >> 3)
#define PB_WIRE(tag) ((unsigned)(tag) & 7)

/* The tags of proto/eddy/v1/store.proto that the hand-written encoders and decoders use;
 * unit.node.state.pbenc checks each against the descriptors protobuf-c generates from
 * the .proto (number and type by name): a renumbered field fails it. */
#define PB_DECAYED_BUCKET PB_TAG(1, PB_WIRE_VARINT)
#define PB_DECAYED_CUR PB_TAG(2, PB_WIRE_VARINT)
#define PB_DECAYED_PREV PB_TAG(3, PB_WIRE_VARINT)

#define PB_SCORED_NAME PB_TAG(1, PB_WIRE_LEN)
#define PB_SCORED_SCORE PB_TAG(2, PB_WIRE_LEN)

#define PB_RECENT_ID PB_TAG(1, PB_WIRE_LEN)
#define PB_RECENT_CATEGORY PB_TAG(2, PB_WIRE_LEN)
#define PB_RECENT_TS PB_TAG(3, PB_WIRE_VARINT)
#define PB_RECENT_EVENT_ID PB_TAG(4, PB_WIRE_LEN)

#define PB_CART_PRODUCT_ID PB_TAG(1, PB_WIRE_LEN)
#define PB_CART_CATEGORY PB_TAG(2, PB_WIRE_LEN)
#define PB_CART_TS PB_TAG(3, PB_WIRE_VARINT)
#define PB_CART_EVENT_ID PB_TAG(4, PB_WIRE_LEN)
#define PB_CART_IN_CART PB_TAG(5, PB_WIRE_VARINT)

#define PB_MODEL_CATEGORIES PB_TAG(1, PB_WIRE_LEN)
#define PB_MODEL_BRANDS PB_TAG(2, PB_WIRE_LEN)
#define PB_MODEL_PRICE_MIN PB_TAG(3, PB_WIRE_I64)
#define PB_MODEL_PRICE_MAX PB_TAG(4, PB_WIRE_I64)
#define PB_MODEL_PRICE_SUM PB_TAG(5, PB_WIRE_LEN)
#define PB_MODEL_PRICE_N PB_TAG(6, PB_WIRE_LEN)
#define PB_MODEL_VIEWS PB_TAG(7, PB_WIRE_LEN)
#define PB_MODEL_SEARCHES PB_TAG(8, PB_WIRE_LEN)
#define PB_MODEL_PURCHASES PB_TAG(9, PB_WIRE_LEN)
#define PB_MODEL_CART PB_TAG(10, PB_WIRE_LEN)
#define PB_MODEL_LAST_TS PB_TAG(11, PB_WIRE_VARINT)
#define PB_MODEL_EVENTS PB_TAG(12, PB_WIRE_VARINT)

#define PB_COUNTS_VIEW PB_TAG(1, PB_WIRE_VARINT)
#define PB_COUNTS_CLICK PB_TAG(2, PB_WIRE_VARINT)
#define PB_COUNTS_ADD_TO_CART PB_TAG(3, PB_WIRE_VARINT)
#define PB_COUNTS_REMOVE_FROM_CART PB_TAG(4, PB_WIRE_VARINT)
#define PB_COUNTS_PURCHASE PB_TAG(5, PB_WIRE_VARINT)
#define PB_COUNTS_SEARCH PB_TAG(6, PB_WIRE_VARINT)
#define PB_COUNTS_CATEGORY PB_TAG(7, PB_WIRE_LEN)

#define PB_NEIGHBOUR_PRODUCT_ID PB_TAG(1, PB_WIRE_LEN)
#define PB_NEIGHBOUR_SCORE PB_TAG(2, PB_WIRE_LEN)
#define PB_NEIGHBOUR_CATEGORY PB_TAG(3, PB_WIRE_LEN)

#define PB_PRODUCT_CATEGORY PB_TAG(1, PB_WIRE_LEN)
#define PB_PRODUCT_BRAND PB_TAG(2, PB_WIRE_LEN)
#define PB_PRODUCT_PRICE PB_TAG(3, PB_WIRE_I64)
#define PB_PRODUCT_POPULARITY PB_TAG(4, PB_WIRE_LEN)
#define PB_PRODUCT_NEIGHBOURS PB_TAG(5, PB_WIRE_LEN)
#define PB_PRODUCT_LAST_TS PB_TAG(6, PB_WIRE_VARINT)
#define PB_PRODUCT_CATEGORY_INDEXED PB_TAG(7, PB_WIRE_LEN)
#define PB_PRODUCT_PRICE_TS PB_TAG(8, PB_WIRE_VARINT)
#define PB_PRODUCT_CATEGORY_TS PB_TAG(9, PB_WIRE_VARINT)
#define PB_PRODUCT_BRAND_TS PB_TAG(10, PB_WIRE_VARINT)
#define PB_PRODUCT_PAIR_BUCKET PB_TAG(11, PB_WIRE_VARINT)

#define PB_COOC_SCORE PB_TAG(1, PB_WIRE_LEN)
#define PB_COOC_CATEGORY PB_TAG(2, PB_WIRE_LEN)
#define PB_COOC_CATEGORY_TS PB_TAG(3, PB_WIRE_VARINT)

#define PB_MARKS_NEXT_SEQ PB_TAG(1, PB_WIRE_LEN) /* packed */

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

/* Where an encoder writes: into 'scratch' (its 'cap' bytes; NULL, 0: none) when the bytes
 * fit, else into a block it mallocs. After an encode, 'buf' and 'len' are the bytes; 'buf'
 * is the caller's to free unless it is 'scratch'. */
struct pbenc_out {
    uint8_t *scratch;
    size_t cap;
    uint8_t *buf;
    size_t len;
};

/* Room for an encoding of n bytes: o->buf and o->len set; false if out of memory. */
static inline bool pbenc_reserve(struct pbenc_out *o, size_t n)
{
    o->buf = n <= o->cap && o->scratch ? o->scratch : malloc(n ? n : 1);
    o->len = n;
    return o->buf != NULL;
}

/* Whether 'm' carries unknown fields (written by a newer node): leave it to protobuf-c. */
static inline bool pbenc_unknown(const ProtobufCMessage *m)
{
    return m && m->n_unknown_fields != 0;
}

#endif
