/* The internal State API as a peer's bytes reach a node: the first byte picks the message.
 * Forward requests are unpacked and their stage-2 records routed as handle_forward routes
 * them; ReplicaFetch answers are unpacked and each partition's batch checked as a follower
 * checks it (replica_batch_check), then its records decoded as the engine's replay decodes
 * them (with their CRCs made right first in one variant, so that the records get past the
 * checksum); every other State request is unpacked as the RPC server does. */
#include <stdint.h>
#include <stdlib.h>

#include "common/crc32c.h"
#include "common/partition.h"
#include "eddy/v1/state.pb-c.h"
#include "eddy/v1/store.pb-c.h"
#include "node/cluster/replica.h"
#include "node/state/logrec.h"
#include "node/state/product.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PARTITIONS 64

static void forward(const Eddy__State__V1__ForwardRequest *req)
{
    for (size_t i = 0; i < req->n_batches; i++) {
        const Eddy__Store__V1__Stage2Batch *b = req->batches[i];
        for (size_t k = 0; k < product_records(b); k++) {
            if (partition_of_product(product_record_key(b, k), PARTITIONS) >= PARTITIONS)
                abort();
        }
    }
}

/* What the leader writes in ReplicaRecord.crc32c. */
static uint32_t record_crc(const Eddy__State__V1__ReplicaRecord *x)
{
    uint8_t le[8];
    for (int b = 0; b < 8; b++)
        le[b] = (uint8_t)(x->seq >> (8 * b));
    return crc32c_update(crc32c(le, sizeof(le)), x->record.data, x->record.len);
}

static void replica_answer(Eddy__State__V1__ReplicaFetchResponse *fr, bool sign)
{
    for (size_t i = 0; i < fr->n_partitions; i++) {
        Eddy__State__V1__ReplicaPartitionData *d = fr->partitions[i];
        if (d->log_truncated)
            continue; /* the fetch thread stops there */
        for (size_t k = 0; sign && k < d->n_records; k++)
            d->records[k]->crc32c = record_crc(d->records[k]);
        if (replica_batch_check(d, d->from_seq) != EDDY_OK)
            continue;
        for (size_t k = 0; k < d->n_records; k++) {
            const Eddy__State__V1__ReplicaRecord *x = d->records[k];
            if (x->seq < d->from_seq || x->seq >= d->next_seq)
                abort(); /* the check let a record outside the batch through */
            Eddy__Store__V1__LogRecord *r = logrec_unpack(x->record.data, x->record.len);
            if (r)
                eddy__store__v1__log_record__free_unpacked(r, NULL);
        }
    }
}

static const ProtobufCMessageDescriptor *const others[] = {
    &eddy__state__v1__apply_request__descriptor,
    &eddy__state__v1__user_request__descriptor,
    &eddy__state__v1__partial_request__descriptor,
    &eddy__state__v1__category_top_request__descriptor,
    &eddy__state__v1__neighbours_request__descriptor,
    &eddy__state__v1__fetch_checkpoint_request__descriptor,
    &eddy__state__v1__fetch_log_request__descriptor,
    &eddy__state__v1__fetch_log_response__descriptor,
    &eddy__state__v1__state_reprocess_request__descriptor,
    &eddy__state__v1__stage2_rebuild_request__descriptor,
    &eddy__state__v1__rebuild_forward_request__descriptor,
    &eddy__state__v1__replica_fetch_request__descriptor,
    &eddy__state__v1__user_response__descriptor,
    &eddy__state__v1__partial_response__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *buf = data + 1;
    size_t len = size - 1;
    unsigned kind = data[0] % (3 + sizeof(others) / sizeof(others[0]));
    if (kind == 0) {
        Eddy__State__V1__ForwardRequest *req =
            eddy__state__v1__forward_request__unpack(NULL, len, buf);
        if (req) {
            forward(req);
            eddy__state__v1__forward_request__free_unpacked(req, NULL);
        }
    } else if (kind == 1 || kind == 2) {
        Eddy__State__V1__ReplicaFetchResponse *fr =
            eddy__state__v1__replica_fetch_response__unpack(NULL, len, buf);
        if (fr) {
            replica_answer(fr, kind == 2);
            eddy__state__v1__replica_fetch_response__free_unpacked(fr, NULL);
        }
    } else {
        ProtobufCMessage *m = protobuf_c_message_unpack(others[kind - 3], NULL, len, buf);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    return 0;
}
