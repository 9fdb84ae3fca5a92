/* eddy profile: the user's model (Eddy.GetUserProfile). JSON output uses the proto's
 * snake_case field names, one object per message, times as integer milliseconds. */
#include <inttypes.h>

#include "cli.h"

static cJSON *json_affinities(Eddy__V1__Affinity *const *a, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", a[i]->name);
        cJSON_AddNumberToObject(o, "score", a[i]->score);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static cJSON *json_items(Eddy__V1__RecentItem *const *it, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "product_id", it[i]->product_id);
        cJSON_AddStringToObject(o, "category", it[i]->category);
        cJSON_AddNumberToObject(o, "timestamp_ms", (double)it[i]->timestamp_ms);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static int print_json(const Eddy__V1__UserProfile *p, const Eddy__V1__ReadStaleness *stale)
{
    cJSON *o = cJSON_CreateObject();
    cli_json_staleness(o, stale);
    cJSON_AddStringToObject(o, "user_id", p->user_id);
    cJSON_AddItemToObject(o, "category_affinities",
                          json_affinities(p->category_affinities, p->n_category_affinities));
    cJSON_AddItemToObject(o, "brand_affinities",
                          json_affinities(p->brand_affinities, p->n_brand_affinities));
    cJSON *pr = cJSON_AddObjectToObject(o, "price_range");
    cJSON_AddNumberToObject(pr, "min", p->price_range ? p->price_range->min : 0);
    cJSON_AddNumberToObject(pr, "max", p->price_range ? p->price_range->max : 0);
    cJSON_AddNumberToObject(pr, "mean", p->price_range ? p->price_range->mean : 0);
    cJSON_AddItemToObject(o, "recent_views", json_items(p->recent_views, p->n_recent_views));
    cJSON *searches = cJSON_AddArrayToObject(o, "recent_searches");
    for (size_t i = 0; i < p->n_recent_searches; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "query", p->recent_searches[i]->query);
        cJSON_AddNumberToObject(s, "timestamp_ms", (double)p->recent_searches[i]->timestamp_ms);
        cJSON_AddItemToArray(searches, s);
    }
    cJSON_AddItemToObject(o, "recent_purchases",
                          json_items(p->recent_purchases, p->n_recent_purchases));
    cJSON_AddItemToObject(o, "cart", json_items(p->cart, p->n_cart));
    cJSON_AddNumberToObject(o, "last_update_ms", (double)p->last_update_ms);
    cJSON_AddNumberToObject(o, "event_count", (double)p->event_count);
    return cli_json_print(o);
}

/* One titled section: "name score" rows, or "(none)". */
static int print_affinities(const char *title, Eddy__V1__Affinity *const *a, size_t n)
{
    static const char *const header[] = {"NAME", ">SCORE"};
    printf("\n%s:\n", title);
    if (n == 0) {
        puts("  (none)");
        return 0;
    }
    struct cli_table *t = cli_table_new(2, header);
    int rc = t ? 0 : -1;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cli_table_cell(t, "%s", a[i]->name) || cli_table_cell(t, "%.4f", a[i]->score);
    if (rc == 0)
        cli_table_print(t, stdout, 2);
    cli_table_free(t);
    return rc;
}

static int print_items(const char *title, Eddy__V1__RecentItem *const *it, size_t n)
{
    static const char *const header[] = {"PRODUCT", "CATEGORY", "TIME"};
    char when[40];
    printf("\n%s:\n", title);
    if (n == 0) {
        puts("  (none)");
        return 0;
    }
    struct cli_table *t = cli_table_new(3, header);
    int rc = t ? 0 : -1;
    for (size_t i = 0; i < n && rc == 0; i++) {
        cli_format_time(it[i]->timestamp_ms, when, sizeof(when));
        rc = cli_table_cell(t, "%s", it[i]->product_id) ||
             cli_table_cell(t, "%s", it[i]->category[0] ? it[i]->category : "-") ||
             cli_table_cell(t, "%s", when);
    }
    if (rc == 0)
        cli_table_print(t, stdout, 2);
    cli_table_free(t);
    return rc;
}

static int print_searches(const Eddy__V1__UserProfile *p)
{
    static const char *const header[] = {"QUERY", "TIME"};
    char when[40];
    puts("\nrecent searches:");
    if (p->n_recent_searches == 0) {
        puts("  (none)");
        return 0;
    }
    struct cli_table *t = cli_table_new(2, header);
    int rc = t ? 0 : -1;
    for (size_t i = 0; i < p->n_recent_searches && rc == 0; i++) {
        cli_format_time(p->recent_searches[i]->timestamp_ms, when, sizeof(when));
        rc = cli_table_cell(t, "%s", p->recent_searches[i]->query) ||
             cli_table_cell(t, "%s", when);
    }
    if (rc == 0)
        cli_table_print(t, stdout, 2);
    cli_table_free(t);
    return rc;
}

static int print_text(const Eddy__V1__UserProfile *p, const Eddy__V1__ReadStaleness *stale)
{
    char when[40];
    cli_print_staleness(stale);

    cli_format_time(p->last_update_ms, when, sizeof(when));
    printf("user:         %s\n", p->user_id);
    printf("events:       %" PRIu64 "\n", p->event_count);
    printf("last update:  %s (%" PRId64 " ms)\n", when, p->last_update_ms);
    if (p->price_range && (p->price_range->max > 0 || p->price_range->min > 0))
        printf("price range:  min %.2f, max %.2f, mean %.2f\n", p->price_range->min,
               p->price_range->max, p->price_range->mean);
    else
        printf("price range:  (no prices seen)\n");
    if (print_affinities("category affinities", p->category_affinities,
                         p->n_category_affinities) ||
        print_affinities("brand affinities", p->brand_affinities, p->n_brand_affinities) ||
        print_items("recent views", p->recent_views, p->n_recent_views) ||
        print_searches(p) ||
        print_items("recent purchases", p->recent_purchases, p->n_recent_purchases) ||
        print_items("cart", p->cart, p->n_cart)) {
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    return CLI_EXIT_OK;
}

int cmd_profile(struct cli_ctx *ctx, int argc, char **argv)
{
    bool allow_stale = false;
    const struct cli_opt opts[] = {
        {"allow-stale", FLAG_BOOL, &allow_stale, NULL,
         "a follower of the user's partition may answer (it may lag the leader)"},
    };
    const struct cli_spec spec = {"profile", "USER",
                                  "What Eddy knows about USER: affinities, price range, recent "
                                  "items and searches, cart. JSON uses the proto's snake_case "
                                  "field names.",
                                  opts, sizeof(opts) / sizeof(opts[0]), 1, 1};
    const char *pos[1];
    int npos;
    eddy_error err;
    Eddy__V1__GetUserProfileRequest req = EDDY__V1__GET_USER_PROFILE_REQUEST__INIT;
    Eddy__V1__GetUserProfileResponse *resp = NULL;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    eddy_client *c = cli_client(ctx);
    if (!c)
        return CLI_EXIT_CONNECT;
    req.user_id = (char *)pos[0];
    req.allow_stale = allow_stale;
    if (eddy_get_user_profile(c, &req, &resp, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    rc = ctx->json ? print_json(resp->profile, resp->staleness)
                   : print_text(resp->profile, resp->staleness);
    eddy_response_free(resp);
    return rc;
}
