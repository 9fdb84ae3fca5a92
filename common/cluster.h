/* The cluster's shared records in etcd (docs/design.md §6), as plain structs with their JSON
 * encodings, used by the coordinator and the nodes alike:
 *
 *   /eddy/<cluster>/config         {"partitions":P,"replication_factor":R,
 *                                   "min_insync":M}                      created by the leader
 *   /eddy/<cluster>/nodes/<id>     {"id","roles":["ingest","state"],"grpc_addr",
 *                                   "metrics_addr","started_ms","zone"}  on the node's lease
 *   /eddy/<cluster>/leader         coordinator id                        on the leader's lease
 *   /eddy/<cluster>/assignment     {"partitions":P,"version":n,"owners":[...],
 *                                   "epochs":[...],"replicas":[[...],...]} written by the leader
 *   /eddy/<cluster>/isr/<p>        {"epoch","leader","isr":[...],        the in-sync replicas
 *                                   "promoted_from":[...]}               of partition p, written
 *                                  by its leader (compare-and-swap); promoted_from optional
 *   /eddy/<cluster>/drain/<id>     "" : node asked to give its partitions away
 *   /eddy/<cluster>/checkpoints/<p> {"id","seq","bytes","crc","path","node","created_ms"}
 *                                  the newest checkpoint of partition p (plain put, no lease)
 *   /eddy/<cluster>/moves/<p>      {"partition","from","to","epoch","phase","started_ms"}
 *                                  a live move in progress (docs/design.md §7): created and
 *                                  deleted by the leader; the phase is advanced by
 *                                  compare-and-swap, by the target (copy -> ready,
 *                                  flipped -> done) and by the leader (ready -> flipped)
 *
 * Pure: no I/O. */
#ifndef EDDY_CLUSTER_H
#define EDDY_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define CLUSTER_ID_MAX 128
#define CLUSTER_ADDR_MAX 256
#define CLUSTER_KEY_MAX 512
#define CLUSTER_PATH_MAX 4096
#define CLUSTER_PREFIX "/eddy/"
#define CLUSTER_ZONE_MAX 64
/* Copies of a partition at most (leader included): the bound of --replication-factor. */
#define CLUSTER_REPLICAS_MAX 5

enum cluster_role { ROLE_INGEST = 1, ROLE_STATE = 2 };

struct cluster_node {
    char id[CLUSTER_ID_MAX];
    unsigned roles;                  /* ROLE_* bits */
    char grpc_addr[CLUSTER_ADDR_MAX];
    char metrics_addr[CLUSTER_ADDR_MAX];
    int64_t started_ms;
    char zone[CLUSTER_ZONE_MAX];     /* failure domain (--zone); "" = none; optional in JSON */
};

/* One partition of the map. Invariant (kept by the parser and the assigner): nreplicas is 0
 * exactly when owner is "", else replicas[0] is the owner and the ids are distinct. A map
 * written before replication (no "replicas" in its JSON) parses as replicas = [owner]. */
struct cluster_part {
    char owner[CLUSTER_ID_MAX];      /* the leader; "" = unassigned */
    uint64_t epoch;
    uint32_t nreplicas;              /* 0 when unassigned; else replicas[0] is the owner */
    char replicas[CLUSTER_REPLICAS_MAX][CLUSTER_ID_MAX]; /* leader first, then followers */
};

/* The partition map. Owner of the parts array: whoever called cluster_map_init. */
struct cluster_map {
    uint32_t nparts;
    uint64_t version;                /* bumped on every write by the leader */
    struct cluster_part *parts;      /* [nparts] */
};

/* Whether 'id' is one of the replicas of 'part' (leader or follower). */
bool cluster_part_has(const struct cluster_part *part, const char *id);
/* The position of 'id' in part->replicas (0: the leader), or -1. */
int cluster_part_index(const struct cluster_part *part, const char *id);
/* Make 'id' the owner with replicas = [id] (or unassigned for ""); the epoch is left alone. */
void cluster_part_set_single(struct cluster_part *part, const char *id);

/* The cluster config record. A record written before replication has neither field and
 * reads as R = 1, min-insync = 1 (an unreplicated cluster). */
struct cluster_config {
    uint32_t partitions;             /* 1..65535 */
    uint32_t replication_factor;     /* 1..CLUSTER_REPLICAS_MAX */
    uint32_t min_insync;             /* 1..replication_factor */
};

/* JSON of the config record; caller frees the string. NULL on OOM. */
char *cluster_config_to_json(const struct cluster_config *c);
/* EDDY_ERR_CORRUPT if it is not such a record (partitions is required; the other two are
 * optional, but must be in range when present). */
eddy_err cluster_config_from_json(const char *json, size_t len, struct cluster_config *c);

/* The in-sync replicas of one partition, as its leader records them under isr/<p>. */
struct cluster_isr {
    uint64_t epoch;                  /* the partition epoch the leader leads at */
    char leader[CLUSTER_ID_MAX];
    uint32_t nisr;                   /* 1..CLUSTER_REPLICAS_MAX; the leader is one of them */
    char isr[CLUSTER_REPLICAS_MAX][CLUSTER_ID_MAX];
    /* The in-sync set a promoted leader came from, kept while the leader is in sync alone
     * (0: none, then "promoted_from" is left out of the JSON): those copies hold every
     * event acknowledged before its promotion, and it acknowledged none alone since, so
     * the coordinator waits for one of them rather than give the partition to an empty
     * copy. Dropped once a follower is in 'isr'. */
    uint32_t npromoted;
    char promoted_from[CLUSTER_REPLICAS_MAX][CLUSTER_ID_MAX];
};

/* JSON of an isr record; caller frees the string. NULL on OOM. */
char *cluster_isr_to_json(const struct cluster_isr *r);
/* EDDY_ERR_CORRUPT if it is not such a record (epoch, leader and a non-empty isr of at most
 * CLUSTER_REPLICAS_MAX distinct non-empty ids are required; promoted_from, when present,
 * is a list of the same kind, possibly empty). */
eddy_err cluster_isr_from_json(const char *json, size_t len, struct cluster_isr *r);
/* Whether 'id' is in the in-sync set. */
bool cluster_isr_has(const struct cluster_isr *r, const char *id);
/* Whether the record names 'id' as a holder of every acknowledged event: in the in-sync
 * set or in the set its leader was promoted from. */
bool cluster_isr_holds(const struct cluster_isr *r, const char *id);
/* The number of distinct copies the record names so (isr and promoted_from together). */
uint32_t cluster_isr_nholders(const struct cluster_isr *r);

/* The partition of a per-partition key "<prefix><p>" (moves/<p>, checkpoints/<p>): p in
 * decimal digits only (no sign, space or more than 5 digits), below 'nparts'. */
bool cluster_key_partition(const char *key, const char *prefix, uint32_t nparts, uint32_t *p);

/* "/eddy/<cluster>/<suffix>" into 'out'. */
void cluster_key(char *out, size_t len, const char *cluster, const char *suffix);

/* Parse "ingest", "state", "ingest,state" into ROLE_* bits; -1 if invalid. */
int cluster_parse_roles(const char *text);

/* JSON of a node record; caller frees the string. NULL on OOM. */
char *cluster_node_to_json(const struct cluster_node *n);
eddy_err cluster_node_from_json(const char *json, size_t len, struct cluster_node *n);

eddy_err cluster_map_init(struct cluster_map *m, uint32_t nparts);
void cluster_map_release(struct cluster_map *m);
/* Copy 'src' into 'dst' (initialised or zeroed); reallocates as needed. */
eddy_err cluster_map_copy(struct cluster_map *dst, const struct cluster_map *src);
char *cluster_map_to_json(const struct cluster_map *m);
/* Parse into 'm' (zeroed or initialised; replaced). A map without "replicas" (an older
 * coordinator's) gives replicas = [owner]; a replica list whose first entry is not the owner,
 * with a repeated id, or longer than CLUSTER_REPLICAS_MAX is EDDY_ERR_CORRUPT. */
eddy_err cluster_map_from_json(const char *json, size_t len, struct cluster_map *m);

/* The newest checkpoint of one partition, as its writer records it in etcd (docs/design.md §7). */
struct cluster_checkpoint {
    char id[CLUSTER_ID_MAX];         /* the file name: p<partition:05>-<seq:020>.ckp */
    uint64_t seq;                    /* the partition's log seq the checkpoint reflects */
    uint64_t bytes;                  /* file length */
    uint32_t crc;                    /* the file footer's CRC-32C */
    char path[CLUSTER_PATH_MAX];     /* where the writer put it (a shared directory) */
    char node[CLUSTER_ID_MAX];       /* the node that wrote it */
    int64_t created_ms;              /* wall clock of the writer, ms since the Unix epoch */
};

/* JSON of a checkpoint record; caller frees the string. NULL on OOM. */
char *cluster_checkpoint_to_json(const struct cluster_checkpoint *c);
/* EDDY_ERR_CORRUPT if it is not such a record (id, node and seq are required). */
eddy_err cluster_checkpoint_from_json(const char *json, size_t len, struct cluster_checkpoint *c);

/* The phases of a live move, in order (docs/design.md §7). */
enum move_phase {
    MOVE_COPY,    /* the target copies the source's checkpoint and tails its log */
    MOVE_READY,   /* the target is within a small lag: the leader may flip the owner */
    MOVE_FLIPPED, /* the map names the target (epoch + 1): it fetches the final tail */
    MOVE_DONE,    /* the target serves and has checkpointed: the source may delete */
};

struct cluster_move {
    uint32_t partition;
    char from[CLUSTER_ID_MAX];       /* the owner when the move started */
    char to[CLUSTER_ID_MAX];         /* the node the partition moves to */
    uint64_t epoch;                  /* the source's epoch; the flip gives epoch + 1 */
    enum move_phase phase;
    int64_t started_ms;              /* the leader's wall clock when it started the move */
};

/* "copy", "ready", "flipped", "done". */
const char *cluster_move_phase_name(enum move_phase ph);
/* JSON of a move record; caller frees the string. NULL on OOM. */
char *cluster_move_to_json(const struct cluster_move *m);
/* EDDY_ERR_CORRUPT if it is not such a record. */
eddy_err cluster_move_from_json(const char *json, size_t len, struct cluster_move *m);

#endif
