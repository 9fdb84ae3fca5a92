/* eddy recommend: ranked products for a user, with the reason for each (Eddy.Recommend). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_CART 1000

/* Split 'list' ("p1,p2") in place into at most 'max' non-empty items; returns the count. */
static size_t split_commas(char *list, char **items, size_t max)
{
    size_t n = 0;

    for (char *p = list; p && *p && n < max;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        if (*p)
            items[n++] = p;
        p = comma ? comma + 1 : NULL;
    }
    return n;
}

static int print_table(const char *user, const Eddy__V1__RecommendResponse *resp)
{
    static const char *const header[] = {">RANK", "PRODUCT", ">SCORE", "CATEGORY", "REASON"};
    struct cli_table *t = cli_table_new(5, header);

    if (!t) {
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    for (size_t i = 0; i < resp->n_items; i++) {
        const Eddy__V1__Recommendation *r = resp->items[i];
        if (cli_table_cell(t, "%zu", i + 1) || cli_table_cell(t, "%s", r->product_id) ||
            cli_table_cell(t, "%.4f", r->score) ||
            cli_table_cell(t, "%s", r->category[0] ? r->category : "-") ||
            cli_table_cell(t, "%s", r->reason)) {
            cli_table_free(t);
            cli_errorf("out of memory");
            return CLI_EXIT_SERVER;
        }
    }
    if (resp->cold_start)
        printf("cold start: no history for %s; showing popular products\n", user);
    if (resp->n_items == 0)
        printf("no recommendations for %s\n", user);
    else
        cli_table_print(t, stdout, 0);
    if (resp->experiment[0])
        printf("experiment %s, variant %s\n", resp->experiment, resp->variant);
    if (resp->recommendation_id[0])
        printf("recommendation_id %s\n", resp->recommendation_id);
    cli_print_staleness(resp->staleness);
    cli_table_free(t);
    return CLI_EXIT_OK;
}

static int print_json(const char *user, const Eddy__V1__RecommendResponse *resp)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user", user);
    cJSON_AddBoolToObject(o, "cold_start", resp->cold_start);
    cJSON_AddStringToObject(o, "recommendation_id", resp->recommendation_id);
    cJSON_AddStringToObject(o, "experiment", resp->experiment);
    cJSON_AddStringToObject(o, "variant", resp->variant);
    cJSON *items = cJSON_AddArrayToObject(o, "items");
    for (size_t i = 0; i < resp->n_items; i++) {
        const Eddy__V1__Recommendation *r = resp->items[i];
        cJSON *it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "product_id", r->product_id);
        cJSON_AddNumberToObject(it, "score", r->score);
        cJSON_AddStringToObject(it, "reason", r->reason);
        cJSON_AddStringToObject(it, "category", r->category);
        cJSON_AddItemToArray(items, it);
    }
    cli_json_staleness(o, resp->staleness);
    return cli_json_print(o);
}

int cmd_recommend(struct cli_ctx *ctx, int argc, char **argv)
{
    int64_t limit = 0;
    const char *product = "", *cart = "", *page = "", *session = "";
    bool allow_stale = false;
    const struct cli_opt opts[] = {
        {"limit", FLAG_INT, &limit, "N", "number of products (default: the node's, 10)"},
        {"product", FLAG_STRING, &product, "P", "the product on screen: its neighbours rank high"},
        {"cart", FLAG_STRING, &cart, "P1,P2", "products in the cart (excluded from the answer)"},
        {"page", FLAG_STRING, &page, "PAGE", "current page, e.g. home, product, cart"},
        {"session", FLAG_STRING, &session, "S", "session id"},
        {"allow-stale", FLAG_BOOL, &allow_stale, NULL,
         "a follower of the user's partition may answer (it may lag the leader)"},
    };
    const struct cli_spec spec = {"recommend", "USER",
                                  "Recommended products for USER, best first, with the reason "
                                  "for each.",
                                  opts, sizeof(opts) / sizeof(opts[0]), 1, 1};
    const char *pos[1];
    int npos;
    eddy_error err;
    Eddy__V1__RecommendRequest req = EDDY__V1__RECOMMEND_REQUEST__INIT;
    Eddy__V1__Context context = EDDY__V1__CONTEXT__INIT;
    Eddy__V1__RecommendResponse *resp = NULL;
    char *cart_copy = NULL;
    char **items = NULL;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    if (limit > UINT32_MAX) {
        cli_errorf("recommend: --limit is too large");
        return CLI_EXIT_USAGE;
    }
    rc = CLI_EXIT_SERVER;
    cart_copy = strdup(cart);
    items = calloc(MAX_CART, sizeof(*items));
    if (!cart_copy || !items) {
        cli_errorf("out of memory");
        goto out;
    }
    context.current_page = (char *)page;
    context.current_product = (char *)product;
    context.n_shopping_cart = split_commas(cart_copy, items, MAX_CART);
    context.shopping_cart = items;
    req.user_id = (char *)pos[0];
    req.session_id = (char *)session;
    req.max_recommendations = (uint32_t)limit;
    req.allow_stale = allow_stale;
    if (page[0] || product[0] || context.n_shopping_cart)
        req.context = &context;

    eddy_client *c = cli_client(ctx);
    if (!c) {
        rc = CLI_EXIT_CONNECT;
        goto out;
    }
    if (eddy_recommend(c, &req, &resp, &err) != EDDY_STATUS_OK) {
        rc = cli_fail(ctx, &err);
        goto out;
    }
    rc = ctx->json ? print_json(pos[0], resp) : print_table(pos[0], resp);
out:
    eddy_response_free(resp);
    free(items);
    free(cart_copy);
    return rc;
}
