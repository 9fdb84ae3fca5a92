/* eddy experiments: A/B tests on Recommend (eddy.v1.Experiments): create, update, list,
 * show (per-variant CTR, conversion and revenue per impression with 95% intervals and a
 * z-test against the first variant) and stop. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "abstats.h"
#include "cli.h"

#define MAX_VARIANTS 16

/* Storage of the variants parsed from --variant flags (the messages point into it). */
struct variants {
    Eddy__V1__Variant v[MAX_VARIANTS], *vp[MAX_VARIANTS];
    Eddy__V1__RecommendParams p[MAX_VARIANTS];
    Eddy__V1__DoubleValue d[MAX_VARIANTS][3];
    Eddy__V1__Int32Value cap[MAX_VARIANTS];
    size_t n;
};

/* One "KEY=VALUE" of a variant: false after a message if unknown or malformed. */
static bool set_param(struct variants *vs, size_t i, const char *kv)
{
    static const char *const weights[] = {"weight-popular", "weight-neighbours",
                                          "weight-context"};
    Eddy__V1__RecommendParams *p = &vs->p[i];
    const char *eq = strchr(kv, '=');
    size_t klen = eq ? (size_t)(eq - kv) : 0;
    const char *val = eq ? eq + 1 : "";
    char *end = NULL;
    for (int w = 0; w < 3 && eq; w++) {
        if (strlen(weights[w]) != klen || strncmp(kv, weights[w], klen) != 0)
            continue;
        Eddy__V1__DoubleValue *d = &vs->d[i][w];
        eddy__v1__double_value__init(d);
        d->value = strtod(val, &end);
        if (end == val || *end)
            break;
        Eddy__V1__DoubleValue **slot[] = {&p->weight_popular, &p->weight_neighbours,
                                          &p->weight_context};
        *slot[w] = d;
        return true;
    }
    if (eq && klen == 13 && strncmp(kv, "diversity-cap", 13) == 0) {
        long v = strtol(val, &end, 10);
        if (end != val && !*end && v >= INT32_MIN && v <= INT32_MAX) {
            eddy__v1__int32_value__init(&vs->cap[i]);
            vs->cap[i].value = (int32_t)v;
            p->diversity_cap = &vs->cap[i];
            return true;
        }
    } else if (eq && klen == 19 && strncmp(kv, "max-recommendations", 19) == 0) {
        long v = strtol(val, &end, 10);
        if (end != val && !*end && v >= 0 && v <= 1000) {
            p->max_recommendations = (uint32_t)v;
            return true;
        }
    } else if (eq && klen == 7 && strncmp(kv, "exclude", 7) == 0) {
        if (strcmp(val, "interacted") == 0 || strcmp(val, "purchased") == 0) {
            p->exclude = val[0] == 'i' ? EDDY__V1__EXCLUSION__EXCLUSION_INTERACTED
                                       : EDDY__V1__EXCLUSION__EXCLUSION_PURCHASED;
            return true;
        }
    }
    cli_errorf("experiments: bad variant parameter \"%s\": weight-popular=X, "
               "weight-neighbours=X, weight-context=X, diversity-cap=N, max-recommendations=N, "
               "exclude=interacted|purchased",
               kv);
    return false;
}

/* "NAME:WEIGHT[:KEY=VALUE,...]" (the string is cut in place). */
static bool parse_variant(struct variants *vs, char *spec)
{
    size_t i = vs->n;
    char *name = spec, *w = strchr(spec, ':'), *params = NULL, *end = NULL;
    if (w) {
        *w++ = '\0';
        if ((params = strchr(w, ':')))
            *params++ = '\0';
    }
    unsigned long weight = w ? strtoul(w, &end, 10) : 0;
    if (!w || !*name || end == w || *end) {
        cli_errorf("experiments: --variant wants NAME:WEIGHT[:KEY=VALUE,...], e.g. "
                   "B:50:weight-neighbours=2");
        return false;
    }
    eddy__v1__variant__init(&vs->v[i]);
    eddy__v1__recommend_params__init(&vs->p[i]);
    vs->v[i].name = name;
    vs->v[i].weight = weight > UINT32_MAX ? UINT32_MAX : (uint32_t)weight;
    vs->v[i].params = &vs->p[i];
    for (char *kv = params, *next; kv && *kv; kv = next) {
        if ((next = strchr(kv, ',')))
            *next++ = '\0';
        if (!set_param(vs, i, kv))
            return false;
    }
    vs->vp[i] = &vs->v[i];
    vs->n++;
    return true;
}

static const char *state_name(Eddy__V1__ExperimentState s)
{
    return s == EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_RUNNING   ? "running"
           : s == EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_STOPPED ? "stopped"
                                                                       : "unknown";
}

/* A variant's parameters as the --variant syntax writes them ("-": none). */
static void params_text(const Eddy__V1__RecommendParams *p, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
#define ADD(...)                                                                    \
    do {                                                                            \
        int w_ = snprintf(buf + at, len - at, "%s", at ? "," : "");                 \
        at += w_ > 0 && (size_t)w_ < len - at ? (size_t)w_ : 0;                     \
        w_ = snprintf(buf + at, len - at, __VA_ARGS__);                             \
        at += w_ > 0 && (size_t)w_ < len - at ? (size_t)w_ : 0;                     \
    } while (0)
    if (p && p->weight_popular)
        ADD("weight-popular=%g", p->weight_popular->value);
    if (p && p->weight_neighbours)
        ADD("weight-neighbours=%g", p->weight_neighbours->value);
    if (p && p->weight_context)
        ADD("weight-context=%g", p->weight_context->value);
    if (p && p->diversity_cap)
        ADD("diversity-cap=%d", p->diversity_cap->value);
    if (p && p->max_recommendations)
        ADD("max-recommendations=%u", p->max_recommendations);
    if (p && p->exclude != EDDY__V1__EXCLUSION__EXCLUSION_DEFAULT)
        ADD("exclude=%s", p->exclude == EDDY__V1__EXCLUSION__EXCLUSION_INTERACTED ? "interacted"
                                                                                 : "purchased");
#undef ADD
    if (!at)
        snprintf(buf, len, "-");
}

static cJSON *experiment_json(const Eddy__V1__Experiment *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "state", state_name(e->state));
    cJSON_AddNumberToObject(o, "click_window_ms", (double)e->click_window_ms);
    cJSON_AddNumberToObject(o, "purchase_window_ms", (double)e->purchase_window_ms);
    cJSON_AddNumberToObject(o, "created_ms", (double)e->created_ms);
    cJSON_AddNumberToObject(o, "updated_ms", (double)e->updated_ms);
    cJSON *vs = cJSON_AddArrayToObject(o, "variants");
    for (size_t i = 0; i < e->n_variants; i++) {
        char params[512];
        cJSON *v = cJSON_CreateObject();
        params_text(e->variants[i]->params, params, sizeof(params));
        cJSON_AddStringToObject(v, "name", e->variants[i]->name);
        cJSON_AddNumberToObject(v, "weight", e->variants[i]->weight);
        cJSON_AddStringToObject(v, "params", params);
        cJSON_AddItemToArray(vs, v);
    }
    return o;
}

static void print_experiment_line(const Eddy__V1__Experiment *e)
{
    char created[40], click[32], purchase[32];
    cli_format_time(e->created_ms, created, sizeof(created));
    config_format_duration(e->click_window_ms, click, sizeof(click));
    config_format_duration(e->purchase_window_ms, purchase, sizeof(purchase));
    printf("experiment %s: %s, created %s, attribution windows: click %s, purchase %s "
           "(0: the node's)\n",
           e->name, state_name(e->state), created, e->click_window_ms ? click : "0",
           e->purchase_window_ms ? purchase : "0");
}

static int print_experiment(const struct cli_ctx *ctx, const Eddy__V1__Experiment *e)
{
    if (ctx->json)
        return cli_json_print(experiment_json(e));
    print_experiment_line(e);
    for (size_t i = 0; i < e->n_variants; i++) {
        char params[512];
        params_text(e->variants[i]->params, params, sizeof(params));
        printf("  variant %s: weight %u, %s\n", e->variants[i]->name, e->variants[i]->weight,
               params);
    }
    return CLI_EXIT_OK;
}

/* create and update: NAME --variant ... */
static int put(struct cli_ctx *ctx, bool create, int argc, char **argv)
{
    int64_t click = 0, purchase = 0;
    bool stopped = false;
    const struct cli_opt opts[] = {
        {"variant", FLAG_STRING, NULL, "NAME:WEIGHT[:KEY=VALUE,...]",
         "a variant, repeatable, the first is the control; KEY: weight-popular, "
         "weight-neighbours, weight-context, diversity-cap, max-recommendations, "
         "exclude=interacted|purchased"},
        {"click-window", FLAG_DURATION, &click, "DURATION",
         "clicks without a recommendation_id count this long after an answer (default: the "
         "node's --attribution-window-click)"},
        {"purchase-window", FLAG_DURATION, &purchase, "DURATION",
         "the same for adds to cart and purchases (default: --attribution-window-purchase)"},
        {"stopped", FLAG_BOOL, &stopped, NULL, "store it stopped (it runs by default)"},
    };
    const struct cli_spec spec = {create ? "experiments create" : "experiments update", "NAME",
                                  create ? "Create an experiment (running unless --stopped)."
                                         : "Replace an experiment's variants, windows and "
                                           "state (it runs unless --stopped).",
                                  opts, sizeof(opts) / sizeof(opts[0]), 1, 1};
    struct variants vs = {.n = 0};
    const char *specs[MAX_VARIANTS], *pos[1];
    size_t nspecs;
    int npos;
    eddy_error err;
    Eddy__V1__ExperimentResponse *resp = NULL;
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    if (!rest) {
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    int nrest = cli_take_repeated(spec.name, "variant", argc, argv, rest, specs, MAX_VARIANTS,
                                  &nspecs);
    int rc = nrest < 0 ? CLI_EXIT_USAGE : cli_parse(ctx, &spec, nrest, rest, pos, &npos);
    free(rest);
    if (rc != CLI_CONTINUE)
        return rc;
    for (size_t i = 0; i < nspecs; i++) {
        if (!parse_variant(&vs, (char *)specs[i]))
            return CLI_EXIT_USAGE;
    }
    if (vs.n == 0) {
        cli_errorf("%s: give at least one --variant NAME:WEIGHT", spec.name);
        return CLI_EXIT_USAGE;
    }
    Eddy__V1__Experiment e = EDDY__V1__EXPERIMENT__INIT;
    e.name = (char *)pos[0];
    e.state = stopped ? EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_STOPPED
                      : EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_RUNNING;
    e.variants = vs.vp;
    e.n_variants = vs.n;
    e.click_window_ms = click;
    e.purchase_window_ms = purchase;
    eddy_client *c = cli_client(ctx);
    if (!c)
        return CLI_EXIT_CONNECT;
    eddy_status st = create ? eddy_experiment_create(c, &e, &resp, &err)
                            : eddy_experiment_update(c, &e, &resp, &err);
    if (st != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    rc = print_experiment(ctx, resp->experiment);
    eddy_response_free(resp);
    return rc;
}

/* Parse the command line of a subcommand without flags of its own and connect: the
 * client, or NULL with the exit code in *rc (CLI_EXIT_OK after --help). */
static eddy_client *parse_connect(struct cli_ctx *ctx, const struct cli_spec *spec, int argc,
                                  char **argv, const char **pos, int *rc)
{
    int npos;
    eddy_client *c = NULL;
    *rc = cli_parse(ctx, spec, argc, argv, pos, &npos);
    if (*rc == CLI_CONTINUE && !(c = cli_client(ctx)))
        *rc = CLI_EXIT_CONNECT;
    return c;
}

static int stop(struct cli_ctx *ctx, int argc, char **argv)
{
    const struct cli_spec spec = {"experiments stop", "NAME",
                                  "Stop an experiment: Recommend no longer follows it; its "
                                  "counts stay readable.",
                                  NULL, 0, 1, 1};
    const char *pos[1];
    eddy_error err;
    Eddy__V1__ExperimentResponse *resp = NULL;
    int rc;
    eddy_client *c = parse_connect(ctx, &spec, argc, argv, pos, &rc);
    if (!c)
        return rc;
    if (eddy_experiment_stop(c, pos[0], &resp, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    rc = print_experiment(ctx, resp->experiment);
    eddy_response_free(resp);
    return rc;
}

static int list(struct cli_ctx *ctx, int argc, char **argv)
{
    const struct cli_spec spec = {"experiments list", "", "Every experiment, by name.", NULL,
                                  0, 0, 0};
    const char *pos[1];
    eddy_error err;
    Eddy__V1__ListExperimentsResponse *resp = NULL;
    int rc;
    eddy_client *c = parse_connect(ctx, &spec, argc, argv, pos, &rc);
    if (!c)
        return rc;
    if (eddy_experiment_list(c, &resp, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    if (ctx->json) {
        cJSON *a = cJSON_CreateArray();
        for (size_t i = 0; i < resp->n_experiments; i++)
            cJSON_AddItemToArray(a, experiment_json(resp->experiments[i]));
        rc = cli_json_print(a);
    } else {
        static const char *const header[] = {"NAME", "STATE", ">VARIANTS", "CREATED"};
        struct cli_table *t = cli_table_new(4, header);
        int bad = t == NULL;
        for (size_t i = 0; i < resp->n_experiments && !bad; i++) {
            const Eddy__V1__Experiment *e = resp->experiments[i];
            char created[40];
            cli_format_time(e->created_ms, created, sizeof(created));
            bad = cli_table_cell(t, "%s", e->name) || cli_table_cell(t, "%s", state_name(e->state)) ||
                  cli_table_cell(t, "%zu", e->n_variants) || cli_table_cell(t, "%s", created);
        }
        if (!bad)
            cli_table_print(t, stdout, 0);
        cli_table_free(t);
        rc = bad ? CLI_EXIT_SERVER : CLI_EXIT_OK;
    }
    eddy_response_free(resp);
    return rc;
}

/* The numbers `show` prints for one variant (the first variant is the control). */
struct variant_report {
    struct abstats_interval ctr, conv, rpi;
    double p_ctr, p_conv; /* against the control; 1 for the control itself */
    double accuracy;      /* listed products later clicked or bought (0 if none listed) */
};

static void report(const Eddy__V1__VariantStats *s, const Eddy__V1__VariantStats *control,
                   struct variant_report *r)
{
    r->ctr = abstats_wilson(s->clicks, s->impressions, ABSTATS_Z95);
    r->conv = abstats_wilson(s->purchases, s->impressions, ABSTATS_Z95);
    r->rpi = abstats_mean(s->revenue, s->revenue_sq, s->impressions, ABSTATS_Z95);
    r->accuracy = s->recommended ? (double)s->recommended_hits / (double)s->recommended : 0;
    r->p_ctr = s == control ? 1
                            : abstats_two_proportion_p(control->clicks, control->impressions,
                                                       s->clicks, s->impressions);
    r->p_conv = s == control ? 1
                             : abstats_two_proportion_p(control->purchases,
                                                        control->impressions, s->purchases,
                                                        s->impressions);
}

static cJSON *interval_json(struct abstats_interval iv)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "value", iv.value);
    cJSON_AddNumberToObject(o, "lo", iv.lo);
    cJSON_AddNumberToObject(o, "hi", iv.hi);
    return o;
}

static int show(struct cli_ctx *ctx, int argc, char **argv)
{
    const struct cli_spec spec = {"experiments show", "NAME",
                                  "An experiment and, per variant: impressions, clicks, carts, "
                                  "purchases, revenue; CTR and conversion (per impression) "
                                  "with 95% Wilson intervals, revenue per impression with a "
                                  "95% interval, two-proportion z-test p-values against "
                                  "the first variant, and recommendation accuracy (the share "
                                  "of listed products later clicked or bought).",
                                  NULL, 0, 1, 1};
    const char *pos[1];
    eddy_error err;
    Eddy__V1__GetExperimentResponse *resp = NULL;
    int rc;
    eddy_client *c = parse_connect(ctx, &spec, argc, argv, pos, &rc);
    if (!c)
        return rc;
    if (eddy_experiment_get(c, pos[0], &resp, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    const Eddy__V1__VariantStats *control = resp->n_stats ? resp->stats[0] : NULL;
    if (ctx->json) {
        cJSON *o = experiment_json(resp->experiment);
        cJSON *a = cJSON_AddArrayToObject(o, "stats");
        for (size_t i = 0; i < resp->n_stats; i++) {
            const Eddy__V1__VariantStats *s = resp->stats[i];
            struct variant_report r;
            report(s, control, &r);
            cJSON *v = cJSON_CreateObject();
            cJSON_AddStringToObject(v, "variant", s->variant);
            cJSON_AddNumberToObject(v, "impressions", (double)s->impressions);
            cJSON_AddNumberToObject(v, "clicks", (double)s->clicks);
            cJSON_AddNumberToObject(v, "add_to_carts", (double)s->add_to_carts);
            cJSON_AddNumberToObject(v, "purchases", (double)s->purchases);
            cJSON_AddNumberToObject(v, "revenue", s->revenue);
            cJSON_AddItemToObject(v, "ctr", interval_json(r.ctr));
            cJSON_AddItemToObject(v, "conversion", interval_json(r.conv));
            cJSON_AddItemToObject(v, "revenue_per_impression", interval_json(r.rpi));
            cJSON_AddNumberToObject(v, "p_ctr", r.p_ctr);
            cJSON_AddNumberToObject(v, "p_conversion", r.p_conv);
            cJSON_AddNumberToObject(v, "recommended", (double)s->recommended);
            cJSON_AddNumberToObject(v, "recommended_hits", (double)s->recommended_hits);
            cJSON_AddNumberToObject(v, "accuracy", r.accuracy);
            cJSON_AddItemToArray(a, v);
        }
        rc = cli_json_print(o);
        eddy_response_free(resp);
        return rc;
    }
    print_experiment_line(resp->experiment);
    static const char *const header[] = {"VARIANT",  ">IMPRESSIONS", ">CLICKS",  ">CARTS",
                                         ">PURCHASES", ">REVENUE",   "CTR [95% CI]", ">P",
                                         "CONVERSION [95% CI]", ">P", "REVENUE/IMPR [95% CI]",
                                         ">ACCURACY"};
    struct cli_table *t = cli_table_new(12, header);
    int bad = t == NULL;
    for (size_t i = 0; i < resp->n_stats && !bad; i++) {
        const Eddy__V1__VariantStats *s = resp->stats[i];
        struct variant_report r;
        report(s, control, &r);
        bad = cli_table_cell(t, "%s", s->variant) ||
              cli_table_cell(t, "%" PRIu64, s->impressions) ||
              cli_table_cell(t, "%" PRIu64, s->clicks) ||
              cli_table_cell(t, "%" PRIu64, s->add_to_carts) ||
              cli_table_cell(t, "%" PRIu64, s->purchases) || cli_table_cell(t, "%.2f", s->revenue) ||
              cli_table_cell(t, "%.2f%% [%.2f, %.2f]", 100 * r.ctr.value, 100 * r.ctr.lo,
                             100 * r.ctr.hi) ||
              (i == 0 ? cli_table_cell(t, "-") : cli_table_cell(t, "%.3g", r.p_ctr)) ||
              cli_table_cell(t, "%.2f%% [%.2f, %.2f]", 100 * r.conv.value, 100 * r.conv.lo,
                             100 * r.conv.hi) ||
              (i == 0 ? cli_table_cell(t, "-") : cli_table_cell(t, "%.3g", r.p_conv)) ||
              cli_table_cell(t, "%.4f [%.4f, %.4f]", r.rpi.value, r.rpi.lo, r.rpi.hi) ||
              cli_table_cell(t, "%.2f%%", 100 * r.accuracy);
    }
    if (!bad)
        cli_table_print(t, stdout, 0);
    cli_table_free(t);
    eddy_response_free(resp);
    return bad ? CLI_EXIT_SERVER : CLI_EXIT_OK;
}

int cmd_experiments(struct cli_ctx *ctx, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(struct cli_ctx *ctx, int argc, char **argv);
        const char *summary;
    } subs[] = {
        {"create", NULL, "NAME --variant A:50 --variant B:50:weight-neighbours=2 ..."},
        {"update", NULL, "NAME --variant ... (replaces the variants; changing weights moves users)"},
        {"list", list, "every experiment"},
        {"show", show, "NAME: per-variant CTR, conversion, revenue with 95% intervals"},
        {"stop", stop, "NAME: Recommend stops following it; counts stay"},
    };
    const char *sub = argc > 1 ? argv[1] : "";
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        if (strcmp(sub, subs[i].name) != 0)
            continue;
        if (i < 2)
            return put(ctx, i == 0, argc - 1, argv + 1);
        return subs[i].run(ctx, argc - 1, argv + 1);
    }
    bool help = strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0;
    FILE *out = help ? stdout : stderr;
    if (!help)
        cli_errorf("experiments: %s", sub[0] ? "unknown subcommand" : "which subcommand?");
    fputs("usage: eddy experiments SUBCOMMAND [args] [flags]   (A/B tests on Recommend)\n\n",
          out);
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
        fprintf(out, "  %-7s %s\n", subs[i].name, subs[i].summary);
    fputs("\neddy experiments SUBCOMMAND --help for its flags; docs/cli.md.\n", out);
    return help ? CLI_EXIT_OK : CLI_EXIT_USAGE;
}
