/* eddy top: products with the most events over event-time windows (Eddy.TopProducts). */
#include <inttypes.h>

#include "cli.h"
#include "client/jsonl.h"

static int counts_cells(struct cli_table *t, const Eddy__V1__TypeCounts *c)
{
    Eddy__V1__TypeCounts zero = EDDY__V1__TYPE_COUNTS__INIT;
    if (!c)
        c = &zero;
    return cli_table_cell(t, "%" PRIu64, c->view) || cli_table_cell(t, "%" PRIu64, c->click) ||
           cli_table_cell(t, "%" PRIu64, c->add_to_cart) ||
           cli_table_cell(t, "%" PRIu64, c->remove_from_cart) ||
           cli_table_cell(t, "%" PRIu64, c->purchase) ||
           cli_table_cell(t, "%" PRIu64, c->search) || cli_table_cell(t, "%" PRIu64, c->total);
}

static int print_table(const Eddy__V1__TopProductsResponse *resp)
{
    static const char *const header[] = {">RANK",    "PRODUCT",  "CATEGORY", ">VIEW",
                                         ">CLICK",   ">ADD_TO_CART", ">REMOVE_FROM_CART",
                                         ">PURCHASE", ">SEARCH", ">TOTAL"};
    char wm[40];
    struct cli_table *t = cli_table_new(10, header);
    int bad = t == NULL;

    for (size_t i = 0; i < resp->n_products && !bad; i++) {
        const Eddy__V1__ProductStat *p = resp->products[i];
        bad = cli_table_cell(t, "%zu", i + 1) || cli_table_cell(t, "%s", p->product_id) ||
              cli_table_cell(t, "%s", p->category[0] ? p->category : "-") ||
              counts_cells(t, p->counts);
    }
    if (bad) {
        cli_table_free(t);
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    if (resp->n_products == 0)
        puts("no products in the selected windows");
    else
        cli_table_print(t, stdout, 0);
    cli_table_free(t);
    cli_format_time(resp->watermark_ms, wm, sizeof(wm));
    printf("watermark: %s (%" PRId64 " ms)\n", wm, resp->watermark_ms);
    cli_print_staleness(resp->staleness);
    return CLI_EXIT_OK;
}

static int print_json(const Eddy__V1__TopProductsResponse *resp)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "products");
    for (size_t i = 0; i < resp->n_products; i++) {
        const Eddy__V1__ProductStat *p = resp->products[i];
        cJSON *it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "product_id", p->product_id);
        cJSON_AddStringToObject(it, "category", p->category);
        cJSON_AddItemToObject(it, "counts", cli_json_counts(p->counts));
        cJSON_AddItemToArray(arr, it);
    }
    cJSON_AddNumberToObject(o, "watermark_ms", (double)resp->watermark_ms);
    cli_json_staleness(o, resp->staleness);
    return cli_json_print(o);
}

int cmd_top(struct cli_ctx *ctx, int argc, char **argv)
{
    const char *category = "", *type = "";
    int64_t from = 0, to = 0, limit = 0;
    bool include_open = false, allow_stale = false;
    const struct cli_opt opts[] = {
        {"category", FLAG_STRING, &category, "C", "only products of this category"},
        {"from", FLAG_INT, &from, "MS", "windows starting at or after this time (ms since epoch)"},
        {"to", FLAG_INT, &to, "MS", "windows starting before this time (ms since epoch)"},
        {"type", FLAG_STRING, &type, "TYPE",
         "rank by view|click|add_to_cart|remove_from_cart|purchase|search (default: all)"},
        {"limit", FLAG_INT, &limit, "N", "number of products (default 10, at most 1000)"},
        {"include-open", FLAG_BOOL, &include_open, NULL,
         "also count windows that are still open"},
        {"allow-stale", FLAG_BOOL, &allow_stale, NULL,
         "followers may answer for their partitions (they may lag the leaders)"},
    };
    const struct cli_spec spec = {"top", "",
                                  "Products with the most events over the retained windows "
                                  "(or [--from, --to)), overall or in one category.",
                                  opts, sizeof(opts) / sizeof(opts[0]), 0, 0};
    const char *pos[1];
    int npos;
    eddy_error err;
    Eddy__V1__TopProductsRequest req = EDDY__V1__TOP_PRODUCTS_REQUEST__INIT;
    Eddy__V1__TopProductsResponse *resp = NULL;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    if (type[0] && !jsonl_event_type_parse(type, &req.event_type)) {
        cli_errorf("top: unknown --type \"%s\" (view, click, add_to_cart, remove_from_cart, "
                   "purchase, search)",
                   type);
        return CLI_EXIT_USAGE;
    }
    if (limit > UINT32_MAX) {
        cli_errorf("top: --limit is too large");
        return CLI_EXIT_USAGE;
    }
    req.category = (char *)category;
    req.start_ms = from;
    req.end_ms = to;
    req.limit = (uint32_t)limit;
    req.include_open = include_open;
    req.allow_stale = allow_stale;

    eddy_client *c = cli_client(ctx);
    if (!c)
        return CLI_EXIT_CONNECT;
    if (eddy_top_products(c, &req, &resp, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    rc = ctx->json ? print_json(resp) : print_table(resp);
    eddy_response_free(resp);
    return rc;
}
