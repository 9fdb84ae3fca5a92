/* reflection's index and answers, without a network: descriptor sets built here from the
 * subset of descriptor.proto (every kind of symbol, nested ones, imports, an extension),
 * the set the build embeds, malformed sets, and list_services from a server's methods. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/reflection.h"
#include "eddy/internal/descriptor.pb-c.h"
#include "eddy/v1/eddy.pb-c.h"

typedef Eddy__Internal__Descriptor__FileDescriptorProto FileProto;
typedef Eddy__Internal__Descriptor__FieldDescriptorProto FieldProto;
typedef Eddy__Internal__Descriptor__OneofDescriptorProto OneofProto;
typedef Eddy__Internal__Descriptor__EnumValueDescriptorProto ValueProto;
typedef Eddy__Internal__Descriptor__EnumDescriptorProto EnumProto;
typedef Eddy__Internal__Descriptor__DescriptorProto MessageProto;
typedef Eddy__Internal__Descriptor__MethodDescriptorProto MethodProto;
typedef Eddy__Internal__Descriptor__ServiceDescriptorProto ServiceProto;
#define INIT(x) EDDY__INTERNAL__DESCRIPTOR__##x##__INIT
typedef Grpc__Reflection__V1__ServerReflectionRequest Request;
typedef Grpc__Reflection__V1__ServerReflectionResponse Response;

#define CASE(x) GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##x

/* ---------------------------------------------------------------- building sets */

/* A test set: a.proto (package pkg.a, imports b.proto) with every kind of symbol; b.proto
 * (pkg.b, imports c.proto); c.proto (no package). Packed into 'set' (caller frees). */
static uint8_t *test_set(size_t *len, bool duplicate, bool unnamed)
{
    FieldProto fx = INIT(FIELD_DESCRIPTOR_PROTO),
        fy = fx, ext = fx;
    fx.name = "x";
    fy.name = "y";
    ext.name = "ext";
    ext.extendee = ".pkg.a.Outer";
    ext.has_number = 1;
    ext.number = 100;
    FieldProto *outer_fields[] = {&fx};
    FieldProto *inner_fields[] = {&fy};
    FieldProto *exts[] = {&ext};
    OneofProto choice = INIT(ONEOF_DESCRIPTOR_PROTO);
    choice.name = "choice";
    OneofProto *oneofs[] = {&choice};
    ValueProto ka = INIT(ENUM_VALUE_DESCRIPTOR_PROTO),
        ta = ka;
    ka.name = "KIND_A";
    ta.name = "TOP_A";
    ValueProto *kvals[] = {&ka}, *tvals[] = {&ta};
    EnumProto kind = INIT(ENUM_DESCRIPTOR_PROTO),
        top = kind;
    kind.name = "Kind";
    kind.n_value = 1;
    kind.value = kvals;
    top.name = "Top";
    top.n_value = 1;
    top.value = tvals;
    EnumProto *kinds[] = {&kind}, *tops[] = {&top};
    MessageProto inner = INIT(DESCRIPTOR_PROTO),
        outer = inner, b = inner, c = inner;
    inner.name = "Inner";
    inner.n_field = 1;
    inner.field = inner_fields;
    MessageProto *nested[] = {&inner};
    outer.name = "Outer";
    outer.n_field = 1;
    outer.field = outer_fields;
    outer.n_oneof_decl = 1;
    outer.oneof_decl = oneofs;
    outer.n_nested_type = 1;
    outer.nested_type = nested;
    outer.n_enum_type = 1;
    outer.enum_type = kinds;
    outer.n_extension = 1;
    outer.extension = exts;
    b.name = "B";
    c.name = "C";
    MessageProto *amsgs[] = {&outer}, *bmsgs[] = {&b},
                                                 *cmsgs[] = {&c};
    MethodProto m = INIT(METHOD_DESCRIPTOR_PROTO);
    m.name = "Do";
    MethodProto *methods[] = {&m};
    ServiceProto svc = INIT(SERVICE_DESCRIPTOR_PROTO);
    svc.name = "Svc";
    svc.n_method = 1;
    svc.method = methods;
    ServiceProto *svcs[] = {&svc};

    FileProto fa = INIT(FILE_DESCRIPTOR_PROTO), fb = fa, fc = fa;
    char *adeps[] = {"b.proto"}, *bdeps[] = {"c.proto"};
    fa.name = "a.proto";
    fa.package = "pkg.a";
    fa.n_dependency = 1;
    fa.dependency = adeps;
    fa.n_message_type = 1;
    fa.message_type = amsgs;
    fa.n_enum_type = 1;
    fa.enum_type = tops;
    fa.n_service = 1;
    fa.service = svcs;
    fb.name = "b.proto";
    fb.package = "pkg.b";
    fb.n_dependency = 1;
    fb.dependency = bdeps;
    fb.n_message_type = 1;
    fb.message_type = bmsgs;
    fc.name = unnamed ? NULL : "c.proto";
    fc.n_message_type = 1;
    fc.message_type = cmsgs;
    FileProto *files[] = {&fc, &fb, &fa, &fb};
    Eddy__Internal__Descriptor__FileDescriptorSet set = INIT(FILE_DESCRIPTOR_SET);
    set.n_file = duplicate ? 4 : 3;
    set.file = files;
    *len = protobuf_c_message_get_packed_size(&set.base);
    uint8_t *out = malloc(*len);
    assert_non_null(out);
    protobuf_c_message_pack(&set.base, out);
    return out;
}

struct fixture {
    uint8_t *set;
    size_t len;
    reflection *r;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char why[256] = "";
    f->set = test_set(&f->len, false, false);
    f->r = reflection_new(f->set, f->len, why, sizeof(why));
    assert_non_null(f->r);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    reflection_free(f->r);
    free(f->set);
    free(f);
    return 0;
}

/* ---------------------------------------------------------------- asking */

/* The names of the files an answer carries, "a.proto,b.proto" (or "ERR <code>"). */
static void answer_names(const reflection *r, const Request *rq, char *out, size_t outlen)
{
    Response *a = reflection_answer(r, NULL, rq);
    assert_non_null(a);
    assert_ptr_equal(a->original_request, rq);
    out[0] = '\0';
    if (a->message_response_case == CASE(ERROR_RESPONSE)) {
        snprintf(out, outlen, "ERR %d", (int)a->error_response->error_code);
    } else {
        assert_int_equal(a->message_response_case, CASE(FILE_DESCRIPTOR_RESPONSE));
        size_t used = 0;
        for (size_t i = 0; i < a->file_descriptor_response->n_file_descriptor_proto; i++) {
            ProtobufCBinaryData b = a->file_descriptor_response->file_descriptor_proto[i];
            FileProto *fd = eddy__internal__descriptor__file_descriptor_proto__unpack(
                NULL, b.len, b.data);
            assert_non_null(fd);
            used += (size_t)snprintf(out + used, outlen - used, "%s%s", i ? "," : "", fd->name);
            protobuf_c_message_free_unpacked(&fd->base, NULL);
        }
    }
    /* every answer is a valid message */
    uint8_t *buf = malloc(protobuf_c_message_get_packed_size(&a->base));
    assert_non_null(buf);
    size_t n = protobuf_c_message_pack(&a->base, buf);
    Response *back = grpc__reflection__v1__server_reflection_response__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_int_equal(back->message_response_case, a->message_response_case);
    protobuf_c_message_free_unpacked(&back->base, NULL);
    free(buf);
    reflection_answer_free(a);
}

static void symbol_file(const reflection *r, const char *symbol, const char *want)
{
    Request rq = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    rq.file_containing_symbol = (char *)symbol;
    char got[256];
    answer_names(r, &rq, got, sizeof(got));
    if (strcmp(got, want) != 0)
        fail_msg("symbol '%s': got '%s', want '%s'", symbol, got, want);
}

static void filename_file(const reflection *r, const char *name, const char *want)
{
    Request rq = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
    rq.file_by_filename = (char *)name;
    char got[256];
    answer_names(r, &rq, got, sizeof(got));
    if (strcmp(got, want) != 0)
        fail_msg("file '%s': got '%s', want '%s'", name, got, want);
}

/* ---------------------------------------------------------------- tests */

static void test_files_with_their_imports(void **state)
{
    struct fixture *f = *state;
    filename_file(f->r, "a.proto", "a.proto,b.proto,c.proto");
    filename_file(f->r, "b.proto", "b.proto,c.proto");
    filename_file(f->r, "c.proto", "c.proto");
    filename_file(f->r, "d.proto", "ERR 5");
    filename_file(f->r, "", "ERR 5");
    filename_file(f->r, "a.prot", "ERR 5");
}

static void test_every_kind_of_symbol(void **state)
{
    struct fixture *f = *state;
    const char *in_a[] = {"pkg.a.Outer", "pkg.a.Outer.x", "pkg.a.Outer.choice",
                          "pkg.a.Outer.Inner", "pkg.a.Outer.Inner.y", "pkg.a.Outer.Kind",
                          "pkg.a.Outer.KIND_A", "pkg.a.Outer.ext", "pkg.a.Top", "pkg.a.TOP_A",
                          "pkg.a.Svc", "pkg.a.Svc.Do"};
    for (size_t i = 0; i < sizeof(in_a) / sizeof(in_a[0]); i++)
        symbol_file(f->r, in_a[i], "a.proto,b.proto,c.proto");
    symbol_file(f->r, "pkg.b.B", "b.proto,c.proto");
    symbol_file(f->r, "C", "c.proto");
    const char *unknown[] = {"pkg.a", "pkg.a.Outer.z", ".pkg.a.Outer", "", "Outer",
                             "pkg.a.Outer.Kind.KIND_A", "pkg.a.Svc.Do.x", "pkg.a.Outer."};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
        symbol_file(f->r, unknown[i], "ERR 5");
}

static void test_extensions(void **state)
{
    struct fixture *f = *state;
    Grpc__Reflection__V1__ExtensionRequest er = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    Request rq = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION;
    rq.file_containing_extension = &er;
    char got[256];
    er.containing_type = "pkg.a.Outer";
    er.extension_number = 100;
    answer_names(f->r, &rq, got, sizeof(got));
    assert_string_equal(got, "a.proto,b.proto,c.proto");
    er.extension_number = 101;
    answer_names(f->r, &rq, got, sizeof(got));
    assert_string_equal(got, "ERR 5");
    er.containing_type = "pkg.b.B";
    er.extension_number = 100;
    answer_names(f->r, &rq, got, sizeof(got));
    assert_string_equal(got, "ERR 5");

    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE;
    rq.all_extension_numbers_of_type = "pkg.a.Outer";
    Response *a = reflection_answer(f->r, NULL, &rq);
    assert_int_equal(a->message_response_case, CASE(ALL_EXTENSION_NUMBERS_RESPONSE));
    assert_string_equal(a->all_extension_numbers_response->base_type_name, "pkg.a.Outer");
    assert_int_equal(a->all_extension_numbers_response->n_extension_number, 1);
    assert_int_equal(a->all_extension_numbers_response->extension_number[0], 100);
    reflection_answer_free(a);
    rq.all_extension_numbers_of_type = "pkg.a.Outer.Inner"; /* a message with none */
    a = reflection_answer(f->r, NULL, &rq);
    assert_int_equal(a->message_response_case, CASE(ALL_EXTENSION_NUMBERS_RESPONSE));
    assert_int_equal(a->all_extension_numbers_response->n_extension_number, 0);
    reflection_answer_free(a);
    const char *not_messages[] = {"pkg.a.Svc", "pkg.a.Top", "pkg.a.Outer.x", "nope"};
    for (size_t i = 0; i < 4; i++) {
        rq.all_extension_numbers_of_type = (char *)not_messages[i];
        a = reflection_answer(f->r, NULL, &rq);
        assert_int_equal(a->message_response_case, CASE(ERROR_RESPONSE));
        assert_int_equal(a->error_response->error_code, 5);
        assert_non_null(strstr(a->error_response->error_message, not_messages[i]));
        reflection_answer_free(a);
    }
}

static void test_request_without_question(void **state)
{
    struct fixture *f = *state;
    Request rq = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.host = "somewhere";
    Response *a = reflection_answer(f->r, NULL, &rq);
    assert_int_equal(a->message_response_case, CASE(ERROR_RESPONSE));
    assert_int_equal(a->error_response->error_code, 3);
    assert_string_equal(a->valid_host, "somewhere");
    reflection_answer_free(a);
}

static void test_malformed_sets(void **state)
{
    char why[256];
    size_t len;
    uint8_t *set = test_set(&len, true, false);
    why[0] = '\0';
    assert_null(reflection_new(set, len, why, sizeof(why)));
    assert_string_equal(why, "file b.proto is in the set twice");
    free(set);

    set = test_set(&len, false, true);
    assert_null(reflection_new(set, len, why, sizeof(why)));
    assert_string_equal(why, "a file has no name");
    free(set);

    set = test_set(&len, false, false);
    for (size_t cut = 1; cut < len; cut += 7) { /* every truncation fails cleanly */
        reflection *r = reflection_new(set, cut, why, sizeof(why));
        if (r) /* a cut that falls between two files is a valid, smaller set */
            reflection_free(r);
        else
            assert_true(why[0] != '\0');
    }
    assert_null(reflection_new((const uint8_t *)"\x0a\x05\xff\xff", 4, why, sizeof(why)));
    assert_string_equal(why, "the descriptor set is malformed");
    assert_null(reflection_new((const uint8_t *)"\x0a\x03\xff\xff\xff", 5, why, sizeof(why)));
    assert_string_equal(why, "a file of the set does not decode");
    assert_null(reflection_new((const uint8_t *)"\x0f", 1, why, sizeof(why))); /* wire type 7 */
    reflection *empty = reflection_new((const uint8_t *)"", 0, why, sizeof(why));
    assert_non_null(empty);
    filename_file(empty, "a.proto", "ERR 5");
    reflection_free(empty);
    free(set);
}

static void test_embedded_set(void **state)
{
    char why[256] = "";
    reflection *r = reflection_new(eddy_descriptor_set, eddy_descriptor_set_len, why,
                                   sizeof(why));
    if (!r)
        fail_msg("the embedded set: %s", why);
    symbol_file(r, "eddy.v1.Eddy", "eddy/v1/eddy.proto");
    symbol_file(r, "eddy.v1.Eddy.Recommend", "eddy/v1/eddy.proto");
    symbol_file(r, "eddy.v1.RecommendRequest.user_id", "eddy/v1/eddy.proto");
    symbol_file(r, "eddy.v1.EventType", "eddy/v1/eddy.proto");
    symbol_file(r, "eddy.v1.EVENT_TYPE_VIEW", "eddy/v1/eddy.proto");
    symbol_file(r, "eddy.cluster.v1.Coordinator", "eddy/v1/cluster.proto");
    symbol_file(r, "grpc.health.v1.Health", "grpc/health/v1/health.proto");
    symbol_file(r, "grpc.reflection.v1.ServerReflection",
                "grpc/reflection/v1/reflection.proto");
    symbol_file(r, "grpc.reflection.v1alpha.ServerReflection",
                "grpc/reflection/v1alpha/reflection.proto");
    char got[256];
    Request rq = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    rq.file_containing_symbol = "eddy.state.v1.State";
    answer_names(r, &rq, got, sizeof(got));
    assert_string_equal(got, "eddy/v1/state.proto,eddy/v1/eddy.proto,eddy/v1/store.proto");
    symbol_file(r, "eddy.internal.descriptor.FileDescriptorSet", "ERR 5"); /* not served */
    /* the bytes are protoc's own: the public eddy.proto decodes to the service we know */
    rq.file_containing_symbol = "eddy.v1.Eddy";
    Response *a = reflection_answer(r, NULL, &rq);
    ProtobufCBinaryData b = a->file_descriptor_response->file_descriptor_proto[0];
    FileProto *fd = eddy__internal__descriptor__file_descriptor_proto__unpack(NULL, b.len, b.data);
    assert_string_equal(fd->package, "eddy.v1");
    size_t k = 0;
    while (k < fd->n_service && strcmp(fd->service[k]->name, "Eddy") != 0)
        k++;
    assert_true(k < fd->n_service); /* eddy.proto also defines Experiments */
    assert_int_equal(fd->service[k]->n_method, eddy__v1__eddy__descriptor.n_methods);
    protobuf_c_message_free_unpacked(&fd->base, NULL);
    reflection_answer_free(a);
    reflection_free(r);
}

static void noop(void *ud, rpc_call *call, const ProtobufCMessage *req) {}

static void test_list_services(void **state)
{
    struct fixture *f = *state;
    struct rpc_server_opts o = {.listen = "127.0.0.1:0"};
    rpc_server *s = rpc_server_new(&o);
    assert_non_null(s);
    const ProtobufCMessageDescriptor *d = &eddy__v1__recommend_request__descriptor;
    assert_int_equal(rpc_server_add_unary(s, "/x.A/M1", d, noop, NULL), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(s, "/x.B/M", d, noop, NULL), EDDY_OK);
    assert_int_equal(rpc_server_add_unary(s, "/x.A/M2", d, noop, NULL), EDDY_OK);
    assert_int_equal(reflection_register(f->r, s), EDDY_OK);
    Request rq = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    rq.list_services = "*";
    Response *a = reflection_answer(f->r, s, &rq);
    assert_int_equal(a->message_response_case, CASE(LIST_SERVICES_RESPONSE));
    const char *want[] = {"x.A", "x.B", "grpc.reflection.v1.ServerReflection",
                          "grpc.reflection.v1alpha.ServerReflection"};
    assert_int_equal(a->list_services_response->n_service, 4);
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(a->list_services_response->service[i]->name, want[i]);
    reflection_answer_free(a);
    rpc_server_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_files_with_their_imports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_kind_of_symbol, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extensions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_without_question, setup, teardown),
        cmocka_unit_test(test_malformed_sets),
        cmocka_unit_test(test_embedded_set),
        cmocka_unit_test_setup_teardown(test_list_services, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
