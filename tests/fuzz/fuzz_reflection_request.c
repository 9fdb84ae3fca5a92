/* Server reflection as a node receives it: the first byte picks the input. 0: a
 * ServerReflectionRequest's bytes, unpacked as the RPC server does and answered from the
 * index of the embedded descriptor set with a server's method list, the answer packed as
 * the stream sends it. 1: the bytes as a descriptor set to index (reflection_new), then
 * asked for each of its files by name. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/reflection.h"
#include "eddy/internal/descriptor.pb-c.h"
#include "eddy/v1/eddy.pb-c.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef Grpc__Reflection__V1__ServerReflectionRequest Request;
typedef Grpc__Reflection__V1__ServerReflectionResponse Response;

#define ASK(x) GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##x
#define ANSWER(x) GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##x

static reflection *embedded;
static rpc_server *srv;

static void noop(void *ud, rpc_call *call, const ProtobufCMessage *req) {}

static void cleanup(void)
{
    rpc_server_free(srv);
    reflection_free(embedded);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_set_level("error");
    char why[256];
    embedded = reflection_new(eddy_descriptor_set, eddy_descriptor_set_len, why, sizeof(why));
    struct rpc_server_opts o = {.listen = "127.0.0.1:0"};
    srv = rpc_server_new(&o);
    if (!embedded || !srv ||
        rpc_server_add_unary(srv, "/eddy.v1.Eddy/Recommend",
                             &eddy__v1__recommend_request__descriptor, noop, NULL) != EDDY_OK ||
        reflection_register(embedded, srv) != EDDY_OK)
        abort();
    atexit(cleanup);
    return 0;
}

/* Pack 'a' as rpc_stream_send does, and check it against the question. */
static void check_answer(const Request *rq, Response *a)
{
    if (!a)
        abort(); /* only on out of memory, which libFuzzer's limits turn into a report */
    if (a->original_request != rq)
        abort();
    size_t n = protobuf_c_message_get_packed_size(&a->base);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf || protobuf_c_message_pack(&a->base, buf) != n)
        abort();
    free(buf);
    switch (a->message_response_case) {
    case ANSWER(ERROR_RESPONSE):
        if (a->error_response->error_code != 5 && a->error_response->error_code != 3)
            abort();
        break;
    case ANSWER(FILE_DESCRIPTOR_RESPONSE):
        if (a->file_descriptor_response->n_file_descriptor_proto == 0)
            abort(); /* a found file is always in its own answer */
        break;
    case ANSWER(LIST_SERVICES_RESPONSE):
        if (a->list_services_response->n_service != 3) /* Eddy + reflection v1, v1alpha */
            abort();
        break;
    case ANSWER(ALL_EXTENSION_NUMBERS_RESPONSE):
        break;
    default:
        abort(); /* every request gets one of the answers above */
    }
}

static void fuzz_request(const uint8_t *data, size_t size)
{
    Request *rq = grpc__reflection__v1__server_reflection_request__unpack(NULL, size, data);
    if (!rq)
        return; /* the server answers INVALID_ARGUMENT */
    Response *a = reflection_answer(embedded, srv, rq);
    check_answer(rq, a);
    reflection_answer_free(a);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
}

/* Each file of a set that indexes is found by its name, its own bytes first. */
static void fuzz_set(const uint8_t *data, size_t size)
{
    char why[256];
    reflection *r = reflection_new(data, size, why, sizeof(why));
    if (!r) {
        if (!why[0])
            abort(); /* a refusal says why */
        return;
    }
    Eddy__Internal__Descriptor__FileDescriptorSet *set =
        eddy__internal__descriptor__file_descriptor_set__unpack(NULL, size, data);
    for (size_t i = 0; set && i < set->n_file; i++) {
        Request rq = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
        rq.message_request_case = ASK(FILE_BY_FILENAME);
        rq.file_by_filename = set->file[i]->name;
        Response *a = reflection_answer(r, srv, &rq);
        check_answer(&rq, a);
        if (a->message_response_case != ANSWER(FILE_DESCRIPTOR_RESPONSE))
            abort();
        reflection_answer_free(a);
    }
    if (set)
        protobuf_c_message_free_unpacked(&set->base, NULL);
    reflection_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] % 2 == 0)
        fuzz_request(data + 1, size - 1);
    else
        fuzz_set(data + 1, size - 1);
    return 0;
}
