/* eddy counts: event counts by type per event-time window (Eddy.EventCounts). */
#include <inttypes.h>

#include "cli.h"

static int print_table(const Eddy__V1__EventCountsResponse *resp)
{
    static const char *const header[] = {"START", "END", ">VIEW", ">CLICK", ">ADD_TO_CART",
                                         ">REMOVE_FROM_CART", ">PURCHASE", ">SEARCH", ">TOTAL",
                                         "CLOSED"};
    Eddy__V1__TypeCounts zero = EDDY__V1__TYPE_COUNTS__INIT;
    char a[40], b[40];
    struct cli_table *t = cli_table_new(10, header);
    int bad = t == NULL;

    for (size_t i = 0; i < resp->n_windows && !bad; i++) {
        const Eddy__V1__WindowCounts *w = resp->windows[i];
        const Eddy__V1__TypeCounts *c = w->counts ? w->counts : &zero;
        cli_format_time(w->window_start_ms, a, sizeof(a));
        cli_format_time(w->window_end_ms, b, sizeof(b));
        bad = cli_table_cell(t, "%s", a) || cli_table_cell(t, "%s", b) ||
              cli_table_cell(t, "%" PRIu64, c->view) ||
              cli_table_cell(t, "%" PRIu64, c->click) ||
              cli_table_cell(t, "%" PRIu64, c->add_to_cart) ||
              cli_table_cell(t, "%" PRIu64, c->remove_from_cart) ||
              cli_table_cell(t, "%" PRIu64, c->purchase) ||
              cli_table_cell(t, "%" PRIu64, c->search) ||
              cli_table_cell(t, "%" PRIu64, c->total) ||
              cli_table_cell(t, "%s", w->closed ? "yes" : "no");
    }
    if (bad) {
        cli_table_free(t);
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    if (resp->n_windows == 0)
        puts("no windows in the selected range");
    else
        cli_table_print(t, stdout, 0);
    cli_table_free(t);
    cli_format_time(resp->watermark_ms, a, sizeof(a));
    printf("watermark:   %s (%" PRId64 " ms)\n", a, resp->watermark_ms);
    printf("late events: %" PRIu64 "\n", resp->late_events);
    cli_print_staleness(resp->staleness);
    return CLI_EXIT_OK;
}

static int print_json(const Eddy__V1__EventCountsResponse *resp)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "windows");
    for (size_t i = 0; i < resp->n_windows; i++) {
        const Eddy__V1__WindowCounts *w = resp->windows[i];
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "window_start_ms", (double)w->window_start_ms);
        cJSON_AddNumberToObject(it, "window_end_ms", (double)w->window_end_ms);
        cJSON_AddItemToObject(it, "counts", cli_json_counts(w->counts));
        cJSON_AddBoolToObject(it, "closed", w->closed);
        cJSON_AddItemToArray(arr, it);
    }
    cJSON_AddNumberToObject(o, "watermark_ms", (double)resp->watermark_ms);
    cJSON_AddNumberToObject(o, "late_events", (double)resp->late_events);
    cli_json_staleness(o, resp->staleness);
    return cli_json_print(o);
}

int cmd_counts(struct cli_ctx *ctx, int argc, char **argv)
{
    const char *user = "";
    int64_t from = 0, to = 0;
    bool include_open = false, allow_stale = false;
    const struct cli_opt opts[] = {
        {"user", FLAG_STRING, &user, "U", "counts of one user (default: all users)"},
        {"from", FLAG_INT, &from, "MS", "windows starting at or after this time (ms since epoch)"},
        {"to", FLAG_INT, &to, "MS", "windows starting before this time (ms since epoch)"},
        {"include-open", FLAG_BOOL, &include_open, NULL,
         "also show windows that are still open (CLOSED = no)"},
        {"allow-stale", FLAG_BOOL, &allow_stale, NULL,
         "followers may answer (the user's partition's, or each partition's for all users; "
         "they may lag the leaders)"},
    };
    const struct cli_spec spec = {"counts", "",
                                  "Event counts by type, one row per event-time window (oldest "
                                  "first), then the watermark and the number of late events.",
                                  opts, sizeof(opts) / sizeof(opts[0]), 0, 0};
    const char *pos[1];
    int npos;
    eddy_error err;
    Eddy__V1__EventCountsRequest req = EDDY__V1__EVENT_COUNTS_REQUEST__INIT;
    Eddy__V1__EventCountsResponse *resp = NULL;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    req.user_id = (char *)user;
    req.start_ms = from;
    req.end_ms = to;
    req.include_open = include_open;
    req.allow_stale = allow_stale;

    eddy_client *c = cli_client(ctx);
    if (!c)
        return CLI_EXIT_CONNECT;
    if (eddy_event_counts(c, &req, &resp, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    rc = ctx->json ? print_json(resp) : print_table(resp);
    eddy_response_free(resp);
    return rc;
}
