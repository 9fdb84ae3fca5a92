/* In-place edits of unpacked protobuf-c messages. */
#include "common/pbutil.h"

#include <stdlib.h>
#include <string.h>

void pb_clear_str(char **field)
{
    if (*field && *field != protobuf_c_empty_string)
        free(*field);
    *field = (char *)protobuf_c_empty_string;
}

eddy_err pb_set_str(char **field, const char *val)
{
    if (val && *field && strcmp(*field, val) == 0)
        return EDDY_OK;
    char *copy = NULL;
    if (val && val[0]) {
        copy = strdup(val);
        if (!copy)
            return EDDY_ERR_NOMEM;
    }
    pb_clear_str(field);
    if (copy)
        *field = copy;
    return EDDY_OK;
}

eddy_err pb_grow(void **arr, size_t n, size_t size)
{
    /* Unpacked arrays are allocated at their exact size, so there is no spare capacity to
     * track: grow by one. The arrays edited this way are short (bounded by flags). */
    void *p = realloc(*arr, (n + 1) * size);
    if (!p)
        return EDDY_ERR_NOMEM;
    *arr = p;
    return EDDY_OK;
}

bool pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

size_t pb_chunk_size(size_t n)
{
    size_t c = (n + 8 + 15) & ~(size_t)15;
    return c < 32 ? 32 : c;
}

/* The size of one element of a repeated field of 'type' in its array. */
static size_t elem_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING: case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4; /* 32-bit integers, float, bool (protobuf_c_boolean), enum */
    }
}

/* The heap behind one value of field 'f' stored at 'p'. */
static size_t value_heap(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return s && s != protobuf_c_empty_string ? pb_chunk_size(strlen(s) + 1) : 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        return b->data ? pb_chunk_size(b->len) : 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(const ProtobufCMessage *const *)p;
        return m ? pb_heap_size(m) : 0;
    }
    default:
        return 0;
    }
}

size_t pb_heap_size(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    size_t n = pb_chunk_size(d->sizeof_message);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *member = (const char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t count = *(const size_t *)((const char *)m + f->quantifier_offset);
            const char *arr = *(const char *const *)member;
            if (count == 0 || !arr)
                continue;
            size_t es = elem_size(f->type);
            n += pb_chunk_size(count * es);
            for (size_t k = 0; k < count; k++)
                n += value_heap(f, arr + k * es);
        } else if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
                   *(const uint32_t *)((const char *)m + f->quantifier_offset) == f->id) {
            n += value_heap(f, member);
        }
    }
    return n;
}

ProtobufCMessage *pb_copy(const ProtobufCMessage *m, const ProtobufCMessageDescriptor *d)
{
    uint8_t small[4096]; /* most in-process requests and answers: no block for the bytes */
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = len <= sizeof(small) ? small : malloc(len);
    if (!buf)
        return NULL;
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *copy = protobuf_c_message_unpack(d, NULL, len, buf);
    if (buf != small)
        free(buf);
    return copy;
}
