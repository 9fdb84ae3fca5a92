/* A client for etcd v3.4 through its JSON gateway (HTTP/1.1 + libcurl + cJSON): KV, txn,
 * leases, a lease-keeping session and watches. Keys are NUL-terminated strings; values are
 * bytes. Every unary call is bounded by the client's timeout.
 *
 * Threads: an etcd_client may be used from any number of threads at once; each call
 * borrows a keep-alive CURL handle from a small pool. A session and a watch each run a
 * thread of their own (see below); their callbacks run on that thread.
 *
 * Errors: every action returns an eddy_err. After a failed call, etcd_last_error(c) on the
 * same thread gives a readable message (the gateway's text, the curl error, ...).
 *   connection refused / unreachable on every endpoint, 5xx   EDDY_ERR_UNAVAILABLE
 *   the call's deadline passed                                 EDDY_ERR_TIMEOUT
 *   gateway {"code":3} bad argument, {"code":12}              EDDY_ERR_INVALID
 *   gateway {"code":5} (lease not found)                      EDDY_ERR_NOT_FOUND
 *   gateway {"code":11} (revision compacted, or in the future) EDDY_ERR_NOT_FOUND
 *   gateway {"code":6,9,10}                                    EDDY_ERR_CONFLICT
 *   gateway {"code":8}                                         EDDY_ERR_FULL
 *   gateway {"code":4}                                         EDDY_ERR_TIMEOUT
 *   gateway {"code":2,14} (no leader, request timed out...)   EDDY_ERR_UNAVAILABLE
 *   a reply over ETCD_MAX_REPLY bytes                          EDDY_ERR_TOO_LARGE
 *   a reply that is not the expected JSON                      EDDY_ERR_CORRUPT
 *
 * Endpoints: calls go to the current endpoint. When it refuses the connection the call is
 * retried at once on the next one (the request was never delivered). On a timeout, a 5xx
 * or a connection lost mid-request the client moves to the next endpoint for later calls;
 * the failed call itself is retried there only if it is read-only (range, keepalive), since
 * a write may already have been applied. */
#ifndef EDDY_ETCD_H
#define EDDY_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Largest reply body (and largest watch line) the client accepts. */
#define ETCD_MAX_REPLY (64u << 20)

/* The 'lease' argument of a put: > 0 attaches the key to that lease, 0 writes the key with
 * no lease (a put without a lease DETACHES the key from its old lease), ETCD_LEASE_KEEP
 * keeps whatever lease the key has ("ignore_lease"). */
#define ETCD_LEASE_KEEP ((int64_t)-1)

typedef struct etcd_client etcd_client;

/* A key as stored in etcd. Owned by whoever holds the struct: release with
 * etcd_kv_release (which accepts a zeroed struct). 'value' has 'value_len' bytes followed
 * by a NUL, so text values can be used as C strings. */
struct etcd_kv {
    char *key;
    char *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease; /* 0: none */
};

/* An array of keys in key order; release with etcd_kvs_release. */
struct etcd_kvs {
    struct etcd_kv *kvs;
    size_t n;
};

void etcd_kv_release(struct etcd_kv *kv);
void etcd_kvs_release(struct etcd_kvs *kvs);

/* --- the client ------------------------------------------------------------------------ */

/* A client for 'endpoints', a comma-separated list of base URLs ("http://h:p,http://h2:p2"),
 * with 'timeout_ms' (> 0) bounding every unary call, endpoint retries included. Returns
 * NULL on bad input or no memory. Caller owns the result; free with etcd_client_free after
 * every session and watch on it has been freed. */
etcd_client *etcd_client_new(const char *endpoints, int64_t timeout_ms);

/* How to reach an etcd with TLS and authentication (paths and user borrowed for the call
 * of etcd_client_new_secure; NULL or "" = not set).
 *   ca, cert, key     https:// endpoints: the CA that signed etcd's certificate (default:
 *                     the system's), and a client certificate for --client-cert-auth.
 *   user, password_file  etcd authentication: the client POSTs /v3/auth/authenticate with
 *                     the password (the file's first line, read at every authentication,
 *                     so it may be rotated), sends the token in the Authorization header,
 *                     and authenticates again once when etcd answers that the token is
 *                     invalid or expired (e.g. after an etcd restart), then retries. A
 *                     watch authenticates at every (re)connect. */
struct etcd_security {
    const char *ca, *cert, *key;
    const char *user, *password_file;
};

/* Whether 'sec' is consistent (user with password_file, cert with key); if not 'err' says
 * why in flag names and EDDY_ERR_INVALID is returned. */
eddy_err etcd_security_check(const struct etcd_security *sec, char *err, size_t errlen);

/* etcd_client_new with 'sec' (NULL: as etcd_client_new). NULL also if user is given
 * without password_file, or cert without key. */
etcd_client *etcd_client_new_secure(const char *endpoints, int64_t timeout_ms,
                                    const struct etcd_security *sec);
void etcd_client_free(etcd_client *c);

/* The message of the last failed etcd_* call made on 'c' by the calling thread ("" if
 * none). Valid until this thread's next call on any client. */
const char *etcd_last_error(const etcd_client *c);

/* The endpoint calls currently go to (borrowed; valid for the client's life). */
const char *etcd_current_endpoint(etcd_client *c);

/* --- KV ---------------------------------------------------------------------------------- */

/* Set 'key' to 'vlen' bytes of 'val' ('lease' as described at ETCD_LEASE_KEEP). On success
 * '*revision' (may be NULL) is the revision of the write. */
eddy_err etcd_put(etcd_client *c, const char *key, const void *val, size_t vlen, int64_t lease,
                  int64_t *revision);

/* Read 'key'. '*found' tells whether it exists; if so '*out' is filled and the caller
 * releases it with etcd_kv_release (when not found, '*out' is zeroed). */
eddy_err etcd_get(etcd_client *c, const char *key, struct etcd_kv *out, bool *found);

/* Read every key starting with 'prefix' ("" = all keys), in key order, and the store
 * revision they were read at ('*revision', may be NULL): a watch started at
 * revision + 1 misses nothing. Caller releases '*out' with etcd_kvs_release. */
eddy_err etcd_range_prefix(etcd_client *c, const char *prefix, struct etcd_kvs *out,
                           int64_t *revision);

/* Delete 'key'. Deleting a missing key is not an error. */
eddy_err etcd_delete(etcd_client *c, const char *key);

/* Delete every key starting with 'prefix'; '*deleted' (may be NULL) is how many. */
eddy_err etcd_delete_prefix(etcd_client *c, const char *prefix, int64_t *deleted);

/* Compact the key history up to 'revision' (watches from older revisions get RESYNC). */
eddy_err etcd_compact(etcd_client *c, int64_t revision);

/* --- transactions ------------------------------------------------------------------------ */

enum etcd_cmp_target { ETCD_CMP_VERSION, ETCD_CMP_CREATE, ETCD_CMP_MOD, ETCD_CMP_VALUE,
                       ETCD_CMP_LEASE };
enum etcd_cmp_result { ETCD_CMP_EQUAL, ETCD_CMP_NOT_EQUAL, ETCD_CMP_GREATER, ETCD_CMP_LESS };
enum etcd_op_type { ETCD_OP_PUT, ETCD_OP_DELETE, ETCD_OP_RANGE };
enum etcd_branch { ETCD_ON_SUCCESS, ETCD_ON_FAILURE };

/* Compares, ops per branch: etcd accepts up to 128; Eddy needs a handful. */
#define ETCD_TXN_MAX 16 /* ClusterStatus reads 9 ranges in one txn */

/* "if every compare holds then the success ops else the failure ops", applied atomically.
 * Build it on the stack with etcd_txn_init and the etcd_txn_* adders; keys and values are
 * borrowed until etcd_txn returns. Adding past ETCD_TXN_MAX makes etcd_txn fail with
 * EDDY_ERR_TOO_LARGE. Two writes of one key in a branch are rejected by etcd (INVALID). */
struct etcd_txn {
    struct etcd_txn_cmp {
        const char *key;
        enum etcd_cmp_target target;
        enum etcd_cmp_result result;
        int64_t number; /* version, create/mod revision or lease; 0 revision = absent */
        const void *value;
        size_t value_len;
    } cmp[ETCD_TXN_MAX];
    struct etcd_txn_op {
        enum etcd_op_type type;
        const char *key;
        bool prefix; /* DELETE/RANGE: every key starting with 'key' */
        const void *value;
        size_t value_len;
        int64_t lease; /* PUT: as for etcd_put */
    } ops[2][ETCD_TXN_MAX]; /* [enum etcd_branch] */
    size_t n_cmp, n_ops[2];
    bool overflow;
};

void etcd_txn_init(struct etcd_txn *t);
/* Compare a number of 'key' (target VERSION, CREATE, MOD or LEASE) with 'n'. A missing
 * key has version, create and mod revision 0. */
void etcd_txn_compare(struct etcd_txn *t, const char *key, enum etcd_cmp_target target,
                      enum etcd_cmp_result result, int64_t n);
/* Compare the value of 'key' with 'len' bytes of 'value'. */
void etcd_txn_compare_value(struct etcd_txn *t, const char *key, enum etcd_cmp_result result,
                            const void *value, size_t len);
void etcd_txn_put(struct etcd_txn *t, enum etcd_branch b, const char *key, const void *val,
                  size_t vlen, int64_t lease);
void etcd_txn_delete(struct etcd_txn *t, enum etcd_branch b, const char *key, bool prefix);
void etcd_txn_range(struct etcd_txn *t, enum etcd_branch b, const char *key, bool prefix);

/* What one op of the branch that ran returned: RANGE fills 'kvs', DELETE 'deleted',
 * PUT nothing (its revision is the txn's). */
struct etcd_op_result {
    enum etcd_op_type type;
    struct etcd_kvs kvs;
    int64_t deleted;
};

/* Release with etcd_txn_result_release (accepts a zeroed struct). */
struct etcd_txn_result {
    bool succeeded;        /* the compares held: the success branch ran */
    int64_t revision;      /* store revision after the txn */
    struct etcd_op_result *ops; /* one per op of the branch that ran, in order */
    size_t n_ops;
};
void etcd_txn_result_release(struct etcd_txn_result *r);

/* Run 't'. A compare that fails is not an error: r->succeeded is false. On error '*r' is
 * zeroed. */
eddy_err etcd_txn(etcd_client *c, const struct etcd_txn *t, struct etcd_txn_result *r);

/* Compare-and-swap: write 'key' only if its mod_revision is 'expect_mod_revision' (0: only
 * if the key does not exist: create-if-absent). '*succeeded' tells whether it was written.
 * '*current' (may be NULL; release with etcd_kv_release) is the key as it is after the
 * call: on success the new kv (its mod_revision is the next expected one), on failure the
 * key that beat us (zeroed, key NULL, if it does not exist). Losing is not an error. */
eddy_err etcd_txn_cas(etcd_client *c, const char *key, int64_t expect_mod_revision,
                      const void *val, size_t vlen, int64_t lease, bool *succeeded,
                      struct etcd_kv *current);

/* --- leases ------------------------------------------------------------------------------ */

/* Grant a lease of 'ttl_s' seconds; '*id' is its ID. etcd may raise a TTL below its minimum:
 * '*granted_ttl_s' (may be NULL) is what it granted. */
eddy_err etcd_lease_grant(etcd_client *c, int64_t ttl_s, int64_t *id, int64_t *granted_ttl_s);

/* Refresh lease 'id' once; '*ttl_left' (may be NULL) is its TTL in seconds afterwards.
 * EDDY_ERR_NOT_FOUND: the lease has expired or was revoked (its keys are gone). */
eddy_err etcd_lease_keepalive(etcd_client *c, int64_t id, int64_t *ttl_left);

/* Revoke lease 'id', deleting its keys. EDDY_ERR_NOT_FOUND if it does not exist. */
eddy_err etcd_lease_revoke(etcd_client *c, int64_t id);

/* --- sessions: a lease kept alive by a thread --------------------------------------------
 *
 * DESIGN: a node's registration and a leader's key live on a lease; etcd deletes them
 * when the lease expires, and the coordinator may then hand the node's partitions to
 * someone else. So a node must stop acting as owner BEFORE etcd could expire its lease,
 * whatever happens to the network. The session thread sends a keepalive every TTL/3
 * (retrying every TTL/12 after a failure) and keeps a deadline on CLOCK_MONOTONIC:
 *
 *     alive until  T_sent + TTL - margin,   margin = max(TTL / 4, 100 ms)
 *
 * where T_sent is when the last SUCCESSFUL keepalive (or the grant) was SENT. etcd
 * refreshed the lease at some moment after T_sent, so the lease cannot expire before
 * T_sent + TTL; the margin covers the time between a caller's etcd_session_alive() check
 * and its acknowledgement, and clock-rate differences. A keepalive answered "expired"
 * ends the session at once. Loss is final: once etcd_session_alive() has returned false it
 * never returns true again; the owner creates a new session (and re-registers). */

typedef struct etcd_session etcd_session;

/* Called once, on the session thread, when the session is lost. It must not call
 * etcd_session_free on 's'; it may call etcd_session_alive and any etcd_client function. */
typedef void etcd_session_lost_fn(etcd_session *s, void *ud);

/* Grant a lease of 'ttl_s' seconds on 'c' and start keeping it alive. 'on_lost' may be
 * NULL. Returns NULL if the grant failed (see etcd_last_error on this thread) or on no
 * memory. Caller owns the result; free with etcd_session_free before freeing 'c'. */
etcd_session *etcd_session_new(etcd_client *c, int64_t ttl_s, etcd_session_lost_fn *on_lost,
                               void *ud);

/* Stop the thread and revoke the lease (deleting its keys) unless it is known lost. */
void etcd_session_free(etcd_session *s);

/* The lease ID, to attach keys with etcd_put/etcd_txn_cas. */
int64_t etcd_session_lease(const etcd_session *s);

/* The granted TTL in seconds. */
int64_t etcd_session_ttl(const etcd_session *s);

/* Whether the lease is certainly still alive (the rule above). Thread-safe and cheap:
 * check it before acknowledging anything that relies on the lease. */
bool etcd_session_alive(etcd_session *s);

/* --- watches ------------------------------------------------------------------------------ */

enum etcd_event_type {
    ETCD_EVENT_PUT,
    ETCD_EVENT_DELETE, /* kv has the key and mod_revision (the deletion); prev_kv the value */
    ETCD_EVENT_RESYNC, /* history was compacted past where the watch had to resume: events
                        * were lost. Re-read the keys with a range and return its
                        * revision + 1; the watch resumes from there. */
};

struct etcd_event {
    enum etcd_event_type type;
    struct etcd_kv kv;      /* borrowed, valid during the callback; zeroed for RESYNC */
    struct etcd_kv prev_kv; /* borrowed; key NULL when etcd had no previous value */
    int64_t revision;       /* the header revision of the response that carried the event */
    int64_t compact_revision; /* RESYNC: the oldest revision still available */
};

/* Called on the watch's thread, one event at a time, in revision order. For RESYNC the
 * return value is the revision to resume from (0: compact_revision); otherwise it is
 * ignored (return 0). It may call etcd_client functions, but not etcd_watch_stop on its own
 * watch. */
typedef int64_t etcd_watch_fn(const struct etcd_event *ev, void *ud);

typedef struct etcd_watch etcd_watch;

/* --- etcd's JSON answers, decoded as the client decodes them ------------------------------
 * Pure: the unit tests and the fuzzer (tests/fuzz/fuzz_etcd_json.c) give them bytes. Each
 * returns EDDY_ERR_CORRUPT for bytes that are not JSON or a key or value that is not
 * base64, EDDY_ERR_NOMEM when out of memory; the outputs are released as the client's. */

/* A Range answer: its keys in '*out' and the header's revision in '*revision' (may be NULL). */
eddy_err etcd_decode_range(const char *json, size_t len, struct etcd_kvs *out,
                           int64_t *revision);

/* A Txn answer to 't': '*r' as etcd_txn fills it. */
eddy_err etcd_decode_txn(const char *json, size_t len, const struct etcd_txn *t,
                         struct etcd_txn_result *r);

/* One line of a watch stream ({"result":{"events":[...]}}): each event handed to 'cb' (its
 * return value is ignored), the newest mod_revision in '*last'. */
eddy_err etcd_decode_watch_events(const char *json, size_t len, etcd_watch_fn *cb, void *ud,
                                  int64_t *last);

/* Watch 'key' (or every key starting with it, if 'prefix') from 'start_revision' (0: from
 * now, which races with writes made just before: prefer a range's revision + 1) on a thread
 * of its own with its own connection. After a disconnect it reconnects with backoff (50 ms
 * doubling to 1 s), rotating endpoints, and resumes after the last revision delivered, so
 * no event is lost or repeated. Dead peers are found by TCP keepalive (about 11 s). Returns
 * NULL on bad input or no memory (and 'cb' never runs); connection failures are retried on
 * the thread. Caller owns the result; stop and free it with etcd_watch_stop. */
etcd_watch *etcd_watch_start(etcd_client *c, const char *key, bool prefix,
                             int64_t start_revision, etcd_watch_fn *cb, void *ud);

/* Stop the watch (promptly: the thread is woken, not polled), join its thread and free it.
 * After it returns 'cb' never runs again. Accepts NULL. */
void etcd_watch_stop(etcd_watch *w);

/* Whether the watch's stream is currently established (etcd confirmed it). For tests and
 * health reporting. */
bool etcd_watch_connected(etcd_watch *w);

#endif
