/* Coordinator leader election on a leased etcd key (see election.h).
 *
 * DESIGN: one thread per candidate runs the loop below; the session thread (lease
 * keepalives) and the watch thread (leader key events) only set flags and kick it.
 *
 *   no session  -> grant one (retry with backoff while etcd is unreachable)
 *   campaign    -> txn: if leader CREATE == 0 then put leader=id with our lease
 *                       else range leader
 *   won         -> on_elected; wait for: stop, session lost, leader key deleted/changed
 *               -> on_demoted; drop the session if it was lost; campaign again
 *   lost        -> watch the key from the txn's revision + 1; wait for its DELETE (or
 *                  stop, or session lost); campaign again */
#include "coordinator/election.h"

#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/cluster.h"
#include "common/log.h"
#include "common/worker.h"

struct election {
    struct election_opts o;
    char *key, *id;
    struct worker worker; /* the election thread; kicked when a flag below is set */
    pthread_mutex_t mu;   /* guards the two flags below */
    bool session_lost;  /* the current session's on_lost ran */
    bool key_event;     /* the watched leader key was deleted (or changed, while leading) */
    atomic_bool leading;
    etcd_session *session; /* the election thread's */
    bool connected;        /* last state reported through on_connected */
};

/* Wait up to 'ms' for stop, session loss or a key event; returns whether stopping. */
static bool wait_event(election *e, int64_t ms)
{
    pthread_mutex_lock(&e->mu);
    bool pending = e->session_lost || e->key_event;
    pthread_mutex_unlock(&e->mu);
    if (!pending)
        worker_wait(&e->worker, ms);
    return worker_stopping(&e->worker);
}

static bool stopping(election *e)
{
    return worker_stopping(&e->worker);
}

static void on_session_lost(etcd_session *s, void *ud)
{
    election *e = ud;
    pthread_mutex_lock(&e->mu);
    e->session_lost = true;
    pthread_mutex_unlock(&e->mu);
    worker_kick(&e->worker);
}

static int64_t on_key_event(const struct etcd_event *ev, void *ud)
{
    election *e = ud;
    bool wake = ev->type != ETCD_EVENT_PUT;
    /* A leader also steps down if someone else's value replaced its own. */
    if (ev->type == ETCD_EVENT_PUT && atomic_load(&e->leading) &&
        (ev->kv.value_len != strlen(e->id) || memcmp(ev->kv.value, e->id, ev->kv.value_len) != 0))
        wake = true;
    if (wake) {
        pthread_mutex_lock(&e->mu);
        e->key_event = true;
        pthread_mutex_unlock(&e->mu);
        worker_kick(&e->worker);
    }
    return 0; /* RESYNC: resume at the compaction point; we re-campaign anyway */
}

static void set_connected(election *e, bool c)
{
    if (e->connected == c)
        return;
    e->connected = c;
    if (e->o.on_connected)
        e->o.on_connected(e->o.ud, c);
}

static void drop_session(election *e)
{
    etcd_session_free(e->session); /* revokes the lease unless it is known expired */
    e->session = NULL;
    set_connected(e, false);
}

/* Wait while the session lives, nothing happened to the key, and we are not stopped.
 * Polls the session's deadline too: its "alive" rule can turn false before the session
 * thread notices. Returns a short reason. */
static const char *hold(election *e)
{
    for (;;) {
        if (wait_event(e, 100))
            return "stopping";
        pthread_mutex_lock(&e->mu);
        bool lost = e->session_lost, key = e->key_event;
        pthread_mutex_unlock(&e->mu);
        if (lost || !etcd_session_alive(e->session))
            return "session lost";
        if (key)
            return "leader key changed";
    }
}

/* One campaign with the current session. Returns false on an etcd error. */
static bool campaign(election *e)
{
    int64_t lease = etcd_session_lease(e->session);
    struct etcd_txn t;
    etcd_txn_init(&t);
    etcd_txn_compare(&t, e->key, ETCD_CMP_CREATE, ETCD_CMP_EQUAL, 0);
    etcd_txn_put(&t, ETCD_ON_SUCCESS, e->key, e->id, strlen(e->id), lease);
    etcd_txn_range(&t, ETCD_ON_FAILURE, e->key, false);
    struct etcd_txn_result r;
    eddy_err err = etcd_txn(e->o.etcd, &t, &r);
    if (err != EDDY_OK) {
        log_warn("msg=\"campaign failed\" id=%s err=\"%s\"", e->id, etcd_last_error(e->o.etcd));
        return false;
    }
    bool won = r.succeeded;
    char holder[CLUSTER_ID_MAX] = "";
    if (!won && r.n_ops == 1 && r.ops[0].kvs.n == 1) {
        const struct etcd_kv *kv = &r.ops[0].kvs.kvs[0];
        /* Our own key from an earlier attempt whose answer was lost: we already lead. */
        if (kv->lease == lease)
            won = true;
        snprintf(holder, sizeof(holder), "%s", kv->value);
    } else if (!won) {
        etcd_txn_result_release(&r);
        return true; /* the key went between the compare and the read: try again */
    }
    int64_t rev = r.revision;
    etcd_txn_result_release(&r);

    pthread_mutex_lock(&e->mu);
    e->key_event = false;
    pthread_mutex_unlock(&e->mu);
    atomic_store(&e->leading, won);
    etcd_watch *w = etcd_watch_start(e->o.etcd, e->key, false, rev + 1, on_key_event, e);
    if (!w) {
        atomic_store(&e->leading, false);
        log_error("msg=\"cannot watch the leader key\" key=%s", e->key);
        return false;
    }
    if (won) {
        log_info("msg=\"became leader\" id=%s lease=%lld revision=%lld", e->id,
                 (long long)lease, (long long)rev);
        if (e->o.on_elected)
            e->o.on_elected(e->o.ud, e->session);
        const char *why = hold(e);
        atomic_store(&e->leading, false);
        if (e->o.on_demoted)
            e->o.on_demoted(e->o.ud);
        log_info("msg=\"stepped down\" id=%s reason=\"%s\"", e->id, why);
    } else {
        log_info("msg=\"standing by\" id=%s leader=%s", e->id, holder);
        hold(e);
    }
    etcd_watch_stop(w);
    return true;
}

static void election_main(struct worker *w, void *arg)
{
    election *e = arg;
    int64_t backoff = 100;
    bool warned = false;
    while (!stopping(e)) {
        if (e->session && !etcd_session_alive(e->session))
            drop_session(e);
        if (!e->session) {
            pthread_mutex_lock(&e->mu);
            e->session_lost = false;
            pthread_mutex_unlock(&e->mu);
            e->session = etcd_session_new(e->o.etcd, e->o.ttl_s, on_session_lost, e);
            if (!e->session) {
                if (!warned)
                    log_warn("msg=\"cannot open an etcd session; retrying\" err=\"%s\"",
                             etcd_last_error(e->o.etcd));
                warned = true;
                wait_event(e, backoff);
                backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
                continue;
            }
            warned = false;
            backoff = 100;
            set_connected(e, true);
        }
        if (!campaign(e)) {
            wait_event(e, backoff);
            backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
        } else {
            backoff = 100;
        }
    }
    drop_session(e);
}

election *election_new(const struct election_opts *o)
{
    if (!o->etcd || !o->key || !*o->key || !o->id || !*o->id || o->ttl_s <= 0)
        return NULL;
    election *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->o = *o;
    e->key = strdup(o->key);
    e->id = strdup(o->id);
    bool ok = e->key && e->id && pthread_mutex_init(&e->mu, NULL) == 0;
    if (ok && worker_start(&e->worker, "election", election_main, e) != EDDY_OK) {
        pthread_mutex_destroy(&e->mu);
        ok = false;
    }
    if (!ok) {
        free(e->key);
        free(e->id);
        free(e);
        return NULL;
    }
    return e;
}

void election_free(election *e)
{
    if (!e)
        return;
    worker_stop(&e->worker);
    pthread_mutex_destroy(&e->mu);
    free(e->key);
    free(e->id);
    free(e);
}

bool election_is_leader(election *e)
{
    return atomic_load(&e->leading);
}
