/* Per-partition event rates into etcd (see loadpub.h). */
#include "node/cluster/loadpub.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/etcd.h"
#include "common/log.h"
#include "common/worker.h"

struct loadpub {
    engine *eng;
    membership *mem;
    char key[CLUSTER_KEY_MAX];
    int64_t interval_ms;
    uint64_t *last;          /* [P] events counter at the previous sample */
    struct worker worker;
};

static bool follows(const struct cluster_part *part, const char *self)
{
    for (uint32_t r = 1; r < part->nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
        if (strcmp(part->replicas[r], self) == 0)
            return true;
    }
    return false;
}

/* The record for the interval that just ended ('secs' long); NULL on OOM. */
static char *sample(loadpub *lp, double secs)
{
    uint32_t P = membership_partitions(lp->mem);
    cJSON *o = cJSON_CreateObject();
    cJSON *rates = o ? cJSON_AddArrayToObject(o, "rates") : NULL;
    if (!rates) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON *durable = cJSON_AddArrayToObject(o, "durable");
    if (!durable) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddStringToObject(o, "node", membership_self(lp->mem));
    cJSON_AddNumberToObject(o, "at_ms", (double)clock_wall_ms());
    cJSON_AddNumberToObject(o, "interval_ms", (double)lp->interval_ms);
    for (uint32_t p = 0; p < P; p++) {
        struct engine_partition_view v;
        engine_partition(lp->eng, p, &v);
        uint64_t d = v.events >= lp->last[p] ? v.events - lp->last[p] : 0;
        lp->last[p] = v.events;
        uint64_t epoch;
        if (d == 0 || !membership_owns(lp->mem, p, &epoch))
            continue;
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateNumber(p));
        cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)d / secs));
        cJSON_AddItemToArray(rates, pair);
    }
    for (uint32_t p = 0; p < P; p++) {
        struct cluster_part part;
        if (!membership_part(lp->mem, p, &part) || !follows(&part, membership_self(lp->mem)))
            continue;
        /* a follower's next_seq is durable: its replay is one synced write per batch */
        struct engine_partition_view v;
        engine_partition(lp->eng, p, &v);
        cJSON *triple = cJSON_CreateArray();
        cJSON_AddItemToArray(triple, cJSON_CreateNumber(p));
        cJSON_AddItemToArray(triple, cJSON_CreateNumber((double)part.epoch));
        cJSON_AddItemToArray(triple, cJSON_CreateNumber((double)v.next_seq));
        cJSON_AddItemToArray(durable, triple);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void loadpub_main(struct worker *w, void *arg)
{
    loadpub *lp = arg;
    int64_t prev = clock_mono_ms();
    while (worker_wait(w, lp->interval_ms)) {
        int64_t now = clock_mono_ms();
        char *json = sample(lp, (double)(now - prev) / 1000.0);
        prev = now;
        int64_t lease = membership_lease(lp->mem);
        etcd_client *ec = membership_etcd(lp->mem);
        if (json && lease > 0 && etcd_put(ec, lp->key, json, strlen(json), lease, NULL) != EDDY_OK)
            log_warn("msg=\"cannot publish the load record\" key=%s error=\"%s\"", lp->key,
                     etcd_last_error(ec));
        free(json);
    }
}

eddy_err loadpub_start(engine *eng, membership *mem, const char *cluster, int64_t interval_ms,
                       loadpub **out)
{
    if (interval_ms <= 0)
        return EDDY_ERR_INVALID;
    loadpub *lp = calloc(1, sizeof(*lp));
    if (!lp)
        return EDDY_ERR_NOMEM;
    lp->eng = eng;
    lp->mem = mem;
    lp->interval_ms = interval_ms;
    char suffix[CLUSTER_ID_MAX + 8];
    snprintf(suffix, sizeof(suffix), "load/%s", membership_self(mem));
    cluster_key(lp->key, sizeof(lp->key), cluster, suffix);
    uint32_t P = membership_partitions(mem);
    lp->last = calloc(P, sizeof(*lp->last));
    for (uint32_t p = 0; lp->last && p < P; p++) {
        struct engine_partition_view v;
        engine_partition(eng, p, &v);
        lp->last[p] = v.events;
    }
    if (!lp->last || worker_start(&lp->worker, "load", loadpub_main, lp) != EDDY_OK) {
        free(lp->last);
        free(lp);
        return EDDY_ERR_NOMEM;
    }
    *out = lp;
    return EDDY_OK;
}

void loadpub_stop(loadpub *lp)
{
    if (!lp)
        return;
    worker_stop(&lp->worker);
    free(lp->last);
    free(lp);
}
