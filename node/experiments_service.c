/* eddy.v1.Experiments handlers. */
#include "node/experiments_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

/* Answer an error of the registry: its 'why' with the matching status. */
static void reply_err(rpc_call *c, const char *what, eddy_err err, const char *why)
{
    grpc_status_code code = err == EDDY_ERR_CONFLICT ? GRPC_STATUS_ALREADY_EXISTS
                            : err == EDDY_ERR_INVALID ? GRPC_STATUS_INVALID_ARGUMENT
                            : err == EDDY_ERR_NOT_FOUND ? GRPC_STATUS_NOT_FOUND
                                                        : eddy_err_to_grpc(err);
    rpc_reply_error(c, code, "%s: %s", what, why[0] ? why : eddy_strerror(err));
}

/* Answer with 'e' (owned: freed here) in an ExperimentResponse. */
static void reply_experiment(rpc_call *c, Eddy__V1__Experiment *e)
{
    Eddy__V1__ExperimentResponse r = EDDY__V1__EXPERIMENT_RESPONSE__INIT;
    r.experiment = e;
    rpc_reply(c, &r.base);
    eddy__v1__experiment__free_unpacked(e, NULL);
}

enum change { CREATE, UPDATE, STOP };

/* Create, update or stop ('e' for the first two, 'name' for STOP) and answer. */
static void change(struct experiments_service *svc, rpc_call *c, enum change what,
                   const Eddy__V1__Experiment *e, const char *name)
{
    static const char *const verbs[] = {"create", "update", "stop"};
    static const char *const done[] = {"created", "updated", "stopped"};
    Eddy__V1__Experiment *out = NULL;
    char why[256] = "", whatfor[32];
    int64_t now = clock_wall_ms();
    eddy_err err = what == CREATE   ? expreg_create(svc->reg, e, now, &out, why, sizeof(why))
                   : what == UPDATE ? expreg_update(svc->reg, e, now, &out, why, sizeof(why))
                                    : expreg_stop(svc->reg, name, now, &out, why, sizeof(why));
    if (err != EDDY_OK && err == EDDY_ERR_CONFLICT && what != CREATE) {
        /* the experiment exists: it was changed elsewhere since this node read it */
        rpc_reply_error(c, GRPC_STATUS_ABORTED, "%s experiment: %s", verbs[what], why);
        return;
    }
    if (err != EDDY_OK) {
        snprintf(whatfor, sizeof(whatfor), "%s experiment", verbs[what]);
        reply_err(c, whatfor, err, why);
        return;
    }
    log_info("msg=\"experiment %s\" experiment=%s state=%d variants=%zu", done[what],
             out->name, (int)out->state, out->n_variants);
    reply_experiment(c, out);
}

static void handle_create(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    change(ud, c, CREATE, ((const Eddy__V1__CreateExperimentRequest *)msg)->experiment, NULL);
}

static void handle_update(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    change(ud, c, UPDATE, ((const Eddy__V1__UpdateExperimentRequest *)msg)->experiment, NULL);
}

static void handle_stop(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    change(ud, c, STOP, NULL, ((const Eddy__V1__StopExperimentRequest *)msg)->name);
}

static void handle_list(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct experiments_service *svc = ud;
    Eddy__V1__ListExperimentsResponse *r = NULL;
    (void)msg;
    eddy_err err = expreg_list(svc->reg, &r);
    if (err != EDDY_OK) {
        reply_err(c, "list experiments", err, "");
        return;
    }
    rpc_reply(c, &r->base);
    eddy__v1__list_experiments_response__free_unpacked(r, NULL);
}

/* The variants' counts in the experiment's order: the variants it has, then any others
 * with counts (removed by an update), by name. Moves the entries of 'from'. */
static eddy_err order_stats(const Eddy__V1__Experiment *e, Eddy__V1__GetExperimentResponse *from,
                            Eddy__V1__GetExperimentResponse *to)
{
    size_t n = e->n_variants + from->n_stats;
    if (!(to->stats = calloc(n ? n : 1, sizeof(*to->stats))))
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < e->n_variants; i++) {
        Eddy__V1__VariantStats *vs = NULL;
        for (size_t j = 0; j < from->n_stats && !vs; j++) {
            if (from->stats[j] && strcmp(from->stats[j]->variant, e->variants[i]->name) == 0) {
                vs = from->stats[j];
                from->stats[j] = NULL;
            }
        }
        if (!vs) { /* no impression yet: zeros */
            if (!(vs = malloc(sizeof(*vs))))
                return EDDY_ERR_NOMEM;
            eddy__v1__variant_stats__init(vs);
            if (!(vs->variant = strdup(e->variants[i]->name))) {
                vs->variant = (char *)protobuf_c_empty_string;
                free(vs);
                return EDDY_ERR_NOMEM;
            }
        }
        to->stats[to->n_stats++] = vs;
    }
    for (size_t j = 0; j < from->n_stats; j++) {
        if (from->stats[j]) {
            to->stats[to->n_stats++] = from->stats[j];
            from->stats[j] = NULL;
        }
    }
    return EDDY_OK;
}

static void handle_get(void *ud, rpc_call *c, const ProtobufCMessage *msg)
{
    struct experiments_service *svc = ud;
    const Eddy__V1__GetExperimentRequest *req = (const Eddy__V1__GetExperimentRequest *)msg;
    Eddy__V1__GetExperimentResponse r = EDDY__V1__GET_EXPERIMENT_RESPONSE__INIT;
    Eddy__V1__GetExperimentResponse *counts = NULL;
    char why[256] = "";
    eddy_err err = expreg_get(svc->reg, req->name, &r.experiment);
    if (err != EDDY_OK) {
        reply_err(c, "get experiment", err, "");
        goto out;
    }
    if (!r.experiment) {
        rpc_reply_error(c, GRPC_STATUS_NOT_FOUND, "get experiment: name: no experiment \"%s\"",
                        req->name);
        goto out;
    }
    if (!svc->stats) {
        rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "get experiment: no counts on this node");
        goto out;
    }
    if ((err = svc->stats(svc->stats_ud, req->name, &counts, why, sizeof(why))) != EDDY_OK) {
        reply_err(c, "get experiment", err, why);
        goto out;
    }
    if ((err = order_stats(r.experiment, counts, &r)) != EDDY_OK) {
        reply_err(c, "get experiment", err, "");
        goto out;
    }
    rpc_reply(c, &r.base);
out:
    for (size_t i = 0; i < r.n_stats; i++)
        eddy__v1__variant_stats__free_unpacked(r.stats[i], NULL);
    free(r.stats);
    if (r.experiment)
        eddy__v1__experiment__free_unpacked(r.experiment, NULL);
    if (counts)
        eddy__v1__get_experiment_response__free_unpacked(counts, NULL);
}

eddy_err experiments_service_register(struct experiments_service *svc, rpc_server *s)
{
    static const struct {
        const char *path;
        const ProtobufCMessageDescriptor *desc;
        rpc_handler_fn *fn;
    } methods[] = {
        {"/eddy.v1.Experiments/CreateExperiment", &eddy__v1__create_experiment_request__descriptor,
         handle_create},
        {"/eddy.v1.Experiments/UpdateExperiment", &eddy__v1__update_experiment_request__descriptor,
         handle_update},
        {"/eddy.v1.Experiments/StopExperiment", &eddy__v1__stop_experiment_request__descriptor,
         handle_stop},
        {"/eddy.v1.Experiments/ListExperiments", &eddy__v1__list_experiments_request__descriptor,
         handle_list},
        {"/eddy.v1.Experiments/GetExperiment", &eddy__v1__get_experiment_request__descriptor,
         handle_get},
    };
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        eddy_err err = rpc_server_add_unary(s, methods[i].path, methods[i].desc, methods[i].fn, svc);
        if (err != EDDY_OK)
            return err;
    }
    return EDDY_OK;
}

/* ---- Prometheus series ------------------------------------------------------------------ */

static const char *const fam_names[EXPERIMENTS_FAMILIES] = {
    "eddy_experiment_impressions", "eddy_experiment_clicks", "eddy_experiment_add_to_carts",
    "eddy_experiment_purchases", "eddy_experiment_revenue", "eddy_experiment_recommended",
    "eddy_experiment_recommended_hits"};
static const char *const fam_help[EXPERIMENTS_FAMILIES] = {
    "Recommend answers served in the variant (running experiments; this node's partitions: "
    "sum over the nodes)",
    "answers of the variant with an attributed click",
    "answers of the variant with an attributed add to cart",
    "answers of the variant with an attributed purchase",
    "sum of the prices of the purchases attributed to the variant",
    "products listed by the variant's answers",
    "products listed by the variant's answers and later clicked or bought (accuracy: "
    "hits / recommended)"};

static void refresh_one(struct experiments_service *svc, const Eddy__V1__Experiment *e)
{
    Eddy__V1__GetExperimentResponse *counts = NULL;
    char why[256];
    if (svc->local(svc->local_ud, e->name, &counts, why, sizeof(why)) != EDDY_OK)
        return;
    for (size_t i = 0; i < e->n_variants; i++) { /* the variants it has: bounded labels */
        const Eddy__V1__VariantStats *vs = NULL;
        for (size_t j = 0; j < counts->n_stats && !vs; j++) {
            if (strcmp(counts->stats[j]->variant, e->variants[i]->name) == 0)
                vs = counts->stats[j];
        }
        const char *labels[] = {e->name, e->variants[i]->name};
        double v[EXPERIMENTS_FAMILIES] = {0};
        if (vs) {
            v[0] = (double)vs->impressions;
            v[1] = (double)vs->clicks;
            v[2] = (double)vs->add_to_carts;
            v[3] = (double)vs->purchases;
            v[4] = vs->revenue;
            v[5] = (double)vs->recommended;
            v[6] = (double)vs->recommended_hits;
        }
        for (int f = 0; f < EXPERIMENTS_FAMILIES; f++)
            metric_gauge_set(metric_family_gauge(svc->fam[f], labels), v[f]);
    }
    eddy__v1__get_experiment_response__free_unpacked(counts, NULL);
}

static void refresh(struct experiments_service *svc)
{
    Eddy__V1__ListExperimentsResponse *l = NULL;
    size_t shown = 0;
    if (expreg_list(svc->reg, &l) != EDDY_OK)
        return;
    for (size_t i = 0; i < l->n_experiments && shown < EXPERIMENTS_METRICS_MAX; i++) {
        if (l->experiments[i]->state == EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_RUNNING) {
            refresh_one(svc, l->experiments[i]);
            shown++;
        }
    }
    eddy__v1__list_experiments_response__free_unpacked(l, NULL);
}

static void refresher(struct worker *w, void *ud)
{
    struct experiments_service *svc = ud;
    do
        refresh(svc);
    while (worker_wait(w, svc->refresh_ms));
}

eddy_err experiments_service_start(struct experiments_service *svc)
{
    static const char *const labels[] = {"experiment", "variant"};
    if (!svc->metrics || !svc->local || svc->refresh_ms <= 0)
        return EDDY_OK;
    for (int f = 0; f < EXPERIMENTS_FAMILIES; f++) {
        if (!(svc->fam[f] = metrics_family(svc->metrics, METRIC_GAUGE, fam_names[f], fam_help[f],
                                           labels, 2, NULL, 0)))
            return EDDY_ERR_NOMEM;
    }
    return worker_start(&svc->refresher, "exp-metrics", refresher, svc);
}

void experiments_service_stop(struct experiments_service *svc)
{
    worker_stop(&svc->refresher);
}
