/* The public eddy.v1.Eddy requests as a node receives them: the first byte picks the
 * method, the rest is the request's bytes. Each is unpacked as the RPC server does, put
 * through the handler's own checks (ingest_request_refused) and, for Ingest, every event
 * through validate_event with the node's default limits. The reads that get past the
 * checks are then answered by the query layer of a --dev node's engine, which holds a few
 * users' events written once at start (the state never changes: an input's result does not
 * depend on the ones before it); writes (Ingest, DeleteUser) stop at the checks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "node/ingest/ingest_service.h"
#include "node/ingest/validate.h"
#include "node/state/engine.h"
#include "node/state/query.h"
#include "node/state/stage2cache.h"
#include "tests/support/engine_opts.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];
static engine *eng;
static stage2cache *pop;
static struct query_ctx q;

static void ingested(void *ud, eddy_err err, const struct engine_ingest_result *r)
{
    *(eddy_err *)ud = err;
}

static void cleanup(void)
{
    stage2cache_free(pop);
    engine_close(eng);
    store_destroy(dir, NULL, 0);
}

/* Three users' views, carts and purchases over two minutes, in the unit tests' engine
 * (tests/support/engine_opts.h). */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_set_level("error");
    snprintf(dir, sizeof(dir), "%s/eddy-fuzz-pub-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir))
        abort();
    struct engine_opts o = test_engine_opts(dir);
    char why[256];
    if (engine_open(&o, &eng, why, sizeof(why)) != EDDY_OK)
        abort();
    static const Eddy__V1__EventType types[] = {
        EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW, EDDY__V1__EVENT_TYPE__EVENT_TYPE_CLICK,
        EDDY__V1__EVENT_TYPE__EVENT_TYPE_ADD_TO_CART, EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE};
    static const char *const cats[] = {"shoes", "books", "toys"};
    Eddy__V1__Event evs[60], *ptrs[60];
    char ids[60][16], users[60][8], prods[60][8];
    for (int i = 0; i < 60; i++) {
        eddy__v1__event__init(&evs[i]);
        snprintf(ids[i], sizeof(ids[i]), "e-%d", i);
        snprintf(users[i], sizeof(users[i]), "u-%d", i % 3);
        snprintf(prods[i], sizeof(prods[i]), "p-%d", i % 7);
        evs[i].event_id = ids[i];
        evs[i].user_id = users[i];
        evs[i].product_id = prods[i];
        evs[i].category = (char *)cats[i % 3];
        evs[i].brand = "acme";
        evs[i].price = 5 + i;
        evs[i].event_type = types[i % 4];
        evs[i].timestamp_ms = 1800000000000LL + i * 2000;
        ptrs[i] = &evs[i];
    }
    eddy_err err = EDDY_ERR_UNAVAILABLE;
    if (engine_ingest(eng, ptrs, 60, ingested, &err) != EDDY_OK || engine_flush(eng) != EDDY_OK ||
        err != EDDY_OK)
        abort();
    pop = stage2cache_new(engine_store(eng), &engine_options(eng)->product, 0, 50);
    if (!pop)
        abort();
    q = (struct query_ctx){eng, pop, 10, 100, NULL, NULL, 0, NULL, NULL, false};
    atexit(cleanup);
    return 0;
}

/* Answer a read the checks let through, as the local backend does; every answer is freed. */
static void read_state(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    ProtobufCMessage *resp = NULL;
    eddy_err err = EDDY_OK;
    if (d == &eddy__v1__recommend_request__descriptor) {
        const Eddy__V1__RecommendRequest *r = (const Eddy__V1__RecommendRequest *)msg;
        err = query_recommend(&q, r, (Eddy__V1__RecommendResponse **)&resp);
        size_t max = r->max_recommendations ? r->max_recommendations : 10;
        if (err == EDDY_OK && ((Eddy__V1__RecommendResponse *)resp)->n_items > (max < 100 ? max : 100))
            abort(); /* more items than asked for, or than --max-recommendations */
    } else if (d == &eddy__v1__get_user_profile_request__descriptor) {
        err = query_profile(&q, ((const Eddy__V1__GetUserProfileRequest *)msg)->user_id,
                            (Eddy__V1__GetUserProfileResponse **)&resp);
    } else if (d == &eddy__v1__top_products_request__descriptor) {
        err = query_top_products(&q, (const Eddy__V1__TopProductsRequest *)msg,
                                 (Eddy__V1__TopProductsResponse **)&resp);
    } else if (d == &eddy__v1__event_counts_request__descriptor) {
        err = query_event_counts(&q, (const Eddy__V1__EventCountsRequest *)msg,
                                 (Eddy__V1__EventCountsResponse **)&resp);
    }
    if (err != EDDY_OK && resp)
        abort(); /* an error leaves nothing to free */
    query_free_response(resp);
}

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
    else if (!refused)
        read_state(msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    return 0;
}
