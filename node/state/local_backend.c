/* The per-user requests of a state node, answered by this process's engine and queries. */
#include "node/state/local_backend.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <stdio.h>
#include <xxhash.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/partition.h"
#include "common/pbutil.h"

/* ---- per user ---------------------------------------------------------------------------- */

struct delete_job {
    backend_reply_fn *done;
    void *ud;
    ckptsched *cks;  /* lb's (lb itself may be gone: the State service's is on its stack) */
    uint32_t partitions;
    bool model;
    uint64_t windows, log;
    char user[];
};

/* The answer, once the user is gone from the state and (with checkpoints) from the files. */
static void delete_answer(struct delete_job *j, eddy_err err)
{
    struct backend_status st = {GRPC_STATUS_OK, ""};
    Eddy__V1__DeleteUserResponse d = EDDY__V1__DELETE_USER_RESPONSE__INIT;
    Eddy__State__V1__UserResponse r = EDDY__STATE__V1__USER_RESPONSE__INIT;
    if (err != EDDY_OK) {
        backend_status_set(&st, eddy_err_to_grpc(err), "%s", eddy_strerror(err));
    } else if (!j->model && j->windows == 0 && j->log == 0) {
        backend_status_set(&st, GRPC_STATUS_NOT_FOUND, "no state for user %s", j->user);
    } else {
        d.model_deleted = j->model;
        d.windows_deleted = j->windows;
        d.log_entries_deleted = j->log;
        r.response_case = EDDY__STATE__V1__USER_RESPONSE__RESPONSE_DELETE_USER;
        r.delete_user = &d;
    }
    j->done(j->ud, &st, st.code == GRPC_STATUS_OK ? &r.base : NULL);
    free(j);
}

static void purge_done(void *ud, eddy_err err)
{
    delete_answer(ud, err);
}

/* The sync thread: the delete is durable. The purge (compaction, a fresh checkpoint,
 * the older ones deleted) runs on the partition's checkpoint thread, which answers. */
static void delete_done(void *ud, eddy_err err, bool model, uint64_t windows, uint64_t log)
{
    struct delete_job *j = ud;
    j->model = model;
    j->windows = windows;
    j->log = log;
    if (err == EDDY_OK && j->cks && (model || windows > 0 || log > 0)) {
        uint32_t p = partition_of_user(j->user, j->partitions);
        if ((err = ckptsched_purge(j->cks, p, 0, purge_done, j)) == EDDY_OK)
            return;
    }
    delete_answer(j, err);
}

static void delete_user(struct local_backend *lb, const char *user_id, backend_reply_fn *done,
                        void *ud)
{
    struct backend_status st;
    size_t len = strlen(user_id) + 1;
    struct delete_job *j = malloc(sizeof(*j) + len);
    eddy_err err = EDDY_ERR_NOMEM;
    if (j) {
        j->done = done;
        j->ud = ud;
        j->cks = lb->cks;
        j->partitions = engine_options(lb->eng)->apply.partitions;
        memcpy(j->user, user_id, len);
        err = engine_delete_user(lb->eng, user_id, delete_done, j);
        if (err == EDDY_OK)
            return; /* delete_done answers */
        free(j);
    }
    backend_status_set(&st, eddy_err_to_grpc(err), "%s", eddy_strerror(err));
    done(ud, &st, NULL);
}

/* Answer a read: OK with 'reply' (which holds 'resp', freed afterwards), or the error
 * ('user': the user a NOT_FOUND is about). */
static void answer(eddy_err err, ProtobufCMessage *resp, const ProtobufCMessage *reply,
                   const char *user, backend_reply_fn *done, void *ud)
{
    struct backend_status st = {GRPC_STATUS_OK, ""};
    if (err == EDDY_ERR_NOT_FOUND)
        backend_status_set(&st, GRPC_STATUS_NOT_FOUND, "no state for user %s", user);
    else if (err != EDDY_OK)
        backend_status_set(&st, eddy_err_to_grpc(err), "%s", eddy_strerror(err));
    done(ud, &st, err == EDDY_OK ? reply : NULL);
    query_free_response(resp);
}

/* ---- Recommend in an experiment ------------------------------------------------------- */

/* The answer's id: unique per answer (the registry's serial), from what was served. */
static eddy_err set_recommendation_id(struct local_backend *lb, const char *user,
                                      const char *experiment, const char *variant, int64_t now,
                                      Eddy__V1__RecommendResponse *r)
{
    uint64_t serial = lb->exps ? expreg_serial(lb->exps) : 0;
    XXH3_state_t *h = XXH3_createState();
    if (!h)
        return EDDY_ERR_NOMEM;
    XXH3_128bits_reset(h);
    XXH3_128bits_update(h, user, strlen(user) + 1);
    XXH3_128bits_update(h, experiment, strlen(experiment) + 1);
    XXH3_128bits_update(h, variant, strlen(variant) + 1);
    XXH3_128bits_update(h, &now, sizeof(now));
    XXH3_128bits_update(h, &serial, sizeof(serial));
    XXH128_hash_t d = XXH3_128bits_digest(h);
    XXH3_freeState(h);
    char id[40];
    snprintf(id, sizeof(id), "%016llx%016llx", (unsigned long long)d.high64,
             (unsigned long long)d.low64);
    return pb_set_str(&r->recommendation_id, id);
}

/* Log the answer as an impression of 'c' (not waited for: the answer goes out once the
 * record is queued, the writer appends it). A failure loses the impression, never the
 * answer, but for EDDY_ERR_NOT_OWNER: a move's fence came first, the answer is refused
 * (the router asks the new owner), as an impression its log lacks would be lost. */
static eddy_err log_impression(struct local_backend *lb, const char *user,
                               const struct expreg_choice *c, int64_t now,
                               const Eddy__V1__RecommendResponse *r)
{
    Eddy__Store__V1__Impression imp = EDDY__STORE__V1__IMPRESSION__INIT;
    char **products = calloc(r->n_items ? r->n_items : 1, sizeof(*products));
    if (!products) {
        log_warn("msg=\"impression not logged\" error=\"out of memory\"");
        return EDDY_OK;
    }
    for (size_t i = 0; i < r->n_items; i++)
        products[i] = r->items[i]->product_id;
    imp.recommendation_id = r->recommendation_id;
    imp.user_id = (char *)user;
    imp.experiment = (char *)c->experiment;
    imp.variant = (char *)c->variant;
    imp.ts = now;
    imp.products = products;
    imp.n_products = r->n_items;
    imp.click_window_ms = c->click_window_ms ? c->click_window_ms : lb->click_window_ms;
    imp.purchase_window_ms = c->purchase_window_ms ? c->purchase_window_ms
                                                   : lb->purchase_window_ms;
    eddy_err err = engine_impression(lb->eng, &imp, lb->epoch);
    free(products);
    if (err == EDDY_ERR_NOT_OWNER)
        return err;
    if (err != EDDY_OK)
        log_warn("msg=\"impression not logged\" error=\"%s\"", eddy_strerror(err));
    return EDDY_OK;
}

/* Recommend: the user's variant of the running experiment, if any, chooses the
 * parameters; the answer gets its id and is logged as an impression. */
static eddy_err recommend(struct local_backend *lb, const Eddy__V1__RecommendRequest *req,
                          Eddy__V1__RecommendResponse **out)
{
    struct expreg_choice c;
    const struct engine_opts *o = engine_options(lb->eng);
    bool in = expreg_choose(lb->exps, req->user_id, &o->rec, &c);
    Eddy__V1__RecommendRequest rq = *req;
    if (in && c.exclude != EDDY__V1__EXCLUSION__EXCLUSION_DEFAULT)
        rq.exclude = c.exclude;
    if (in && c.max_recommendations && !rq.max_recommendations)
        rq.max_recommendations = c.max_recommendations;
    int64_t now = clock_wall_ms();
    eddy_err err = query_recommend_with(&lb->q, &rq, in ? &c.rec : NULL, out);
    if (err == EDDY_OK)
        err = set_recommendation_id(lb, req->user_id, in ? c.experiment : "",
                                    in ? c.variant : "", now, *out);
    if (err == EDDY_OK && in &&
        ((err = pb_set_str(&(*out)->experiment, c.experiment)) != EDDY_OK ||
         (err = pb_set_str(&(*out)->variant, c.variant)) != EDDY_OK))
        return err;
    if (err == EDDY_OK && in && !lb->stale)
        err = log_impression(lb, req->user_id, &c, now, *out);
    return err;
}

void local_backend_user(struct local_backend *lb, Eddy__State__V1__UserRequest *req,
                        backend_reply_fn *done, void *ud)
{
    Eddy__State__V1__UserResponse r = EDDY__STATE__V1__USER_RESPONSE__INIT;
    eddy_err err;
    switch (req->request_case) {
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND:
        err = recommend(lb, req->recommend, &r.recommend);
        r.response_case = EDDY__STATE__V1__USER_RESPONSE__RESPONSE_RECOMMEND;
        answer(err, r.recommend ? &r.recommend->base : NULL, &r.base, req->recommend->user_id, done, ud);
        return;
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_PROFILE:
        err = query_profile(&lb->q, req->profile->user_id, &r.profile);
        r.response_case = EDDY__STATE__V1__USER_RESPONSE__RESPONSE_PROFILE;
        answer(err, r.profile ? &r.profile->base : NULL, &r.base, req->profile->user_id, done, ud);
        return;
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_COUNTS:
        err = query_event_counts(&lb->q, req->counts, &r.counts);
        r.response_case = EDDY__STATE__V1__USER_RESPONSE__RESPONSE_COUNTS;
        answer(err, r.counts ? &r.counts->base : NULL, &r.base, req->counts->user_id, done, ud);
        return;
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_DELETE_USER:
        delete_user(lb, req->delete_user->user_id, done, ud);
        return;
    default: {
        struct backend_status st;
        backend_status_set(&st, GRPC_STATUS_INVALID_ARGUMENT, "empty user request");
        done(ud, &st, NULL);
    }
    }
}
