/* eddy reprocess: rebuild derived state from the retained log, beside the live state, and
 * swap it in atomically (Eddy.Reprocess; docs/operations.md, Reprocessing). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/rpc_client.h"

#define MAX_SETS 16

/* --set may be given several times: take every "--set NAME=VALUE" (or --set=NAME=VALUE)
 * out of argv before cli_parse, which keeps one value per flag. 'rest' gets the other
 * arguments (argv[0] first); returns their count, or -1 after a message. */
static int take_sets(int argc, char **argv, char **rest, Eddy__V1__ReprocessParameter *sets,
                     size_t *nsets)
{
    const char *vals[MAX_SETS];
    size_t nvals;
    int n = cli_take_repeated("reprocess", "set", argc, argv, rest, vals, MAX_SETS, &nvals);
    *nsets = 0;
    for (size_t i = 0; i < nvals && n >= 0; i++) {
        char *v = (char *)vals[i]; /* argv strings are writable */
        char *eq = strchr(v, '=');
        if (!eq || eq == v || !eq[1]) {
            cli_errorf("reprocess: --set wants NAME=VALUE (e.g. half-life=30d), at most %d: "
                       "\"%s\"",
                       MAX_SETS, v);
            return -1;
        }
        *eq = '\0';
        eddy__v1__reprocess_parameter__init(&sets[*nsets]);
        sets[*nsets].name = v;
        sets[*nsets].value = eq + 1;
        (*nsets)++;
    }
    return n;
}

static int print_table(const Eddy__V1__ReprocessResponse *r)
{
    static const char *const header[] = {">PARTITION", ">FIRST_SEQ", ">RECORDS", ">NEXT_SEQ",
                                         "CHECKPOINT", "NOTE"};
    size_t shown = 0, truncated = 0;
    struct cli_table *t = cli_table_new(6, header);
    int bad = t == NULL;
    for (size_t i = 0; i < r->n_partitions && !bad; i++) {
        const Eddy__V1__ReprocessedPartition *p = r->partitions[i];
        truncated += p->log_truncated;
        if (p->records == 0 && !p->checkpoint[0] && !p->log_truncated)
            continue; /* an empty partition */
        shown++;
        bad = cli_table_cell(t, "%u", p->partition) ||
              cli_table_cell(t, "%" PRIu64, p->first_seq) ||
              cli_table_cell(t, "%" PRIu64, p->records) ||
              cli_table_cell(t, "%" PRIu64, p->next_seq) ||
              cli_table_cell(t, "%s", p->checkpoint[0] ? p->checkpoint : "-") ||
              cli_table_cell(t, "%s", p->log_truncated ? "log truncated by retention" : "");
    }
    if (bad) {
        cli_table_free(t);
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    printf("reprocessed %zu partitions: %" PRIu64 " log records replayed in %" PRId64
           " ms (writes paused %" PRId64 " ms); stage 2 %s\n",
           r->n_partitions, r->records_replayed, r->duration_ms, r->pause_ms,
           r->stage2_rebuilt ? "rebuilt too" : "kept (stage 1 only)");
    printf("first seq replayed: %" PRIu64 "%s\n", r->first_seq,
           truncated ? " (the log of some partitions was truncated by --log-retention: their "
                       "state reflects the retained events only)"
                     : "");
    fputs("half-lives now (ms):", stdout);
    for (size_t i = 0; i < r->n_parameters; i++)
        printf(" %s=%s", r->parameters[i]->name, r->parameters[i]->value);
    putchar('\n');
    if (shown > 0) {
        putchar('\n');
        cli_table_print(t, stdout, 0);
    }
    if (shown < r->n_partitions)
        printf("(%zu partitions without log records or state not listed)\n",
               r->n_partitions - shown);
    cli_table_free(t);
    return CLI_EXIT_OK;
}

static int print_json(const Eddy__V1__ReprocessResponse *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *parts = cJSON_AddArrayToObject(o, "partitions");
    for (size_t i = 0; i < r->n_partitions; i++) {
        const Eddy__V1__ReprocessedPartition *p = r->partitions[i];
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "partition", p->partition);
        cJSON_AddNumberToObject(it, "first_seq", (double)p->first_seq);
        cJSON_AddNumberToObject(it, "records", (double)p->records);
        cJSON_AddNumberToObject(it, "next_seq", (double)p->next_seq);
        cJSON_AddStringToObject(it, "checkpoint", p->checkpoint);
        cJSON_AddBoolToObject(it, "log_truncated", p->log_truncated);
        cJSON_AddItemToArray(parts, it);
    }
    cJSON_AddNumberToObject(o, "records_replayed", (double)r->records_replayed);
    cJSON_AddNumberToObject(o, "first_seq", (double)r->first_seq);
    cJSON_AddNumberToObject(o, "duration_ms", (double)r->duration_ms);
    cJSON_AddNumberToObject(o, "pause_ms", (double)r->pause_ms);
    cJSON_AddBoolToObject(o, "stage2_rebuilt", r->stage2_rebuilt);
    cJSON *params = cJSON_AddObjectToObject(o, "parameters");
    for (size_t i = 0; i < r->n_parameters; i++)
        cJSON_AddNumberToObject(params, r->parameters[i]->name,
                                strtod(r->parameters[i]->value, NULL));
    return cli_json_print(o);
}

int cmd_reprocess(struct cli_ctx *ctx, int argc, char **argv)
{
    int64_t partition = -1, wait_ms = 3600000;
    bool all = false, from_start = false;
    const char *checkpoint = "";
    const struct cli_opt opts[] = {
        {"partition", FLAG_INT, &partition, "P", "rebuild this partition (0 .. P-1)"},
        {"all", FLAG_BOOL, &all, NULL, "rebuild every partition (needed by --set)"},
        {"from-start", FLAG_BOOL, &from_start, NULL,
         "from an empty state and the whole retained log (the default)"},
        {"from-checkpoint", FLAG_STRING, &checkpoint, "ID",
         "from a checkpoint (file name, seq, or latest) and the log after it"},
        {"set", FLAG_STRING, NULL, "NAME=VALUE",
         "new parameter, repeatable: half-life (all three), affinity-half-life, "
         "popularity-half-life, neighbour-half-life; e.g. half-life=30d"},
        {"wait", FLAG_DURATION, &wait_ms, "DURATION",
         "how long to wait for the rebuild (default 1h; not --timeout)"},
    };
    const struct cli_spec spec = {"reprocess", "",
                                  "Rebuild derived state from the retained log beside the live "
                                  "state and swap it in atomically; queries are answered "
                                  "throughout. Parameters set here last until the node "
                                  "restarts: change its flags too.",
                                  opts, sizeof(opts) / sizeof(opts[0]), 0, 0};
    Eddy__V1__ReprocessParameter sets[MAX_SETS], *setp[MAX_SETS];
    size_t nsets = 0;
    const char *pos[1];
    int npos;
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    if (!rest) {
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    int nrest = take_sets(argc, argv, rest, sets, &nsets);
    int rc = nrest < 0 ? CLI_EXIT_USAGE : cli_parse(ctx, &spec, nrest, rest, pos, &npos);
    free(rest);
    if (rc != CLI_CONTINUE)
        return rc;
    if ((partition >= 0) == all) {
        cli_errorf("reprocess: give --partition P or --all (see eddy reprocess --help)");
        return CLI_EXIT_USAGE;
    }
    if (from_start && checkpoint[0]) {
        cli_errorf("reprocess: --from-start and --from-checkpoint exclude each other");
        return CLI_EXIT_USAGE;
    }
    if (wait_ms <= 0 || partition > UINT32_MAX) {
        cli_errorf("reprocess: --wait must be positive and --partition at most %u", UINT32_MAX);
        return CLI_EXIT_USAGE;
    }

    Eddy__V1__ReprocessRequest req = EDDY__V1__REPROCESS_REQUEST__INIT;
    if (all) {
        req.target_case = EDDY__V1__REPROCESS_REQUEST__TARGET_ALL;
        req.all = true;
    } else {
        req.target_case = EDDY__V1__REPROCESS_REQUEST__TARGET_PARTITION;
        req.partition = (uint32_t)partition;
    }
    if (checkpoint[0]) {
        req.source_case = EDDY__V1__REPROCESS_REQUEST__SOURCE_FROM_CHECKPOINT;
        req.from_checkpoint = (char *)checkpoint;
    } else {
        req.source_case = EDDY__V1__REPROCESS_REQUEST__SOURCE_FROM_START;
        req.from_start = true;
    }
    for (size_t i = 0; i < nsets; i++)
        setp[i] = &sets[i];
    req.set = setp;
    req.n_set = nsets;

    struct rpc_channel_opts co = {.max_recv_bytes = 64 << 20, .max_send_bytes = 1 << 20,
                                  .tls = cli_tls(ctx), .token = ctx->token};
    rpc_channel *ch = rpc_channel_open(ctx->endpoint, &co);
    if (!ch) {
        cli_errorf("cannot create a channel to \"%s\"", ctx->endpoint);
        return CLI_EXIT_CONNECT;
    }
    struct rpc_result res = {0};
    ProtobufCMessage *resp = NULL;
    rpc_invoke(ch, "/eddy.v1.Eddy/Reprocess", &req.base, &eddy__v1__reprocess_response__descriptor,
               wait_ms, &resp, &res);
    rpc_channel_close(ch);
    if (res.code != GRPC_STATUS_OK || !resp) {
        eddy_error err = {res.code != GRPC_STATUS_OK ? (eddy_status)res.code : EDDY_STATUS_INTERNAL,
                          "", 0};
        snprintf(err.message, sizeof(err.message), "%s", res.details[0] ? res.details : "empty response");
        return cli_fail(ctx, &err);
    }
    const Eddy__V1__ReprocessResponse *r = (const Eddy__V1__ReprocessResponse *)resp;
    rc = ctx->json ? print_json(r) : print_table(r);
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}
