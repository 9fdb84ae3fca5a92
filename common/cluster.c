/* JSON encodings of the cluster records in etcd. */
#include "common/cluster.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A 64-bit count written digit for digit: cJSON_CreateNumber prints 15 significant digits
 * whenever they read back within a relative 2^-52 of the value, so an epoch of
 * 4999999999999999 came back as 5e15 (found by fuzz_etcd_json's round trip). */
static cJSON *exact_number(uint64_t v)
{
    char digits[24];
    snprintf(digits, sizeof(digits), "%" PRIu64, v);
    return cJSON_CreateRaw(digits);
}

static void add_exact(cJSON *o, const char *name, uint64_t v)
{
    cJSON *n = exact_number(v);
    if (n && !cJSON_AddItemToObject(o, name, n))
        cJSON_Delete(n);
}

void cluster_key(char *out, size_t len, const char *cluster, const char *suffix)
{
    snprintf(out, len, CLUSTER_PREFIX "%s/%s", cluster, suffix);
}

int cluster_parse_roles(const char *text)
{
    unsigned roles = 0;
    const char *p = text;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 6 && strncmp(p, "ingest", 6) == 0)
            roles |= ROLE_INGEST;
        else if (n == 5 && strncmp(p, "state", 5) == 0)
            roles |= ROLE_STATE;
        else
            return -1;
        p += n;
        if (*p == ',')
            p++;
    }
    return roles ? (int)roles : -1;
}

char *cluster_node_to_json(const struct cluster_node *n)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *roles = cJSON_AddArrayToObject(o, "roles");
    if (!o || !roles) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddStringToObject(o, "id", n->id);
    if (n->roles & ROLE_INGEST)
        cJSON_AddItemToArray(roles, cJSON_CreateString("ingest"));
    if (n->roles & ROLE_STATE)
        cJSON_AddItemToArray(roles, cJSON_CreateString("state"));
    cJSON_AddStringToObject(o, "grpc_addr", n->grpc_addr);
    cJSON_AddStringToObject(o, "metrics_addr", n->metrics_addr);
    add_exact(o, "started_ms", (uint64_t)n->started_ms);
    if (n->zone[0])
        cJSON_AddStringToObject(o, "zone", n->zone);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* A JSON number that is a non-negative integer below 2^53 (exact in a double) into '*out';
 * false for anything else: converting a larger double (1e300) to an integer is undefined. */
static bool count_of(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 9007199254740992.0)
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

static bool copy_str(const cJSON *o, const char *name, char *out, size_t len, bool required)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsString(v)) {
        out[0] = '\0';
        return !required;
    }
    if (strlen(v->valuestring) >= len)
        return false;
    snprintf(out, len, "%s", v->valuestring);
    return true;
}

eddy_err cluster_node_from_json(const char *json, size_t len, struct cluster_node *n)
{
    memset(n, 0, sizeof(*n));
    cJSON *o = cJSON_ParseWithLength(json, len);
    eddy_err err = EDDY_ERR_CORRUPT;
    if (!cJSON_IsObject(o))
        goto out;
    if (!copy_str(o, "id", n->id, sizeof(n->id), true) ||
        !copy_str(o, "grpc_addr", n->grpc_addr, sizeof(n->grpc_addr), true) ||
        !copy_str(o, "metrics_addr", n->metrics_addr, sizeof(n->metrics_addr), false) ||
        !copy_str(o, "zone", n->zone, sizeof(n->zone), false))
        goto out;
    const cJSON *roles = cJSON_GetObjectItemCaseSensitive(o, "roles");
    const cJSON *r;
    cJSON_ArrayForEach(r, roles) {
        if (cJSON_IsString(r) && strcmp(r->valuestring, "ingest") == 0)
            n->roles |= ROLE_INGEST;
        else if (cJSON_IsString(r) && strcmp(r->valuestring, "state") == 0)
            n->roles |= ROLE_STATE;
    }
    uint64_t started = 0;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "started_ms");
    if (cJSON_IsNumber(st) && !count_of(st, &started))
        goto out;
    n->started_ms = (int64_t)started;
    err = EDDY_OK;
out:
    cJSON_Delete(o);
    return err;
}

eddy_err cluster_map_init(struct cluster_map *m, uint32_t nparts)
{
    m->nparts = nparts;
    m->version = 0;
    m->parts = calloc(nparts ? nparts : 1, sizeof(*m->parts));
    return m->parts ? EDDY_OK : EDDY_ERR_NOMEM;
}

void cluster_map_release(struct cluster_map *m)
{
    free(m->parts);
    m->parts = NULL;
    m->nparts = 0;
}

eddy_err cluster_map_copy(struct cluster_map *dst, const struct cluster_map *src)
{
    struct cluster_part *p = realloc(dst->parts, (src->nparts ? src->nparts : 1) * sizeof(*p));
    if (!p)
        return EDDY_ERR_NOMEM;
    memcpy(p, src->parts, src->nparts * sizeof(*p));
    dst->parts = p;
    dst->nparts = src->nparts;
    dst->version = src->version;
    return EDDY_OK;
}

char *cluster_map_to_json(const struct cluster_map *m)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *owners = cJSON_AddArrayToObject(o, "owners");
    cJSON *epochs = cJSON_AddArrayToObject(o, "epochs");
    cJSON *replicas = cJSON_AddArrayToObject(o, "replicas");
    if (!o || !owners || !epochs || !replicas) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddNumberToObject(o, "partitions", m->nparts);
    add_exact(o, "version", m->version);
    for (uint32_t p = 0; p < m->nparts; p++) {
        const struct cluster_part *c = &m->parts[p];
        cJSON_AddItemToArray(owners, cJSON_CreateString(c->owner));
        cJSON_AddItemToArray(epochs, exact_number(c->epoch));
        cJSON *set = cJSON_CreateArray();
        cJSON_AddItemToArray(replicas, set);
        /* an owner without a replica list (a part built by hand) is written as [owner],
         * what the parser would make of it */
        if (c->nreplicas == 0 && c->owner[0])
            cJSON_AddItemToArray(set, cJSON_CreateString(c->owner));
        for (uint32_t r = 0; r < c->nreplicas && r < CLUSTER_REPLICAS_MAX; r++)
            cJSON_AddItemToArray(set, cJSON_CreateString(c->replicas[r]));
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Fill part->replicas from 'set' (a JSON array, or NULL for a map without replicas), once
 * part->owner is known. */
static bool parse_replicas(const cJSON *set, struct cluster_part *part)
{
    cluster_part_set_single(part, part->owner);
    if (!set)
        return true;
    if (!cJSON_IsArray(set) || cJSON_GetArraySize(set) > CLUSTER_REPLICAS_MAX)
        return false;
    if (cJSON_GetArraySize(set) == 0) /* no list: the owner alone, as in an older map */
        return true;
    if (!part->owner[0])
        return false;
    part->nreplicas = 0;
    const cJSON *id;
    cJSON_ArrayForEach(id, set) {
        if (!cJSON_IsString(id) || !id->valuestring[0] ||
            strlen(id->valuestring) >= CLUSTER_ID_MAX || cluster_part_has(part, id->valuestring))
            return false;
        snprintf(part->replicas[part->nreplicas++], CLUSTER_ID_MAX, "%s", id->valuestring);
    }
    return strcmp(part->replicas[0], part->owner) == 0;
}

eddy_err cluster_map_from_json(const char *json, size_t len, struct cluster_map *m)
{
    cJSON *o = cJSON_ParseWithLength(json, len);
    eddy_err err = EDDY_ERR_CORRUPT;
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(o, "partitions");
    const cJSON *owners = cJSON_GetObjectItemCaseSensitive(o, "owners");
    const cJSON *epochs = cJSON_GetObjectItemCaseSensitive(o, "epochs");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(o, "version");
    const cJSON *replicas = cJSON_GetObjectItemCaseSensitive(o, "replicas");
    if (!cJSON_IsNumber(np) || np->valuedouble < 1 || np->valuedouble > 65535 ||
        cJSON_GetArraySize(owners) != (int)np->valuedouble ||
        cJSON_GetArraySize(epochs) != (int)np->valuedouble ||
        (replicas && (!cJSON_IsArray(replicas) ||
                      cJSON_GetArraySize(replicas) != (int)np->valuedouble)))
        goto out;
    uint32_t n = (uint32_t)np->valuedouble;
    struct cluster_part *parts = calloc(n, sizeof(*parts));
    if (!parts) {
        err = EDDY_ERR_NOMEM;
        goto out;
    }
    uint32_t i = 0;
    const cJSON *ow, *ep = epochs->child, *rs = replicas ? replicas->child : NULL;
    cJSON_ArrayForEach(ow, owners) {
        if (!cJSON_IsString(ow) || !count_of(ep, &parts[i].epoch) ||
            strlen(ow->valuestring) >= CLUSTER_ID_MAX) {
            free(parts);
            goto out;
        }
        snprintf(parts[i].owner, sizeof(parts[i].owner), "%s", ow->valuestring);
        if (!parse_replicas(rs, &parts[i])) {
            free(parts);
            goto out;
        }
        ep = ep->next;
        rs = rs ? rs->next : NULL;
        i++;
    }
    uint64_t version = 0;
    if (cJSON_IsNumber(ver) && !count_of(ver, &version)) {
        free(parts);
        goto out;
    }
    free(m->parts);
    m->parts = parts;
    m->nparts = n;
    m->version = version;
    err = EDDY_OK;
out:
    cJSON_Delete(o);
    return err;
}

bool cluster_part_has(const struct cluster_part *part, const char *id)
{
    return cluster_part_index(part, id) >= 0;
}

int cluster_part_index(const struct cluster_part *part, const char *id)
{
    for (uint32_t r = 0; id[0] && r < part->nreplicas && r < CLUSTER_REPLICAS_MAX; r++) {
        if (strcmp(part->replicas[r], id) == 0)
            return (int)r;
    }
    return -1;
}

void cluster_part_set_single(struct cluster_part *part, const char *id)
{
    char copy[CLUSTER_ID_MAX]; /* 'id' may point into 'part' */
    snprintf(copy, sizeof(copy), "%s", id);
    memset(part->replicas, 0, sizeof(part->replicas));
    snprintf(part->owner, sizeof(part->owner), "%s", copy);
    snprintf(part->replicas[0], sizeof(part->replicas[0]), "%s", copy);
    part->nreplicas = copy[0] ? 1 : 0;
}

char *cluster_checkpoint_to_json(const struct cluster_checkpoint *c)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "id", c->id);
    add_exact(o, "seq", c->seq);
    add_exact(o, "bytes", c->bytes);
    cJSON_AddNumberToObject(o, "crc", (double)c->crc);
    cJSON_AddStringToObject(o, "path", c->path);
    cJSON_AddStringToObject(o, "node", c->node);
    add_exact(o, "created_ms", (uint64_t)c->created_ms);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* A non-negative integer field below 2^53 (exact in a JSON number). */
static bool get_count(const cJSON *o, const char *name, uint64_t *out, bool required)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v))
        return !required;
    return count_of(v, out);
}

char *cluster_config_to_json(const struct cluster_config *c)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "partitions", c->partitions);
    cJSON_AddNumberToObject(o, "replication_factor", c->replication_factor);
    cJSON_AddNumberToObject(o, "min_insync", c->min_insync);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* An optional integer field in [lo, hi] ('*out' keeps its default when absent); anything
 * else under that name (a string, a fraction, out of range) is refused. */
static bool get_bounded(const cJSON *o, const char *name, uint32_t lo, uint32_t hi,
                        uint32_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v)
        return true;
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi ||
        v->valuedouble != (double)(uint32_t)v->valuedouble)
        return false;
    *out = (uint32_t)v->valuedouble;
    return true;
}

eddy_err cluster_config_from_json(const char *json, size_t len, struct cluster_config *c)
{
    cJSON *o = cJSON_ParseWithLength(json, len);
    eddy_err err = EDDY_ERR_CORRUPT;
    struct cluster_config v = {.partitions = 0, .replication_factor = 1, .min_insync = 1};
    if (!cJSON_IsObject(o) || !get_bounded(o, "partitions", 1, 65535, &v.partitions) ||
        v.partitions == 0 ||
        !get_bounded(o, "replication_factor", 1, CLUSTER_REPLICAS_MAX, &v.replication_factor) ||
        !get_bounded(o, "min_insync", 1, v.replication_factor, &v.min_insync))
        goto out;
    *c = v;
    err = EDDY_OK;
out:
    cJSON_Delete(o);
    return err;
}

/* A JSON array of n ids; NULL on OOM. */
static cJSON *id_array(const char (*ids)[CLUSTER_ID_MAX], uint32_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (uint32_t i = 0; a && i < n && i < CLUSTER_REPLICAS_MAX; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(ids[i]));
    return a;
}

char *cluster_isr_to_json(const struct cluster_isr *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *isr = id_array(r->isr, r->nisr);
    cJSON *from = r->npromoted ? id_array(r->promoted_from, r->npromoted) : NULL;
    if (!o || !isr || (r->npromoted && !from)) {
        cJSON_Delete(o);
        cJSON_Delete(isr);
        cJSON_Delete(from);
        return NULL;
    }
    cJSON_AddItemToObject(o, "isr", isr);
    add_exact(o, "epoch", r->epoch);
    cJSON_AddStringToObject(o, "leader", r->leader);
    if (from)
        cJSON_AddItemToObject(o, "promoted_from", from);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static bool id_in(const char (*ids)[CLUSTER_ID_MAX], uint32_t n, const char *id)
{
    for (uint32_t i = 0; id[0] && i < n && i < CLUSTER_REPLICAS_MAX; i++) {
        if (strcmp(ids[i], id) == 0)
            return true;
    }
    return false;
}

bool cluster_isr_has(const struct cluster_isr *r, const char *id)
{
    return id_in(r->isr, r->nisr, id);
}

bool cluster_isr_holds(const struct cluster_isr *r, const char *id)
{
    return id_in(r->isr, r->nisr, id) || id_in(r->promoted_from, r->npromoted, id);
}

uint32_t cluster_isr_nholders(const struct cluster_isr *r)
{
    uint32_t n = r->nisr;
    for (uint32_t i = 0; i < r->npromoted && i < CLUSTER_REPLICAS_MAX; i++)
        n += !id_in(r->isr, r->nisr, r->promoted_from[i]);
    return n;
}

/* Copy the JSON array 'a' of at most CLUSTER_REPLICAS_MAX distinct non-empty ids (at least
 * 'min') into ids[*n]. */
static bool take_ids(const cJSON *a, uint32_t min, char (*ids)[CLUSTER_ID_MAX], uint32_t *n)
{
    const cJSON *id;
    *n = 0;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) < (int)min ||
        cJSON_GetArraySize(a) > CLUSTER_REPLICAS_MAX)
        return false;
    cJSON_ArrayForEach(id, a) {
        if (!cJSON_IsString(id) || !id->valuestring[0] ||
            strlen(id->valuestring) >= CLUSTER_ID_MAX || id_in(ids, *n, id->valuestring))
            return false;
        snprintf(ids[(*n)++], CLUSTER_ID_MAX, "%s", id->valuestring);
    }
    return true;
}

eddy_err cluster_isr_from_json(const char *json, size_t len, struct cluster_isr *r)
{
    memset(r, 0, sizeof(*r));
    cJSON *o = cJSON_ParseWithLength(json, len);
    eddy_err err = EDDY_ERR_CORRUPT;
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(o, "promoted_from");
    if (!cJSON_IsObject(o) || !get_count(o, "epoch", &r->epoch, true) ||
        !copy_str(o, "leader", r->leader, sizeof(r->leader), true) || !r->leader[0] ||
        !take_ids(cJSON_GetObjectItemCaseSensitive(o, "isr"), 1, r->isr, &r->nisr) ||
        (from && !take_ids(from, 0, r->promoted_from, &r->npromoted)))
        goto out;
    if (cluster_isr_has(r, r->leader))
        err = EDDY_OK;
out:
    if (err != EDDY_OK)
        memset(r, 0, sizeof(*r));
    cJSON_Delete(o);
    return err;
}

eddy_err cluster_checkpoint_from_json(const char *json, size_t len, struct cluster_checkpoint *c)
{
    memset(c, 0, sizeof(*c));
    cJSON *o = cJSON_ParseWithLength(json, len);
    eddy_err err = EDDY_ERR_CORRUPT;
    uint64_t crc = 0, created = 0;
    if (!cJSON_IsObject(o))
        goto out;
    if (!copy_str(o, "id", c->id, sizeof(c->id), true) ||
        !copy_str(o, "node", c->node, sizeof(c->node), true) ||
        !copy_str(o, "path", c->path, sizeof(c->path), false) ||
        !get_count(o, "seq", &c->seq, true) || !get_count(o, "bytes", &c->bytes, false) ||
        !get_count(o, "crc", &crc, false) || crc > UINT32_MAX ||
        !get_count(o, "created_ms", &created, false))
        goto out;
    c->crc = (uint32_t)crc;
    c->created_ms = (int64_t)created;
    err = EDDY_OK;
out:
    cJSON_Delete(o);
    return err;
}

static const char *const phase_names[] = {"copy", "ready", "flipped", "done"};

const char *cluster_move_phase_name(enum move_phase ph)
{
    return (unsigned)ph < sizeof(phase_names) / sizeof(phase_names[0]) ? phase_names[ph] : "?";
}

char *cluster_move_to_json(const struct cluster_move *m)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "partition", (double)m->partition);
    cJSON_AddStringToObject(o, "from", m->from);
    cJSON_AddStringToObject(o, "to", m->to);
    add_exact(o, "epoch", m->epoch);
    cJSON_AddStringToObject(o, "phase", cluster_move_phase_name(m->phase));
    add_exact(o, "started_ms", (uint64_t)m->started_ms);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

eddy_err cluster_move_from_json(const char *json, size_t len, struct cluster_move *m)
{
    memset(m, 0, sizeof(*m));
    cJSON *o = cJSON_ParseWithLength(json, len);
    eddy_err err = EDDY_ERR_CORRUPT;
    uint64_t part = 0, started = 0;
    char phase[16];
    if (!cJSON_IsObject(o) || !copy_str(o, "from", m->from, sizeof(m->from), true) ||
        !copy_str(o, "to", m->to, sizeof(m->to), true) ||
        !copy_str(o, "phase", phase, sizeof(phase), true) ||
        !get_count(o, "partition", &part, true) || part > 65535 ||
        !get_count(o, "epoch", &m->epoch, true) ||
        !get_count(o, "started_ms", &started, false) || !m->from[0] || !m->to[0])
        goto out;
    m->partition = (uint32_t)part;
    m->started_ms = (int64_t)started;
    for (size_t i = 0; i < sizeof(phase_names) / sizeof(phase_names[0]); i++) {
        if (strcmp(phase, phase_names[i]) == 0) {
            m->phase = (enum move_phase)i;
            err = EDDY_OK;
        }
    }
out:
    cJSON_Delete(o);
    return err;
}

bool cluster_key_partition(const char *key, const char *prefix, uint32_t nparts, uint32_t *p)
{
    size_t n = strlen(prefix);
    if (!key || strncmp(key, prefix, n) != 0)
        return false;
    const char *id = key + n;
    size_t len = strlen(id);
    if (len == 0 || len > 5)
        return false;
    uint32_t v = 0;
    for (const char *c = id; *c; c++) {
        if (*c < '0' || *c > '9')
            return false;
        v = v * 10 + (uint32_t)(*c - '0');
    }
    if (v >= nparts)
        return false;
    *p = v;
    return true;
}
