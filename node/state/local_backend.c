/* The per-user requests of a state node, answered by this process's engine and queries. */
#include "node/state/local_backend.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/partition.h"

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

void local_backend_user(struct local_backend *lb, Eddy__State__V1__UserRequest *req,
                        backend_reply_fn *done, void *ud)
{
    Eddy__State__V1__UserResponse r = EDDY__STATE__V1__USER_RESPONSE__INIT;
    eddy_err err;
    switch (req->request_case) {
    case EDDY__STATE__V1__USER_REQUEST__REQUEST_RECOMMEND:
        err = query_recommend(&lb->q, req->recommend, &r.recommend);
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
