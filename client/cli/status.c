/* eddy status: what the coordinator knows about the cluster
 * (eddy.cluster.v1.Coordinator/ClusterStatus on --coordinator; a --dev node at --endpoint
 * answers the same call for itself when no coordinator can be reached). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/buf.h"
#include "common/cluster.h"
#include "common/rpc_client.h"
#include "eddy/v1/cluster.pb-c.h"

#define M_STATUS "/eddy.cluster.v1.Coordinator/ClusterStatus"
#define M_DRAIN "/eddy.cluster.v1.Coordinator/Drain"

typedef Eddy__Cluster__V1__ClusterStatusResponse status_resp;

static bool registered(const status_resp *r, const char *id)
{
    for (size_t i = 0; i < r->n_nodes; i++) {
        if (strcmp(r->nodes[i]->id, id) == 0)
            return true;
    }
    return false;
}

/* The longest list of one owner's partitions (65,536 of them, each a number and a comma,
 * take under half of it). */
#define OWNED_TEXT_MAX (1u << 20)

/* The partitions of 'owner' grouped by epoch, ranges of consecutive partitions joined:
 * "e1: 0-5,9,12-15  e2: 6-8" ("-" if none). Caller frees the result; NULL out of memory. */
static char *owned_by_epoch(const status_resp *r, const char *owner)
{
    struct buf s = BUF_INIT(OWNED_TEXT_MAX);
    uint64_t done_below = 0; /* epochs < this are printed */
    for (;;) {
        /* the smallest epoch >= done_below among the owner's partitions */
        bool any = false;
        uint64_t e = 0;
        for (size_t i = 0; i < r->n_partitions; i++) {
            const Eddy__Cluster__V1__Partition *p = r->partitions[i];
            if (strcmp(p->owner, owner) == 0 && p->epoch >= done_below && (!any || p->epoch < e)) {
                e = p->epoch;
                any = true;
            }
        }
        if (!any)
            break;
        if (buf_addf(&s, "%se%" PRIu64 ":", s.len ? "  " : "", e) != EDDY_OK)
            goto fail;
        bool first = true;
        for (size_t i = 0; i < r->n_partitions;) {
            const Eddy__Cluster__V1__Partition *p = r->partitions[i];
            if (strcmp(p->owner, owner) != 0 || p->epoch != e) {
                i++;
                continue;
            }
            size_t j = i + 1;
            while (j < r->n_partitions && strcmp(r->partitions[j]->owner, owner) == 0 &&
                   r->partitions[j]->epoch == e &&
                   r->partitions[j]->partition == r->partitions[j - 1]->partition + 1)
                j++;
            eddy_err err = j - 1 > i ? buf_addf(&s, "%s%u-%u", first ? " " : ",", p->partition,
                                                r->partitions[j - 1]->partition)
                                     : buf_addf(&s, "%s%u", first ? " " : ",", p->partition);
            if (err != EDDY_OK)
                goto fail;
            first = false;
            i = j;
        }
        if (e == UINT64_MAX)
            break;
        done_below = e + 1;
    }
    if (s.len == 0 && buf_add(&s, "-", 1) != EDDY_OK)
        goto fail;
    return buf_detach(&s, NULL);
fail:
    buf_release(&s);
    return NULL;
}

/* "a,b,c", or "-" for none. */
static void ids_text(char **ids, size_t n, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? "," : "", ids[i]);
    if (!buf[0])
        snprintf(buf, len, "-");
}

#define SET_TEXT_MAX (CLUSTER_REPLICAS_MAX * CLUSTER_ID_MAX)
#define ISR_TEXT_MAX (2 * SET_TEXT_MAX + 32)

/* The in-sync set of 'p', and the set its leader was promoted from when its record keeps
 * one: "s1 (promoted from s0,s1)". */
static void isr_text(const Eddy__Cluster__V1__Partition *p, char *buf, size_t len)
{
    char isr[SET_TEXT_MAX], from[SET_TEXT_MAX];
    ids_text(p->in_sync, p->n_in_sync, isr, sizeof(isr));
    if (p->n_promoted_from == 0) {
        snprintf(buf, len, "%s", isr);
        return;
    }
    ids_text(p->promoted_from, p->n_promoted_from, from, sizeof(from));
    snprintf(buf, len, "%s (promoted from %s)", isr, from);
}

/* Whether partition 'p' has the replicas 'reps' and the in-sync set 'isr' (as texts). */
static bool has_sets(const Eddy__Cluster__V1__Partition *p, const char *reps, const char *isr)
{
    char a[SET_TEXT_MAX], b[ISR_TEXT_MAX];
    ids_text(p->replicas, p->n_replicas, a, sizeof(a));
    isr_text(p, b, sizeof(b));
    return strcmp(a, reps) == 0 && strcmp(b, isr) == 0;
}

/* The partitions with those sets, ranges of consecutive partitions joined: "0-5,9";
 * '*count' how many. Caller frees the result; NULL out of memory. */
static char *with_sets(const status_resp *r, const char *reps, const char *isr, size_t *count)
{
    struct buf s = BUF_INIT(OWNED_TEXT_MAX);
    *count = 0;
    for (size_t i = 0; i < r->n_partitions;) {
        if (!has_sets(r->partitions[i], reps, isr)) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < r->n_partitions && has_sets(r->partitions[j], reps, isr) &&
               r->partitions[j]->partition == r->partitions[j - 1]->partition + 1)
            j++;
        eddy_err err = j - 1 > i ? buf_addf(&s, "%s%u-%u", s.len ? "," : "",
                                            r->partitions[i]->partition,
                                            r->partitions[j - 1]->partition)
                                 : buf_addf(&s, "%s%u", s.len ? "," : "",
                                            r->partitions[i]->partition);
        if (err != EDDY_OK) {
            buf_release(&s);
            return NULL;
        }
        *count += j - i;
        i = j;
    }
    if (s.len == 0 && buf_add(&s, "", 0) != EDDY_OK) {
        buf_release(&s);
        return NULL;
    }
    return buf_detach(&s, NULL);
}

/* One row per distinct (replicas, in-sync set), in the order of their first partition. */
static int replica_rows(const status_resp *r, struct cli_table *t)
{
    char reps[SET_TEXT_MAX], isr[ISR_TEXT_MAX];
    for (size_t i = 0; i < r->n_partitions; i++) {
        const Eddy__Cluster__V1__Partition *p = r->partitions[i];
        ids_text(p->replicas, p->n_replicas, reps, sizeof(reps));
        isr_text(p, isr, sizeof(isr));
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = has_sets(r->partitions[j], reps, isr);
        if (seen)
            continue;
        size_t count = 0;
        char *parts = with_sets(r, reps, isr, &count);
        int bad = !parts || cli_table_cell(t, "%s", reps) || cli_table_cell(t, "%s", isr) ||
                  cli_table_cell(t, "%zu", count) || cli_table_cell(t, "%s", parts);
        free(parts);
        if (bad)
            return -1;
    }
    return 0;
}

/* Whether the map has anything to show about replicas: more than one copy somewhere, or
 * an in-sync record. */
static bool replicated(const status_resp *r)
{
    for (size_t i = 0; i < r->n_partitions; i++) {
        if (r->partitions[i]->n_replicas > 1 || r->partitions[i]->n_in_sync > 0)
            return true;
    }
    return false;
}

/* "850ms", "42s", "17m", "5h", "3d". */
static void age_text(int64_t ms, char *buf, size_t len)
{
    if (ms < 1000)
        snprintf(buf, len, "%" PRId64 "ms", ms);
    else if (ms < 120 * 1000LL)
        snprintf(buf, len, "%" PRId64 "s", ms / 1000);
    else if (ms < 120 * 60000LL)
        snprintf(buf, len, "%" PRId64 "m", ms / 60000);
    else if (ms < 48 * 3600000LL)
        snprintf(buf, len, "%" PRId64 "h", ms / 3600000);
    else
        snprintf(buf, len, "%" PRId64 "d", ms / 86400000);
}

/* The oldest checkpoint among the partitions of 'owner', and how many have none:
 * "42s", "42s (3 none)", "- (16 none)". */
static void ckpt_age_text(const status_resp *r, const char *owner, char *buf, size_t len)
{
    int64_t oldest = -1;
    size_t none = 0;
    for (size_t i = 0; i < r->n_partitions; i++) {
        const Eddy__Cluster__V1__Partition *p = r->partitions[i];
        if (strcmp(p->owner, owner) != 0)
            continue;
        if (p->checkpoint_age_ms < 0)
            none++;
        else if (p->checkpoint_age_ms > oldest)
            oldest = p->checkpoint_age_ms;
    }
    char age[32] = "-";
    if (oldest >= 0)
        age_text(oldest, age, sizeof(age));
    if (none)
        snprintf(buf, len, "%s (%zu none)", age, none);
    else
        snprintf(buf, len, "%s", age);
}

static int print_table(const status_resp *r)
{
    static const char *const nh[] = {"ID", "ROLES", "ZONE", "ADDRESS", "METRICS",
                                     ">PARTITIONS", ">FOLLOWS", ">EVENTS/S", "DRAINING",
                                     "STARTED"};
    static const char *const ph[] = {"OWNER", ">COUNT", "CKPT AGE", "PARTITIONS BY EPOCH"};
    static const char *const rh[] = {"REPLICAS", "IN SYNC", ">COUNT", "PARTITIONS"};
    struct cli_table *nt = cli_table_new(10, nh), *pt = cli_table_new(4, ph),
                     *rt = cli_table_new(4, rh);
    int bad = !nt || !pt || !rt;
    char roles[64], started[40];

    for (size_t i = 0; i < r->n_nodes && !bad; i++) {
        const Eddy__Cluster__V1__Node *n = r->nodes[i];
        ids_text(n->roles, n->n_roles, roles, sizeof(roles));
        cli_format_time(n->started_ms, started, sizeof(started));
        bad = cli_table_cell(nt, "%s", n->id) || cli_table_cell(nt, "%s", roles) ||
              cli_table_cell(nt, "%s", n->zone[0] ? n->zone : "-") ||
              cli_table_cell(nt, "%s", n->grpc_addr[0] ? n->grpc_addr : "-") ||
              cli_table_cell(nt, "%s", n->metrics_addr[0] ? n->metrics_addr : "-") ||
              cli_table_cell(nt, "%u", n->partitions_owned) ||
              cli_table_cell(nt, "%u", n->partitions_followed) ||
              (n->events_per_second < 0 ? cli_table_cell(nt, "-")
                                        : cli_table_cell(nt, "%.0f", n->events_per_second)) ||
              cli_table_cell(nt, "%s", n->draining ? "yes" : "no") ||
              cli_table_cell(nt, "%s", started);
    }
    /* one row per owner in the map (in the order of their first partition): registered
     * nodes first, then owners that are no longer registered, then unassigned partitions */
    for (int pass = 0; pass < 3 && !bad; pass++) {
        for (size_t i = 0; i < r->n_partitions && !bad; i++) {
            const char *owner = r->partitions[i]->owner;
            bool seen = false;
            for (size_t j = 0; j < i && !seen; j++)
                seen = strcmp(r->partitions[j]->owner, owner) == 0;
            bool reg = owner[0] && registered(r, owner);
            if (seen || (pass == 0) != reg || (pass == 2) != !owner[0])
                continue;
            size_t count = 0;
            for (size_t j = 0; j < r->n_partitions; j++)
                count += strcmp(r->partitions[j]->owner, owner) == 0;
            char *runs = owned_by_epoch(r, owner);
            char label[300], ckpt[64];
            snprintf(label, sizeof(label), "%s%s", owner[0] ? owner : "(unassigned)",
                     owner[0] && !reg ? " (not registered)" : "");
            ckpt_age_text(r, owner, ckpt, sizeof(ckpt));
            bad = !runs || cli_table_cell(pt, "%s", label) || cli_table_cell(pt, "%zu", count) ||
                  cli_table_cell(pt, "%s", ckpt) || cli_table_cell(pt, "%s", runs);
            free(runs);
        }
    }
    bool show_replicas = replicated(r);
    if (!bad && show_replicas)
        bad = replica_rows(r, rt);
    if (bad) {
        cli_table_free(nt);
        cli_table_free(pt);
        cli_table_free(rt);
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    printf("cluster:     %s\n", r->cluster);
    printf("leader:      %s\n", r->leader_id[0] ? r->leader_id : "(none: election in progress)");
    printf("partitions:  %u\n", r->config_partitions);
    if (r->replication_factor)
        printf("replicas:    %u per partition, %u in sync to acknowledge\n",
               r->replication_factor, r->min_insync);
    printf("assignment:  version %" PRIu64 "\n", r->assignment_version);
    printf("answered by: %s (etcd revision %" PRId64 ")\n", r->answered_by, r->revision);
    if (r->n_draining) {
        fputs("draining:   ", stdout);
        for (size_t i = 0; i < r->n_draining; i++)
            printf(" %s", r->draining[i]);
        fputc('\n', stdout);
    }
    printf("\nnodes (%zu):\n", r->n_nodes);
    if (r->n_nodes)
        cli_table_print(nt, stdout, 2);
    else
        puts("  none registered");
    if (r->n_moves) {
        printf("\nmoves in progress (%zu):\n", r->n_moves);
        printf("  %-9s %-16s %-16s %-8s %s\n", "PARTITION", "FROM", "TO", "PHASE", "AGE");
        for (size_t i = 0; i < r->n_moves; i++) {
            char age[32];
            age_text(r->moves[i]->age_ms, age, sizeof(age));
            printf("  %-9u %-16s %-16s %-8s %s\n", r->moves[i]->partition, r->moves[i]->from,
                   r->moves[i]->to, r->moves[i]->phase, age);
        }
    }
    puts("\npartition map:");
    if (r->n_partitions)
        cli_table_print(pt, stdout, 2);
    else
        puts("  no assignment written yet");
    if (show_replicas) {
        puts("\nreplica sets (leader first):");
        cli_table_print(rt, stdout, 2);
    }
    cli_table_free(nt);
    cli_table_free(pt);
    cli_table_free(rt);
    return CLI_EXIT_OK;
}

static int print_json(const status_resp *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cluster", r->cluster);
    cJSON_AddNumberToObject(o, "config_partitions", r->config_partitions);
    cJSON_AddNumberToObject(o, "replication_factor", r->replication_factor);
    cJSON_AddNumberToObject(o, "min_insync", r->min_insync);
    cJSON_AddStringToObject(o, "leader_id", r->leader_id);
    cJSON_AddNumberToObject(o, "assignment_version", (double)r->assignment_version);
    cJSON_AddNumberToObject(o, "revision", (double)r->revision);
    cJSON_AddStringToObject(o, "answered_by", r->answered_by);
    cJSON *nodes = cJSON_AddArrayToObject(o, "nodes");
    for (size_t i = 0; i < r->n_nodes; i++) {
        const Eddy__Cluster__V1__Node *n = r->nodes[i];
        cJSON *it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "id", n->id);
        cJSON *roles = cJSON_AddArrayToObject(it, "roles");
        for (size_t k = 0; k < n->n_roles; k++)
            cJSON_AddItemToArray(roles, cJSON_CreateString(n->roles[k]));
        cJSON_AddStringToObject(it, "grpc_addr", n->grpc_addr);
        cJSON_AddStringToObject(it, "metrics_addr", n->metrics_addr);
        cJSON_AddNumberToObject(it, "started_ms", (double)n->started_ms);
        cJSON_AddNumberToObject(it, "partitions_owned", n->partitions_owned);
        cJSON_AddNumberToObject(it, "partitions_followed", n->partitions_followed);
        cJSON_AddStringToObject(it, "zone", n->zone);
        cJSON_AddBoolToObject(it, "draining", n->draining);
        cJSON_AddNumberToObject(it, "events_per_second", n->events_per_second);
        cJSON *owned = cJSON_AddArrayToObject(it, "partitions");
        for (size_t k = 0; k < r->n_partitions; k++) {
            const Eddy__Cluster__V1__Partition *p = r->partitions[k];
            if (strcmp(p->owner, n->id) != 0)
                continue;
            cJSON *pp = cJSON_CreateObject();
            cJSON_AddNumberToObject(pp, "partition", p->partition);
            cJSON_AddNumberToObject(pp, "epoch", (double)p->epoch);
            cJSON_AddNumberToObject(pp, "checkpoint_age_ms", (double)p->checkpoint_age_ms);
            cJSON_AddItemToArray(owned, pp);
        }
        cJSON_AddItemToArray(nodes, it);
    }
    cJSON *parts = cJSON_AddArrayToObject(o, "partitions");
    for (size_t k = 0; k < r->n_partitions; k++) {
        const Eddy__Cluster__V1__Partition *p = r->partitions[k];
        cJSON *pp = cJSON_CreateObject();
        cJSON_AddNumberToObject(pp, "partition", p->partition);
        cJSON_AddStringToObject(pp, "owner", p->owner);
        cJSON_AddNumberToObject(pp, "epoch", (double)p->epoch);
        /* -1 / 0 / "": no checkpoint recorded */
        cJSON_AddNumberToObject(pp, "checkpoint_seq", (double)p->checkpoint_seq);
        cJSON_AddNumberToObject(pp, "checkpoint_age_ms", (double)p->checkpoint_age_ms);
        cJSON_AddStringToObject(pp, "checkpoint_node", p->checkpoint_node);
        cJSON_AddNumberToObject(pp, "checkpoint_bytes", (double)p->checkpoint_bytes);
        cJSON *reps = cJSON_AddArrayToObject(pp, "replicas");
        for (size_t i = 0; i < p->n_replicas; i++)
            cJSON_AddItemToArray(reps, cJSON_CreateString(p->replicas[i]));
        /* [] and 0: no in-sync record */
        cJSON *isr = cJSON_AddArrayToObject(pp, "in_sync");
        for (size_t i = 0; i < p->n_in_sync; i++)
            cJSON_AddItemToArray(isr, cJSON_CreateString(p->in_sync[i]));
        cJSON_AddNumberToObject(pp, "in_sync_epoch", (double)p->in_sync_epoch);
        /* []: none kept (a follower joined, no promotion, or no record) */
        cJSON *from = cJSON_AddArrayToObject(pp, "promoted_from");
        for (size_t i = 0; i < p->n_promoted_from; i++)
            cJSON_AddItemToArray(from, cJSON_CreateString(p->promoted_from[i]));
        cJSON_AddItemToArray(parts, pp);
    }
    cJSON *dr = cJSON_AddArrayToObject(o, "draining");
    for (size_t i = 0; i < r->n_draining; i++)
        cJSON_AddItemToArray(dr, cJSON_CreateString(r->draining[i]));
    cJSON *mv = cJSON_AddArrayToObject(o, "moves");
    for (size_t i = 0; i < r->n_moves; i++) {
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "partition", r->moves[i]->partition);
        cJSON_AddStringToObject(it, "from", r->moves[i]->from);
        cJSON_AddStringToObject(it, "to", r->moves[i]->to);
        cJSON_AddNumberToObject(it, "epoch", (double)r->moves[i]->epoch);
        cJSON_AddStringToObject(it, "phase", r->moves[i]->phase);
        cJSON_AddNumberToObject(it, "age_ms", (double)r->moves[i]->age_ms);
        cJSON_AddItemToArray(mv, it);
    }
    return cli_json_print(o);
}

/* One call to the server at 'addr' (a coordinator, or a --dev node for ClusterStatus):
 * CLI_EXIT_OK with *resp (caller frees), or the exit code with the error in *res and no
 * message printed. */
static int call_at(struct cli_ctx *ctx, const char *addr, const char *method,
                   const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                   ProtobufCMessage **resp, struct rpc_result *res)
{
    *resp = NULL;
    struct rpc_channel_opts co = {
        .max_recv_bytes = 64 << 20,
        .max_send_bytes = 1 << 20,
        .wait_for_ready = false,
        .tls = cli_tls(ctx),
        .token = ctx->token,
    };
    rpc_channel *ch = rpc_channel_open(addr, &co);
    if (!ch) {
        res->code = GRPC_STATUS_UNAVAILABLE;
        snprintf(res->details, sizeof(res->details), "cannot create a channel");
        return CLI_EXIT_CONNECT;
    }
    rpc_invoke(ch, method, req, desc, ctx->timeout_ms, resp, res);
    rpc_channel_close(ch);
    if (res->code == GRPC_STATUS_OK && *resp)
        return CLI_EXIT_OK;
    if (*resp)
        protobuf_c_message_free_unpacked(*resp, NULL);
    *resp = NULL;
    if (res->code == GRPC_STATUS_OK)
        res->code = GRPC_STATUS_INTERNAL;
    return cli_exit_code((eddy_status)res->code);
}

/* The message of a failed call_at to the coordinator at 'addr'; returns 'rc'. */
static int report(int rc, const struct rpc_result *res, const char *addr)
{
    eddy_status code = (eddy_status)res->code;
    if (rc == CLI_EXIT_CONNECT)
        cli_errorf("%s: %s (coordinator %s)", eddy_status_name(code),
                   res->details[0] ? res->details : "(no message)", addr);
    else
        cli_errorf("%s: %s", eddy_status_name(code), res->details[0] ? res->details : "empty response");
    return rc;
}

/* One call to the coordinator at --coordinator; CLI_EXIT_OK with *resp (caller frees), or
 * the exit code after a message. */
static int coordinator_call(struct cli_ctx *ctx, const char *method, const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp)
{
    *resp = NULL;
    if (!ctx->coordinator[0]) {
        cli_errorf("--coordinator must not be empty");
        return CLI_EXIT_USAGE;
    }
    struct rpc_result res = {0};
    int rc = call_at(ctx, ctx->coordinator, method, req, desc, resp, &res);
    return rc == CLI_EXIT_OK ? rc : report(rc, &res, ctx->coordinator);
}

int cmd_drain(struct cli_ctx *ctx, int argc, char **argv)
{
    bool undo = false;
    const struct cli_opt opts[] = {
        {"undo", FLAG_BOOL, &undo, NULL, "cancel the drain: the node may own partitions again"},
    };
    const struct cli_spec spec = {
        "drain", "NODE",
        "Scale in: ask the coordinator (--coordinator) to move every partition of state node "
        "NODE to the other state nodes, live (at most --max-moves at a time), and to give it "
        "none again until --undo. Returns at once; watch the moves with eddy status. The node "
        "may be stopped once it owns no partition.",
        opts, sizeof(opts) / sizeof(opts[0]), 1, 1};
    const char *pos[1];
    int npos;
    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    Eddy__Cluster__V1__DrainRequest req = EDDY__CLUSTER__V1__DRAIN_REQUEST__INIT;
    req.node_id = (char *)pos[0];
    req.undo = undo;
    ProtobufCMessage *resp = NULL;
    rc = coordinator_call(ctx, M_DRAIN, &req.base, &eddy__cluster__v1__drain_response__descriptor,
                          &resp);
    if (rc != CLI_EXIT_OK)
        return rc;
    const Eddy__Cluster__V1__DrainResponse *r = (const Eddy__Cluster__V1__DrainResponse *)resp;
    if (ctx->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "node_id", pos[0]);
        cJSON_AddBoolToObject(o, "draining", !undo);
        cJSON_AddBoolToObject(o, "registered", r->registered);
        cJSON_AddNumberToObject(o, "partitions_owned", r->partitions_owned);
        rc = cli_json_print(o);
    } else {
        printf("%s %s: %u partition%s owned now%s\n", undo ? "drain cancelled for" : "draining",
               pos[0], r->partitions_owned, r->partitions_owned == 1 ? "" : "s",
               r->registered ? "" : " (node not registered)");
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

int cmd_status(struct cli_ctx *ctx, int argc, char **argv)
{
    const struct cli_spec spec = {
        "status", "",
        "Ask a coordinator (--coordinator HOST:PORT, env EDDY_COORDINATOR, default "
        "127.0.0.1:7071) for the cluster: registered nodes (id, roles, address, partitions "
        "owned), the leader, the assignment version, each node's partitions with their "
        "epochs and the age of their newest checkpoint (CKPT AGE: the oldest among the "
        "owner's partitions). Any coordinator answers, leader or standby. When no "
        "coordinator can be reached, a single eddy-node --dev at --endpoint answers for "
        "itself: one node owning every partition.",
        NULL, 0, 0, 0};
    const char *pos[1];
    int npos;
    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!ctx->coordinator[0]) {
        cli_errorf("--coordinator must not be empty");
        return CLI_EXIT_USAGE;
    }
    Eddy__Cluster__V1__ClusterStatusRequest req = EDDY__CLUSTER__V1__CLUSTER_STATUS_REQUEST__INIT;
    const ProtobufCMessageDescriptor *desc = &eddy__cluster__v1__cluster_status_response__descriptor;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res = {0}, node_res = {0};
    rc = call_at(ctx, ctx->coordinator, M_STATUS, &req.base, desc, &resp, &res);
    /* No coordinator there: a single --dev node at --endpoint answers for itself (a
     * cluster node does not: UNIMPLEMENTED, and the coordinator's error stands). */
    if (rc == CLI_EXIT_CONNECT && strcmp(ctx->endpoint, ctx->coordinator) != 0 &&
        call_at(ctx, ctx->endpoint, M_STATUS, &req.base, desc, &resp, &node_res) == CLI_EXIT_OK)
        rc = CLI_EXIT_OK;
    if (rc != CLI_EXIT_OK)
        return report(rc, &res, ctx->coordinator);
    const status_resp *r = (const status_resp *)resp;
    rc = ctx->json ? print_json(r) : print_table(r);
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}
