/* Checkpoint records in etcd and the final checkpoints of a leaving node. */
#include "node/cluster/ckptpub.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/etcd.h"
#include "common/log.h"

void ckptpub_record(const struct checkpoint_info *ci, const char *self,
                    struct cluster_checkpoint *out)
{
    memset(out, 0, sizeof(*out));
    const char *slash = strrchr(ci->path, '/');
    snprintf(out->id, sizeof(out->id), "%.127s", slash ? slash + 1 : ci->path);
    out->seq = ci->seq;
    out->bytes = ci->bytes;
    out->crc = ci->crc;
    char abs[PATH_MAX];
    snprintf(out->path, sizeof(out->path), "%s", realpath(ci->path, abs) ? abs : ci->path);
    snprintf(out->node, sizeof(out->node), "%s", self);
    out->created_ms = ci->created_ms;
}

void ckptpub_put(membership *mem, const char *cluster, const struct checkpoint_info *ci)
{
    struct cluster_checkpoint *rec = malloc(sizeof(*rec));
    char *json = NULL;
    if (!rec)
        goto out;
    ckptpub_record(ci, membership_self(mem), rec);
    char suffix[64], key[CLUSTER_KEY_MAX];
    snprintf(suffix, sizeof(suffix), "checkpoints/%" PRIu32, ci->partition);
    cluster_key(key, sizeof(key), cluster, suffix);
    if (!(json = cluster_checkpoint_to_json(rec)))
        goto out;
    etcd_client *ec = membership_etcd(mem);
    if (etcd_put(ec, key, json, strlen(json), 0, NULL) != EDDY_OK)
        log_warn("msg=\"cannot record checkpoint in etcd\" key=%s error=\"%s\"", key,
                 etcd_last_error(ec));
out:
    free(json);
    free(rec);
}

bool ckptpub_final_wanted(bool owned, bool moving_out, uint64_t next_seq)
{
    return (owned || moving_out) && next_seq > 0;
}

void ckptpub_final(const char *dir, engine *eng, membership *mem, struct state_service *ss)
{
    if (!dir || !eng || !mem)
        return;
    engine_flush(eng);
    for (uint32_t p = 0; p < membership_partitions(mem); p++) {
        uint64_t epoch;
        struct engine_partition_view v;
        struct checkpoint_info info;
        engine_partition(eng, p, &v);
        if (!ckptpub_final_wanted(membership_owns(mem, p, &epoch),
                                  state_service_moving_out(ss, p), v.next_seq))
            continue;
        if (checkpoint_write_dir(engine_options(eng)->checkpoint_key, engine_store(eng), p, dir,
                                 &info) != EDDY_OK)
            log_warn("msg=\"final checkpoint failed\" partition=%u", p);
    }
}
