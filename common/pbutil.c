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

/* What encoding and decoding leave of the scalar at 'p': a bool 0 or 1, and 0.0 for -0.0
 * where proto3 writes no zero (a plain field, not a oneof's). A copy must be the decode
 * bit for bit: the apply compares an event with its log record's decode. */
static void scalar_canonical(const ProtobufCFieldDescriptor *f, void *p)
{
    bool plain = f->label == PROTOBUF_C_LABEL_NONE && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF);
    if (f->type == PROTOBUF_C_TYPE_BOOL)
        *(protobuf_c_boolean *)p = *(const protobuf_c_boolean *)p != 0;
    else if (plain && f->type == PROTOBUF_C_TYPE_DOUBLE && *(const double *)p == 0)
        *(double *)p = 0;
    else if (plain && f->type == PROTOBUF_C_TYPE_FLOAT && *(const float *)p == 0)
        *(float *)p = 0;
}

/* One value of field 'f' from 'src' to 'dst' as protobuf_c_message_unpack leaves it: a
 * string, bytes or message in a block of its own (in 'dst', which holds none yet), an
 * empty string at the field's shared default (free_unpacked skips it) unless 'each' (an
 * element of a repeated field, always freed); a scalar, already copied with the struct,
 * made canonical. False when out of memory, *dst then as empty as before. */
static bool copy_value(const ProtobufCFieldDescriptor *f, const void *src, void *dst, bool each)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)src;
        if (!each && f->default_value && (!s || !s[0] || (const void *)s == f->default_value)) {
            *(const char **)dst = f->default_value; /* as unpacked when absent */
            return true;
        }
        char *c = strdup(s ? s : "");
        *(char **)dst = c;
        return c != NULL;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = src;
        ProtobufCBinaryData *o = dst;
        const ProtobufCBinaryData *def = f->default_value;
        if (!each && def && b->data == def->data) {
            *o = *b;
            return true;
        }
        if (b->len == 0)
            return true;
        if (!(o->data = malloc(b->len)))
            return false;
        memcpy(o->data, b->data, b->len);
        o->len = b->len;
        return true;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(const ProtobufCMessage *const *)src;
        if (!m)
            return true;
        ProtobufCMessage *c = pb_copy(m, m->descriptor);
        *(ProtobufCMessage **)dst = c;
        return c != NULL;
    }
    default: /* the struct's bytes, copied with it */
        scalar_canonical(f, dst);
        return true;
    }
}

static bool points(ProtobufCType type)
{
    return type == PROTOBUF_C_TYPE_STRING || type == PROTOBUF_C_TYPE_BYTES ||
           type == PROTOBUF_C_TYPE_MESSAGE;
}

/* Field 'f' of 'src' into 'dst', whose member is empty (no array, no string, no message). */
static bool copy_field(const ProtobufCFieldDescriptor *f, const ProtobufCMessage *src,
                       ProtobufCMessage *dst)
{
    const char *from = (const char *)src + f->offset;
    char *to = (char *)dst + f->offset;
    if (f->label != PROTOBUF_C_LABEL_REPEATED)
        return copy_value(f, from, to, false);
    size_t n = *(const size_t *)((const char *)src + f->quantifier_offset);
    const char *arr = *(const char *const *)from;
    if (n == 0 || !arr)
        return true;
    size_t es = elem_size(f->type);
    char *copy = points(f->type) ? calloc(n, es) : malloc(n * es);
    if (!copy)
        return false;
    *(char **)to = copy;
    if (!points(f->type)) {
        memcpy(copy, arr, n * es);
        for (size_t k = 0; f->type == PROTOBUF_C_TYPE_BOOL && k < n; k++)
            scalar_canonical(f, copy + k * es);
        *(size_t *)((char *)dst + f->quantifier_offset) = n;
        return true;
    }
    /* counted as it fills: free_unpacked frees the elements copied so far */
    for (size_t k = 0; k < n; k++) {
        bool ok = copy_value(f, arr + k * es, copy + k * es, true);
        *(size_t *)((char *)dst + f->quantifier_offset) = k + 1;
        if (!ok)
            return false;
    }
    return true;
}

/* Whether field 'f' of 'm' holds a value: every field but the unselected members of a
 * oneof, which share the selected one's storage. */
static bool field_live(const ProtobufCFieldDescriptor *f, const ProtobufCMessage *m)
{
    return !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
           *(const uint32_t *)((const char *)m + f->quantifier_offset) == f->id;
}

/* The fields 'm' did not know (kept by protobuf_c_message_unpack) into 'c', which has none. */
static bool copy_unknown(const ProtobufCMessage *m, ProtobufCMessage *c)
{
    c->unknown_fields = calloc(m->n_unknown_fields, sizeof(*c->unknown_fields));
    if (!c->unknown_fields)
        return false;
    for (size_t k = 0; k < m->n_unknown_fields; k++) {
        const ProtobufCMessageUnknownField *u = &m->unknown_fields[k];
        uint8_t *data = malloc(u->len ? u->len : 1);
        if (!data)
            return false;
        if (u->len)
            memcpy(data, u->data, u->len);
        c->unknown_fields[c->n_unknown_fields++] = (ProtobufCMessageUnknownField){
            u->tag, u->wire_type, u->len, data};
    }
    return true;
}

/* 'm' through its encoding, for a type 'd' other than its own. */
static ProtobufCMessage *copy_encoded(const ProtobufCMessage *m,
                                      const ProtobufCMessageDescriptor *d)
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

ProtobufCMessage *pb_copy(const ProtobufCMessage *m, const ProtobufCMessageDescriptor *d)
{
    if (m->descriptor != d)
        return copy_encoded(m, d);
    /* Field by field rather than encoded and decoded: the decode's two passes over the
     * bytes and its allocations were most of an in-process Recommend answer's copy. The
     * struct's bytes first (every scalar, has_ flag and oneof case), then each pointer
     * emptied before it is copied, so that a copy stopped by a failed allocation can be
     * freed like any unpacked message. */
    ProtobufCMessage *c = malloc(d->sizeof_message);
    if (!c)
        return NULL;
    memcpy(c, m, d->sizeof_message);
    c->n_unknown_fields = 0;
    c->unknown_fields = NULL;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!field_live(f, m))
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            *(void **)((char *)c + f->offset) = NULL;
            *(size_t *)((char *)c + f->quantifier_offset) = 0;
        } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
            *(ProtobufCBinaryData *)((char *)c + f->offset) = (ProtobufCBinaryData){0, NULL};
        } else if (points(f->type)) {
            *(void **)((char *)c + f->offset) = NULL;
        }
    }
    bool ok = true;
    for (unsigned i = 0; i < d->n_fields && ok; i++)
        ok = !field_live(&d->fields[i], m) || copy_field(&d->fields[i], m, c);
    if (ok && m->n_unknown_fields > 0)
        ok = copy_unknown(m, c);
    if (!ok) {
        protobuf_c_message_free_unpacked(c, NULL);
        return NULL;
    }
    return c;
}
