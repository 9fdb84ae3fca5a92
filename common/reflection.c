/* gRPC server reflection over rpc_server: the index of the embedded descriptor set and the
 * ServerReflectionInfo stream answering from it (see reflection.h; the protocol is grpc/grpc's
 * doc/server-reflection.md).
 *
 * The set is split into its files by hand (it is one repeated bytes field), so each answer
 * carries a file's bytes exactly as protoc wrote them; each file is also decoded with the
 * subset of descriptor.proto in proto/eddy/internal/ to learn its name, imports and
 * symbols. v1 and v1alpha share one handler: their messages are identical on the wire.
 *
 * Threads: the index is built once and then only read, so handler threads share it
 * without locks. Each request is answered on the handler thread it arrives on, from memory:
 * a lookup in two hash maps and a walk of the file's imports. */
#include "common/reflection.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/pbutil.h"
#include "common/strmap.h"
#include "eddy/internal/descriptor.pb-c.h"

#define MAX_FILES 4096
#define MAX_SYMBOLS (1 << 20)
#define SYMBOL_MAX 1024 /* longest fully-qualified name indexed */

/* The cases of a request's and of an answer's oneof. */
#define ASK(x) GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##x
#define ANSWER(x) GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##x

#define V1_METHOD "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define V1ALPHA_METHOD "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

typedef Eddy__Internal__Descriptor__FileDescriptorProto FileProto;
typedef Eddy__Internal__Descriptor__DescriptorProto MessageProto;
typedef Eddy__Internal__Descriptor__EnumDescriptorProto EnumProto;
typedef Eddy__Internal__Descriptor__FieldDescriptorProto FieldProto;
typedef Grpc__Reflection__V1__ServerReflectionRequest Request;
typedef Grpc__Reflection__V1__ServerReflectionResponse Response;

struct file {
    ProtobufCBinaryData bytes; /* borrowed from the set */
    FileProto *fd;             /* decoded (owned) */
};

/* An extension field: the message it extends (without the leading '.') and its number. */
struct extension {
    char *extendee; /* owned */
    int32_t number;
    size_t file;
};

/* The index registered on one server: the handler needs both. */
struct binding {
    struct binding *next;
    reflection *r;
    const rpc_server *s;
};

struct reflection {
    struct file *files;
    size_t nfiles;
    struct strmap by_name;  /* file name -> index + 1 */
    struct strmap symbols;  /* fully-qualified name -> index + 1 of its file */
    struct strmap messages; /* message types only, for all_extension_numbers_of_type */
    struct extension *exts;
    size_t nexts, exts_cap;
    struct binding *bindings; /* owned; one per reflection_register */
};

/* One answer and everything it points to that the answer owns (see reflection_answer). */
struct answer {
    Response resp; /* first: the answer's address is the struct's */
    Grpc__Reflection__V1__FileDescriptorResponse files;
    Grpc__Reflection__V1__ExtensionNumberResponse numbers;
    Grpc__Reflection__V1__ListServiceResponse services;
    Grpc__Reflection__V1__ErrorResponse error;
    ProtobufCBinaryData *file_bytes;
    int32_t *ext_numbers;
    Grpc__Reflection__V1__ServiceResponse *service_msgs;
    Grpc__Reflection__V1__ServiceResponse **service_ptrs;
    char *names;     /* the service names, NUL-separated */
    char error_msg[SYMBOL_MAX + 64];
};

/* ---------------------------------------------------------------- splitting the set */

/* Call 'fn' for each 'file' (field 1) of a FileDescriptorSet, in order; other fields are
 * skipped. False on malformed bytes or when 'fn' fails. */
static bool each_file(const uint8_t *set, size_t len, bool (*fn)(void *, const uint8_t *, size_t),
                      void *ud)
{
    const uint8_t *p = set, *end = set + len;
    while (p < end) {
        uint64_t key, n;
        if (!pb_read_varint(&p, end, &key))
            return false;
        switch (key & 7) {
        case 0:
            if (!pb_read_varint(&p, end, &n))
                return false;
            break;
        case 1:
        case 5:
            n = (key & 7) == 1 ? 8 : 4;
            if ((uint64_t)(end - p) < n)
                return false;
            p += n;
            break;
        case 2:
            if (!pb_read_varint(&p, end, &n) || n > (uint64_t)(end - p))
                return false;
            if (key >> 3 == 1 && !fn(ud, p, (size_t)n))
                return false;
            p += n;
            break;
        default:
            return false;
        }
    }
    return true;
}

/* ---------------------------------------------------------------- indexing */

/* The state of building the index: the first error wins. */
struct build {
    reflection *r;
    char *why;
    size_t whylen;
    bool failed;
};

static bool build_fail(struct build *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool build_fail(struct build *b, const char *fmt, ...)
{
    if (!b->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->why, b->whylen, fmt, ap);
        va_end(ap);
    }
    b->failed = true;
    return false;
}

/* A name in construction: 'scope' is the current prefix, extended and cut back in place. */
struct name {
    char buf[SYMBOL_MAX + 1];
    size_t len;
};

/* Append ".part" (or "part" at the top) to 'n'; returns the old length to cut back to,
 * or SIZE_MAX when the name would be too long. */
static size_t name_push(struct name *n, const char *part)
{
    size_t old = n->len, plen = part ? strlen(part) : 0;
    size_t need = old + (old ? 1 : 0) + plen;
    if (plen == 0 || need > SYMBOL_MAX)
        return SIZE_MAX;
    if (old)
        n->buf[n->len++] = '.';
    memcpy(n->buf + n->len, part, plen);
    n->len += plen;
    n->buf[n->len] = '\0';
    return old;
}

static void name_pop(struct name *n, size_t old)
{
    n->len = old;
    n->buf[old] = '\0';
}

/* Index 'n' + "." + 'part' as a symbol of file 'fi' (also as a message type if 'message');
 * the name stays pushed when 'keep' (the caller pops it). */
static bool add_symbol(struct build *b, struct name *n, const char *part, size_t fi,
                       bool message, bool keep, size_t *old)
{
    size_t o = name_push(n, part);
    if (o == SIZE_MAX)
        return build_fail(b, "a name is empty or longer than 1024 bytes near '%s'", n->buf);
    void *v = (void *)(uintptr_t)(fi + 1);
    if (strmap_put(&b->r->symbols, n->buf, n->len, v) != EDDY_OK ||
        (message && strmap_put(&b->r->messages, n->buf, n->len, v) != EDDY_OK))
        return build_fail(b, "too many symbols (at '%s')", n->buf);
    if (keep)
        *old = o;
    else
        name_pop(n, o);
    return true;
}

static bool add_extension(struct build *b, const FieldProto *f, size_t fi)
{
    reflection *r = b->r;
    if (!f->extendee || !f->has_number)
        return true;
    if (r->nexts == r->exts_cap) {
        size_t cap = r->exts_cap ? 2 * r->exts_cap : 8;
        struct extension *e = realloc(r->exts, cap * sizeof(*e));
        if (!e)
            return build_fail(b, "out of memory");
        r->exts = e;
        r->exts_cap = cap;
    }
    const char *t = f->extendee[0] == '.' ? f->extendee + 1 : f->extendee;
    struct extension *e = &r->exts[r->nexts];
    if (!(e->extendee = strdup(t)))
        return build_fail(b, "out of memory");
    e->number = f->number;
    e->file = fi;
    r->nexts++;
    return true;
}

/* An enum is a symbol of its scope; its values are symbols of the same scope, beside it
 * (protobuf's C++ scoping, which descriptor pools and grpcurl follow). */
static bool index_enum(struct build *b, struct name *n, const EnumProto *e, size_t fi)
{
    if (!add_symbol(b, n, e->name, fi, false, false, NULL))
        return false;
    for (size_t i = 0; i < e->n_value; i++)
        if (!add_symbol(b, n, e->value[i]->name, fi, false, false, NULL))
            return false;
    return true;
}

static bool index_message(struct build *b, struct name *n, const MessageProto *m, size_t fi)
{
    size_t old = 0; /* set when add_symbol succeeds; -O3 cannot see it */
    if (!add_symbol(b, n, m->name, fi, true, true, &old))
        return false;
    bool ok = true;
    for (size_t i = 0; ok && i < m->n_field; i++)
        ok = add_symbol(b, n, m->field[i]->name, fi, false, false, NULL);
    for (size_t i = 0; ok && i < m->n_oneof_decl; i++)
        ok = add_symbol(b, n, m->oneof_decl[i]->name, fi, false, false, NULL);
    for (size_t i = 0; ok && i < m->n_extension; i++)
        ok = add_symbol(b, n, m->extension[i]->name, fi, false, false, NULL) &&
             add_extension(b, m->extension[i], fi);
    for (size_t i = 0; ok && i < m->n_enum_type; i++)
        ok = index_enum(b, n, m->enum_type[i], fi);
    for (size_t i = 0; ok && i < m->n_nested_type; i++)
        ok = index_message(b, n, m->nested_type[i], fi);
    name_pop(n, old);
    return ok;
}

static bool index_file(struct build *b, size_t fi)
{
    const FileProto *fd = b->r->files[fi].fd;
    struct name n = {.len = 0};
    n.buf[0] = '\0';
    if (fd->package && fd->package[0] && name_push(&n, fd->package) == SIZE_MAX)
        return build_fail(b, "package name too long in %s", fd->name);
    bool ok = true;
    for (size_t i = 0; ok && i < fd->n_message_type; i++)
        ok = index_message(b, &n, fd->message_type[i], fi);
    for (size_t i = 0; ok && i < fd->n_enum_type; i++)
        ok = index_enum(b, &n, fd->enum_type[i], fi);
    for (size_t i = 0; ok && i < fd->n_extension; i++)
        ok = add_symbol(b, &n, fd->extension[i]->name, fi, false, false, NULL) &&
             add_extension(b, fd->extension[i], fi);
    for (size_t i = 0; ok && i < fd->n_service; i++) {
        const Eddy__Internal__Descriptor__ServiceDescriptorProto *sv = fd->service[i];
        size_t old = 0;
        ok = add_symbol(b, &n, sv->name, fi, false, true, &old);
        for (size_t k = 0; ok && k < sv->n_method; k++)
            ok = add_symbol(b, &n, sv->method[k]->name, fi, false, false, NULL);
        if (ok)
            name_pop(&n, old);
    }
    return ok;
}

/* each_file's callback: decode one file and add it to the file table. */
static bool add_file(void *ud, const uint8_t *bytes, size_t len)
{
    struct build *b = ud;
    reflection *r = b->r;
    if (r->nfiles >= MAX_FILES)
        return build_fail(b, "more than %d files", MAX_FILES);
    FileProto *fd = (FileProto *)protobuf_c_message_unpack(
        &eddy__internal__descriptor__file_descriptor_proto__descriptor, NULL, len, bytes);
    if (!fd)
        return build_fail(b, "a file of the set does not decode");
    if (!fd->name || !fd->name[0]) {
        protobuf_c_message_free_unpacked(&fd->base, NULL);
        return build_fail(b, "a file has no name");
    }
    struct file *f = realloc(r->files, (r->nfiles + 1) * sizeof(*f));
    if (!f) {
        protobuf_c_message_free_unpacked(&fd->base, NULL);
        return build_fail(b, "out of memory");
    }
    r->files = f;
    r->files[r->nfiles] = (struct file){{len, (uint8_t *)bytes}, fd};
    r->nfiles++;
    bool added = false;
    eddy_err e = EDDY_OK;
    void **slot = strmap_slot(&r->by_name, fd->name, strlen(fd->name), &added, &e);
    if (!slot)
        return build_fail(b, "too many files (at %s)", fd->name);
    if (!added)
        return build_fail(b, "file %s is in the set twice", fd->name);
    *slot = (void *)(uintptr_t)r->nfiles;
    return true;
}

reflection *reflection_new(const uint8_t *set, size_t len, char *why, size_t whylen)
{
    reflection *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    strmap_init(&r->by_name, MAX_FILES);
    strmap_init(&r->symbols, MAX_SYMBOLS);
    strmap_init(&r->messages, MAX_SYMBOLS);
    struct build b = {r, why, whylen, false};
    if (!each_file(set, len, add_file, &b)) {
        build_fail(&b, "the descriptor set is malformed");
        goto fail;
    }
    for (size_t i = 0; i < r->nfiles; i++)
        if (!index_file(&b, i))
            goto fail;
    return r;
fail:
    reflection_free(r);
    return NULL;
}

void reflection_free(reflection *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nfiles; i++)
        protobuf_c_message_free_unpacked(&r->files[i].fd->base, NULL);
    free(r->files);
    for (size_t i = 0; i < r->nexts; i++)
        free(r->exts[i].extendee);
    free(r->exts);
    strmap_release(&r->by_name, NULL);
    strmap_release(&r->symbols, NULL);
    strmap_release(&r->messages, NULL);
    while (r->bindings) {
        struct binding *next = r->bindings->next;
        free(r->bindings);
        r->bindings = next;
    }
    free(r);
}

/* ---------------------------------------------------------------- answers */

/* Answer with an ErrorResponse: grpc status 'code' and a printf-style message. */
static void answer_error(struct answer *a, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void answer_error(struct answer *a, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->error_msg, sizeof(a->error_msg), fmt, ap);
    va_end(ap);
    a->error.error_code = code;
    a->error.error_message = a->error_msg;
    a->resp.message_response_case = ANSWER(ERROR_RESPONSE);
    a->resp.error_response = &a->error;
}

/* Answer with file 'fi' and every file it imports, directly or not, each once, the file
 * itself first (a client builds its pool from them in any order). False when out of
 * memory. */
static bool answer_file(const reflection *r, struct answer *a, size_t fi)
{
    bool ok = false;
    size_t *todo = malloc(r->nfiles * sizeof(*todo));
    bool *seen = calloc(r->nfiles, sizeof(*seen));
    a->file_bytes = malloc(r->nfiles * sizeof(*a->file_bytes));
    if (!todo || !seen || !a->file_bytes)
        goto out;
    size_t n = 0;
    todo[n++] = fi;
    seen[fi] = true;
    for (size_t k = 0; k < n; k++) { /* 'todo' doubles as the answer's order */
        const FileProto *fd = r->files[todo[k]].fd;
        a->file_bytes[k] = r->files[todo[k]].bytes;
        for (size_t d = 0; d < fd->n_dependency; d++) {
            void *v = strmap_get(&r->by_name, fd->dependency[d], strlen(fd->dependency[d]));
            size_t di = (size_t)(uintptr_t)v;
            if (di && !seen[di - 1]) { /* an import missing from the set is left out */
                seen[di - 1] = true;
                todo[n++] = di - 1;
            }
        }
    }
    a->files.n_file_descriptor_proto = n;
    a->files.file_descriptor_proto = a->file_bytes;
    a->resp.message_response_case = ANSWER(FILE_DESCRIPTOR_RESPONSE);
    a->resp.file_descriptor_response = &a->files;
    ok = true;
out:
    free(todo);
    free(seen);
    return ok;
}

/* The file index (+ 1) the map holds for 'key'; 0 if absent. */
static size_t find(const struct strmap *m, const char *key)
{
    return (size_t)(uintptr_t)strmap_get(m, key, strlen(key));
}

static bool answer_extension(const reflection *r, struct answer *a,
                             const Grpc__Reflection__V1__ExtensionRequest *er)
{
    const char *t = er && er->containing_type ? er->containing_type : "";
    for (size_t i = 0; er && i < r->nexts; i++)
        if (r->exts[i].number == er->extension_number && strcmp(r->exts[i].extendee, t) == 0)
            return answer_file(r, a, r->exts[i].file);
    answer_error(a, GRPC_STATUS_NOT_FOUND, "extension not found: %.*s(%d)", SYMBOL_MAX, t,
                 er ? (int)er->extension_number : 0);
    return true;
}

static bool answer_extension_numbers(const reflection *r, struct answer *a, const char *type)
{
    if (!find(&r->messages, type)) {
        answer_error(a, GRPC_STATUS_NOT_FOUND, "message type not found: %.*s", SYMBOL_MAX, type);
        return true;
    }
    size_t n = 0;
    a->ext_numbers = malloc((r->nexts ? r->nexts : 1) * sizeof(*a->ext_numbers));
    if (!a->ext_numbers)
        return false;
    for (size_t i = 0; i < r->nexts; i++)
        if (strcmp(r->exts[i].extendee, type) == 0)
            a->ext_numbers[n++] = r->exts[i].number;
    a->numbers.base_type_name = (char *)type;
    a->numbers.n_extension_number = n;
    a->numbers.extension_number = a->ext_numbers;
    a->resp.message_response_case = ANSWER(ALL_EXTENSION_NUMBERS_RESPONSE);
    a->resp.all_extension_numbers_response = &a->numbers;
    return true;
}

/* The services of the methods 's' registered ("/pkg.Service/Method" -> "pkg.Service"),
 * each once, in registration order; none without a server. */
static bool answer_services(const rpc_server *s, struct answer *a)
{
    size_t nm = s ? rpc_server_method_count(s) : 0, total = 0, n = 0;
    for (size_t i = 0; i < nm; i++)
        total += strlen(rpc_server_method_path(s, i)) + 1;
    a->names = malloc(total ? total : 1);
    a->service_msgs = malloc((nm ? nm : 1) * sizeof(*a->service_msgs));
    a->service_ptrs = malloc((nm ? nm : 1) * sizeof(*a->service_ptrs));
    if (!a->names || !a->service_msgs || !a->service_ptrs)
        return false;
    char *p = a->names;
    for (size_t i = 0; i < nm; i++) {
        const char *path = rpc_server_method_path(s, i);
        const char *slash = strrchr(path, '/');
        if (path[0] != '/' || !slash || slash == path + 1)
            continue;
        size_t len = (size_t)(slash - path - 1);
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++)
            dup = strlen(a->service_msgs[k].name) == len &&
                  memcmp(a->service_msgs[k].name, path + 1, len) == 0;
        if (dup)
            continue;
        memcpy(p, path + 1, len);
        p[len] = '\0';
        a->service_msgs[n] = (Grpc__Reflection__V1__ServiceResponse)
            GRPC__REFLECTION__V1__SERVICE_RESPONSE__INIT;
        a->service_msgs[n].name = p;
        a->service_ptrs[n] = &a->service_msgs[n];
        n++;
        p += len + 1;
    }
    a->services.n_service = n;
    a->services.service = a->service_ptrs;
    a->resp.message_response_case = ANSWER(LIST_SERVICES_RESPONSE);
    a->resp.list_services_response = &a->services;
    return true;
}

Response *reflection_answer(const reflection *r, const rpc_server *s, const Request *req)
{
    struct answer *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->resp = (Response)GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    a->files = (Grpc__Reflection__V1__FileDescriptorResponse)
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    a->numbers = (Grpc__Reflection__V1__ExtensionNumberResponse)
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    a->services = (Grpc__Reflection__V1__ListServiceResponse)
        GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    a->error = (Grpc__Reflection__V1__ErrorResponse)GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    a->resp.valid_host = req->host;
    a->resp.original_request = (Request *)req;
    bool ok = true;
    size_t fi;
    switch (req->message_request_case) {
    case ASK(FILE_BY_FILENAME):
        if ((fi = find(&r->by_name, req->file_by_filename)))
            ok = answer_file(r, a, fi - 1);
        else
            answer_error(a, GRPC_STATUS_NOT_FOUND, "file not found: %.*s", SYMBOL_MAX,
                         req->file_by_filename);
        break;
    case ASK(FILE_CONTAINING_SYMBOL):
        if ((fi = find(&r->symbols, req->file_containing_symbol)))
            ok = answer_file(r, a, fi - 1);
        else
            answer_error(a, GRPC_STATUS_NOT_FOUND, "symbol not found: %.*s", SYMBOL_MAX,
                         req->file_containing_symbol);
        break;
    case ASK(FILE_CONTAINING_EXTENSION):
        ok = answer_extension(r, a, req->file_containing_extension);
        break;
    case ASK(ALL_EXTENSION_NUMBERS_OF_TYPE):
        ok = answer_extension_numbers(r, a, req->all_extension_numbers_of_type);
        break;
    case ASK(LIST_SERVICES):
        ok = answer_services(s, a);
        break;
    default:
        answer_error(a, GRPC_STATUS_INVALID_ARGUMENT, "the request asks nothing (set one of "
                     "file_by_filename, file_containing_symbol, file_containing_extension, "
                     "all_extension_numbers_of_type, list_services)");
        break;
    }
    if (!ok) {
        reflection_answer_free(&a->resp);
        return NULL;
    }
    return &a->resp;
}

void reflection_answer_free(Response *resp)
{
    if (!resp)
        return;
    struct answer *a = (struct answer *)resp;
    free(a->file_bytes);
    free(a->ext_numbers);
    free(a->service_msgs);
    free(a->service_ptrs);
    free(a->names);
    free(a);
}

/* ---------------------------------------------------------------- the stream */

static void on_info(void *ud, rpc_call *call, const ProtobufCMessage *msg)
{
    const struct binding *b = ud;
    if (!msg) { /* the client is done asking */
        rpc_stream_finish(call, GRPC_STATUS_OK, NULL);
        return;
    }
    Response *resp = reflection_answer(b->r, b->s, (const Request *)msg);
    if (!resp) {
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    eddy_err err = rpc_stream_send(call, &resp->base);
    reflection_answer_free(resp);
    if (err == EDDY_ERR_FULL)
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                          "reflection client too slow: 64 answers unread");
    else if (err != EDDY_OK)
        rpc_stream_finish(call, GRPC_STATUS_UNAVAILABLE, NULL); /* gone: a no-op on the wire */
}

static void on_info_cancel(void *ud, rpc_call *call)
{
    rpc_stream_finish(call, GRPC_STATUS_CANCELLED, NULL); /* no-op on the wire */
}

eddy_err reflection_register(reflection *r, rpc_server *s)
{
    struct binding *b = calloc(1, sizeof(*b));
    if (!b)
        return EDDY_ERR_NOMEM;
    b->r = r;
    b->s = s;
    b->next = r->bindings;
    r->bindings = b;
    const ProtobufCMessageDescriptor *d =
        &grpc__reflection__v1__server_reflection_request__descriptor;
    eddy_err err = rpc_server_add_bidi(s, V1_METHOD, d, on_info, on_info_cancel, b);
    if (err == EDDY_OK) /* same messages on the wire: one handler for both */
        err = rpc_server_add_bidi(s, V1ALPHA_METHOD, d, on_info, on_info_cancel, b);
    return err;
}
