/* The public eddy.v1.Eddy requests as a node receives them: the first byte picks the
 * method, the rest is the request's bytes. Each is unpacked as the RPC server does, put
 * through the handler's own checks (ingest_request_refused) and, for Ingest, every event
 * through validate_event with the node's default limits: whatever gets past them is what
 * the backend is given. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "node/ingest/ingest_service.h"
#include "node/ingest/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const methods[] = {
    &eddy__v1__ingest_request__descriptor,        &eddy__v1__recommend_request__descriptor,
    &eddy__v1__get_user_profile_request__descriptor, &eddy__v1__top_products_request__descriptor,
    &eddy__v1__event_counts_request__descriptor,  &eddy__v1__delete_user_request__descriptor,
};

#define NOW_MS 1800000000000LL

static void ingest(const Eddy__V1__IngestRequest *req)
{
    static const struct limits lim = {128, 128, 512, 32, 4096, 300000, 0};
    for (size_t i = 0; i < req->n_events; i++) {
        char field[32], reason[256];
        if (validate_event(&lim, req->events[i], NOW_MS, field, sizeof(field), reason,
                           sizeof(reason))) {
            /* an accepted event's ids are printable UTF-8 within the limits */
            const Eddy__V1__Event *ev = req->events[i];
            if (!validate_printable_utf8(ev->user_id) || strlen(ev->user_id) > 128 ||
                !validate_printable_utf8(ev->event_id))
                abort();
            continue;
        }
        if (validate_field_index(field) > VALIDATE_FIELD_COUNT || reason[0] == '\0')
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const ProtobufCMessageDescriptor *d = methods[data[0] % (sizeof(methods) / sizeof(methods[0]))];
    ProtobufCMessage *msg = protobuf_c_message_unpack(d, NULL, size - 1, data + 1);
    if (!msg)
        return 0;
    struct ingest_service svc = {.max_batch = 1000};
    char why[160];
    bool refused = ingest_request_refused(&svc, msg, why, sizeof(why));
    if (refused && why[0] == '\0')
        abort();
    if (!refused && d == &eddy__v1__ingest_request__descriptor)
        ingest((const Eddy__V1__IngestRequest *)msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    return 0;
}
