/* libeddy: the C client of the Eddy public API (service eddy.v1.Eddy and grpc.health.v1).
 *
 * Requests and responses are the protobuf-c types generated from proto/eddy/v1/eddy.proto:
 * they are the versioned wire types, so this header adds no parallel structs. Every call is
 * synchronous and unary, with the client's timeout, except eddy_ingest_async. A call returns an eddy_status (the gRPC
 * status code numbers) and, if 'err' is not NULL, fills it with the code and the server's
 * message. On EDDY_STATUS_OK the response is stored in *out and the caller owns it (free with
 * eddy_response_free); on any other status *out is set to NULL.
 *
 * Threads: one eddy_client may be used from any number of threads at once; eddy_options
 * and eddy_error belong to the thread that uses them. */
#ifndef EDDY_CLIENT_H
#define EDDY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eddy/v1/eddy.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The outcome of a call: the canonical gRPC status codes, same numbers. */
typedef enum eddy_status {
    EDDY_STATUS_OK = 0,
    EDDY_STATUS_CANCELLED = 1,
    EDDY_STATUS_UNKNOWN = 2,
    EDDY_STATUS_INVALID_ARGUMENT = 3,
    EDDY_STATUS_DEADLINE_EXCEEDED = 4,
    EDDY_STATUS_NOT_FOUND = 5,
    EDDY_STATUS_ALREADY_EXISTS = 6,
    EDDY_STATUS_PERMISSION_DENIED = 7,
    EDDY_STATUS_RESOURCE_EXHAUSTED = 8,
    EDDY_STATUS_FAILED_PRECONDITION = 9,
    EDDY_STATUS_ABORTED = 10,
    EDDY_STATUS_OUT_OF_RANGE = 11,
    EDDY_STATUS_UNIMPLEMENTED = 12,
    EDDY_STATUS_INTERNAL = 13,
    EDDY_STATUS_UNAVAILABLE = 14,
    EDDY_STATUS_DATA_LOSS = 15,
    EDDY_STATUS_UNAUTHENTICATED = 16,
} eddy_status;

/* An error: the status and a readable message (the server's, or the client's own for
 * errors detected locally, e.g. "user_id is required"). Caller-allocated; plain data. */
typedef struct eddy_error {
    eddy_status code;
    char message[512];
    int64_t retry_after_ms; /* RESOURCE_EXHAUSTED from a tenant quota: the server's delay
                               before a retry (already honoured, see eddy_options_set_token);
                               0 otherwise */
} eddy_error;

/* The name of 'code' ("NOT_FOUND"); a static string, "UNKNOWN_STATUS" if out of range. */
const char *eddy_status_name(eddy_status code);

/* ---- options --------------------------------------------------------------------------- */

/* Settings for eddy_client_new; opaque so fields can be added without breaking callers. */
typedef struct eddy_options eddy_options;

/* Defaults: timeout 10 s, fail fast when not connected, 64 MiB message limits. Caller owns
 * the result; free with eddy_options_free. Returns NULL on allocation failure. */
eddy_options *eddy_options_new(void);

/* Accepts NULL. */
void eddy_options_free(eddy_options *opts);

/* Deadline of every call, in milliseconds (> 0). */
void eddy_options_set_timeout_ms(eddy_options *opts, int64_t timeout_ms);

/* If true, a call waits (up to its deadline) for the channel to connect instead of failing
 * at once with EDDY_STATUS_UNAVAILABLE. Default false. */
void eddy_options_set_wait_for_ready(eddy_options *opts, bool wait);

/* Largest response accepted, in bytes (default 64 MiB). */
void eddy_options_set_max_recv_bytes(eddy_options *opts, int64_t bytes);

/* TLS: 'ca_file' (PEM) is the CA that signed the server's certificate; 'cert_file' and
 * 'key_file' (both or neither; may be NULL) a client certificate for servers that request
 * or require one. The files are read by eddy_client_new (which returns NULL if one cannot
 * be read). Without this call the connection is plaintext. Returns false if out of memory
 * or if exactly one of cert_file and key_file is given. */
bool eddy_options_set_tls(eddy_options *opts, const char *ca_file, const char *cert_file,
                          const char *key_file);

/* The name checked in the server's certificate (default: the endpoint's host). Returns
 * false if out of memory. */
bool eddy_options_set_tls_server_name(eddy_options *opts, const char *name);

/* A bearer token (from `eddy token new`) sent as "authorization: Bearer <token>" with every
 * call, for servers started with --token-file (NULL or "" clears it). Returns false if out
 * of memory. Whether or not a token is set, a call answered RESOURCE_EXHAUSTED with a retry
 * delay (a tenant over its quota) is retried after that delay, as long as the wait stays
 * within the call's timeout; the last answer is returned otherwise. */
bool eddy_options_set_token(eddy_options *opts, const char *token);

/* ---- client ---------------------------------------------------------------------------- */

/* A connection to one Eddy node. Opaque; thread-safe. */
typedef struct eddy_client eddy_client;

/* Create a client for 'endpoint' ("host:port"). The connection is made lazily by the first
 * call. 'opts' is borrowed for the duration of the call and may be NULL for defaults.
 * Caller owns the result; free with eddy_client_free. Returns NULL if 'endpoint' is empty
 * or allocation fails. */
eddy_client *eddy_client_new(const char *endpoint, const eddy_options *opts);

/* Close the connection and free the client. Calls still running on other threads must
 * have returned first. Accepts NULL. */
void eddy_client_free(eddy_client *c);

/* The endpoint given to eddy_client_new; borrowed, valid until eddy_client_free. */
const char *eddy_client_endpoint(const eddy_client *c);

/* Free a response returned by any eddy_* call (any protobuf-c message). Accepts NULL. */
void eddy_response_free(void *resp);

/* ---- calls ----------------------------------------------------------------------------- */

/* Record 'n' events (Eddy.Ingest). 'events' and the events are borrowed for the duration of
 * the call. Per-event problems are not errors: the call returns OK and lists them in
 * (*out)->rejected with their index in 'events'. RESOURCE_EXHAUSTED and UNAVAILABLE mean
 * the batch was not recorded and may be retried (event ids make retries idempotent).
 * On OK the caller owns *out; free with eddy_response_free. */
eddy_status eddy_ingest(eddy_client *c, Eddy__V1__Event *const *events, size_t n,
                        Eddy__V1__IngestResponse **out, eddy_error *err);

/* Completion of eddy_ingest_async. It runs on a thread of the client's own, not the
 * caller's: it must return quickly and must not call eddy_client_free. 'st' and 'err' are
 * what eddy_ingest would have returned ('err' borrowed for the callback); on OK the callee
 * owns 'resp' (free with eddy_response_free), otherwise 'resp' is NULL. */
typedef void eddy_ingest_done_fn(void *ud, eddy_status st, const eddy_error *err,
                                 Eddy__V1__IngestResponse *resp);

/* eddy_ingest without waiting: the request is encoded before the return, so 'events' is
 * borrowed only for the call, and any number of calls may be outstanding on one client
 * (they share its gRPC completion queue). If this returns anything but OK (then 'err' says
 * why), 'done' never runs; otherwise it runs exactly once, with CANCELLED for a call still
 * outstanding when eddy_client_free is called. Unlike eddy_ingest, a tenant quota's
 * RESOURCE_EXHAUSTED is not waited out: err->retry_after_ms is the delay to wait before
 * sending the batch again. The completions may come in any order, and the server may apply
 * the batches in any order. */
eddy_status eddy_ingest_async(eddy_client *c, Eddy__V1__Event *const *events, size_t n,
                              eddy_ingest_done_fn *done, void *ud, eddy_error *err);

/* Ranked products for a user (Eddy.Recommend). 'req' is borrowed; req->user_id is
 * required. On OK the caller owns *out; free with eddy_response_free. */
eddy_status eddy_recommend(eddy_client *c, const Eddy__V1__RecommendRequest *req,
                           Eddy__V1__RecommendResponse **out, eddy_error *err);

/* The model of 'user_id' (Eddy.GetUserProfile); NOT_FOUND if the node has no state for the
 * user. On OK the caller owns *out (its 'profile' is never NULL); free with
 * eddy_response_free. */
eddy_status eddy_get_profile(eddy_client *c, const char *user_id,
                             Eddy__V1__GetUserProfileResponse **out, eddy_error *err);
/* eddy_get_profile with the whole request (allow_stale: a follower may answer). 'req' is
 * borrowed; req->user_id is required. */
eddy_status eddy_get_user_profile(eddy_client *c, const Eddy__V1__GetUserProfileRequest *req,
                                  Eddy__V1__GetUserProfileResponse **out, eddy_error *err);

/* Top products over a window range (Eddy.TopProducts). 'req' is borrowed. On OK the caller
 * owns *out; free with eddy_response_free. */
eddy_status eddy_top_products(eddy_client *c, const Eddy__V1__TopProductsRequest *req,
                              Eddy__V1__TopProductsResponse **out, eddy_error *err);

/* Per-window counts by event type (Eddy.EventCounts). 'req' is borrowed. On OK the caller
 * owns *out; free with eddy_response_free. */
eddy_status eddy_event_counts(eddy_client *c, const Eddy__V1__EventCountsRequest *req,
                              Eddy__V1__EventCountsResponse **out, eddy_error *err);

/* Remove everything stored about 'user_id' (Eddy.DeleteUser); NOT_FOUND if the node has
 * no state for the user. On OK the caller owns *out; free with eddy_response_free. */
eddy_status eddy_delete_user(eddy_client *c, const char *user_id,
                             Eddy__V1__DeleteUserResponse **out, eddy_error *err);

/* ---- experiments (eddy.v1.Experiments; the admin role when tokens are on) --------------- */

/* Create (Experiments.CreateExperiment), replace (UpdateExperiment) or stop
 * (StopExperiment) an experiment. 'e' / 'name' are borrowed. On OK the caller owns *out
 * (its experiment as stored); free with eddy_response_free. */
eddy_status eddy_experiment_create(eddy_client *c, const Eddy__V1__Experiment *e,
                                   Eddy__V1__ExperimentResponse **out, eddy_error *err);
eddy_status eddy_experiment_update(eddy_client *c, const Eddy__V1__Experiment *e,
                                   Eddy__V1__ExperimentResponse **out, eddy_error *err);
eddy_status eddy_experiment_stop(eddy_client *c, const char *name,
                                 Eddy__V1__ExperimentResponse **out, eddy_error *err);
/* Every experiment (ListExperiments); on OK the caller owns *out. */
eddy_status eddy_experiment_list(eddy_client *c, Eddy__V1__ListExperimentsResponse **out,
                                 eddy_error *err);
/* One experiment with its per-variant counts (GetExperiment); on OK the caller owns *out. */
eddy_status eddy_experiment_get(eddy_client *c, const char *name,
                                Eddy__V1__GetExperimentResponse **out, eddy_error *err);

/* grpc.health.v1.Health/Check of 'service' ("" = the whole process, "readiness",
 * "eddy.v1.Eddy", ...; NULL means ""). On OK *status is the serving status; the call
 * returns OK for NOT_SERVING too. NOT_FOUND means the service is unknown. */
eddy_status eddy_health_check(eddy_client *c, const char *service,
                              Grpc__Health__V1__HealthCheckResponse__ServingStatus *status,
                              eddy_error *err);

#ifdef __cplusplus
}
#endif

#endif
