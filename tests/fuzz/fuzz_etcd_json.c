/* etcd's JSON answers and the records Eddy keeps in etcd, decoded as the nodes and the
 * coordinator decode them: the first byte picks the decoder, the rest is the JSON. The
 * gateway's answers (common/etcd.c: Range, Txn, a watch stream's line) must decode or be
 * refused; every record that decodes (common/cluster.c: config, isr, node, map, checkpoint,
 * move) must encode and decode back to the same record. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/cluster.h"
#include "common/etcd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int64_t count_event(const struct etcd_event *ev, void *ud)
{
    if (!ev->kv.key || !ev->kv.value)
        abort(); /* delivered events always carry a key and a value (maybe empty) */
    (*(size_t *)ud)++;
    return 0;
}

static void gateway(unsigned kind, const char *json, size_t len)
{
    if (kind == 0) {
        struct etcd_kvs kvs;
        int64_t rev;
        if (etcd_decode_range(json, len, &kvs, &rev) == EDDY_OK) {
            for (size_t i = 0; i < kvs.n; i++) {
                if (!kvs.kvs[i].key || !kvs.kvs[i].value)
                    abort();
            }
        }
        etcd_kvs_release(&kvs);
    } else if (kind == 1) {
        /* the shape of the coordinator's map update: a read of the map, a delete, a put */
        struct etcd_txn t = {0};
        t.ops[ETCD_ON_SUCCESS][0] = (struct etcd_txn_op){.type = ETCD_OP_RANGE, .key = "/eddy/c/map"};
        t.ops[ETCD_ON_SUCCESS][1] = (struct etcd_txn_op){.type = ETCD_OP_DELETE, .key = "/eddy/c/moves/", .prefix = true};
        t.ops[ETCD_ON_SUCCESS][2] = (struct etcd_txn_op){.type = ETCD_OP_PUT, .key = "/eddy/c/map"};
        t.n_ops[ETCD_ON_SUCCESS] = 3;
        t.ops[ETCD_ON_FAILURE][0] = (struct etcd_txn_op){.type = ETCD_OP_RANGE, .key = "/eddy/c/map"};
        t.n_ops[ETCD_ON_FAILURE] = 1;
        struct etcd_txn_result r;
        if (etcd_decode_txn(json, len, &t, &r) == EDDY_OK &&
            r.n_ops != t.n_ops[r.succeeded ? ETCD_ON_SUCCESS : ETCD_ON_FAILURE])
            abort();
        etcd_txn_result_release(&r);
    } else {
        size_t n = 0;
        int64_t last;
        (void)etcd_decode_watch_events(json, len, count_event, &n, &last);
    }
}

#define ROUND_TRIP(type, from, to, json, len)                                            \
    do {                                                                                 \
        struct type a, b;                                                                \
        memset(&a, 0, sizeof(a));                                                        \
        memset(&b, 0, sizeof(b));                                                        \
        if (from(json, len, &a) != EDDY_OK)                                              \
            break;                                                                       \
        char *again = to(&a);                                                            \
        if (!again || from(again, strlen(again), &b) != EDDY_OK || memcmp(&a, &b, sizeof(a)) != 0) \
            abort();                                                                     \
        free(again);                                                                     \
    } while (0)

static void map(const char *json, size_t len)
{
    struct cluster_map a = {0}, b = {0};
    if (cluster_map_from_json(json, len, &a) == EDDY_OK) {
        char *again = cluster_map_to_json(&a);
        if (!again || cluster_map_from_json(again, strlen(again), &b) != EDDY_OK ||
            a.nparts != b.nparts || a.version != b.version)
            abort();
        for (uint32_t p = 0; p < a.nparts; p++) {
            const struct cluster_part *x = &a.parts[p], *y = &b.parts[p];
            if (strcmp(x->owner, y->owner) != 0 || x->epoch != y->epoch ||
                x->nreplicas != y->nreplicas || (x->nreplicas && strcmp(x->replicas[0], x->owner) != 0))
                abort();
            for (uint32_t i = 0; i < x->nreplicas; i++) {
                if (strcmp(x->replicas[i], y->replicas[i]) != 0)
                    abort();
            }
        }
        free(again);
    }
    cluster_map_release(&a);
    cluster_map_release(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *json = (const char *)data + 1;
    size_t len = size - 1;
    unsigned kind = data[0] % 9;
    switch (kind) {
    case 0:
    case 1:
    case 2: gateway(kind, json, len); break;
    case 3: ROUND_TRIP(cluster_config, cluster_config_from_json, cluster_config_to_json, json, len); break;
    case 4: ROUND_TRIP(cluster_isr, cluster_isr_from_json, cluster_isr_to_json, json, len); break;
    case 5: ROUND_TRIP(cluster_node, cluster_node_from_json, cluster_node_to_json, json, len); break;
    case 6: map(json, len); break;
    case 7: ROUND_TRIP(cluster_checkpoint, cluster_checkpoint_from_json, cluster_checkpoint_to_json, json, len); break;
    case 8: ROUND_TRIP(cluster_move, cluster_move_from_json, cluster_move_to_json, json, len); break;
    }
    return 0;
}
