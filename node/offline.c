/* eddy-node's offline tools: they read a data directory or a checkpoint file and exit,
 * without starting a node. */
#include "node/offline.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/state/checkpoint.h"
#include "node/state/store.h"

int offline_dump_state(const char *data_dir, const char *tables)
{
    static const struct {
        const char *name;
        enum store_table t;
    } names[] = {{"log", T_LOG}, {"dedup", T_DEDUP}, {"dedup_id", T_DEDUP_ID},
                 {"dedup_exp", T_DEDUP_EXP},
                 {"user", T_USER}, {"user_win", T_USER_WIN}, {"user_log", T_USER_LOG},
                 {"part_win", T_PART_WIN}, {"product", T_PRODUCT}, {"prod_win", T_PROD_WIN},
                 {"cat_pop", T_CAT_POP}, {"late", T_LATE}, {"s2_hw", T_S2_HW}, {"meta", T_META},
                 {"seen", T_SEEN}, {"impr", T_IMPR}, {"exp_stat", T_EXP_STAT},
                 {"cooc", T_COOC}};
    uint32_t mask = 0;
    char list[512];
    snprintf(list, sizeof(list), "%s", tables);
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i;
        if (strcmp(tok, "all") == 0) {
            mask = UINT32_MAX;
            continue;
        }
        for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            if (strcmp(tok, names[i].name) == 0)
                break;
        }
        if (i == sizeof(names) / sizeof(names[0])) {
            fprintf(stderr, "eddy-node: unknown table '%s' for --dump-state\n", tok);
            return 2;
        }
        mask |= UINT32_C(1) << names[i].t;
    }
    store *st = NULL;
    char err[256] = "";
    struct store_opts so = {data_dir, 8 << 20, 0};
    if (store_open(&so, &st, err, sizeof(err)) != EDDY_OK) {
        fprintf(stderr, "eddy-node: cannot open %s: %s\n", data_dir, err);
        return 1;
    }
    eddy_err e = store_dump(st, mask, stdout);
    store_close(st);
    return e == EDDY_OK ? 0 : 1;
}

int offline_verify_checkpoint(const char *path, const char *key_file)
{
    struct checkpoint_info ci;
    struct ckptkey key;
    memset(&key, 0, sizeof(key));
    char why[256] = "";
    if (key_file && key_file[0] && ckptkey_load(key_file, &key, why, sizeof(why)) != EDDY_OK) {
        fprintf(stderr, "eddy-node: --checkpoint-key-file %s: %s\n", key_file, why);
        return 1;
    }
    eddy_err e = checkpoint_verify(key_file && key_file[0] ? &key : NULL, path, &ci);
    ckptkey_release(&key);
    if (e != EDDY_OK) {
        fprintf(stderr, "eddy-node: %s: %s\n", path, eddy_strerror(e));
        return 1;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", ci.path);
    cJSON_AddNumberToObject(o, "partition", ci.partition);
    cJSON_AddNumberToObject(o, "version", ci.version);
    cJSON_AddNumberToObject(o, "seq", (double)ci.seq);
    cJSON_AddNumberToObject(o, "records", (double)ci.records);
    cJSON_AddNumberToObject(o, "bytes", (double)ci.bytes);
    cJSON_AddNumberToObject(o, "crc", ci.crc);
    cJSON_AddBoolToObject(o, "encrypted", ci.encrypted);
    cJSON_AddNumberToObject(o, "created_ms", (double)ci.created_ms);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text)
        return 1;
    printf("%s\n", text);
    free(text);
    return 0;
}
