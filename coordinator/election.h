/* Leader election of the coordinators through etcd (docs/design.md §6): each
 * candidate keeps an etcd_session (a lease kept alive on its own thread) and tries to
 * create the leader key with that lease (txn: CREATE == 0). The winner leads until its
 * session is lost or the key is deleted or changed; the others watch the key and try again
 * when it is deleted. A leader that loses its session steps down and campaigns again with
 * a new session. Freeing the election revokes the lease, so the key goes at once and a
 * standby takes over without waiting for the TTL.
 *
 * DESIGN: the election runs on a thread of its own because every step blocks on etcd
 * (grant, txn, waiting for a watch event); the callbacks below run on that thread, one at
 * a time, in the order elected -> demoted -> elected ... */
#ifndef EDDY_ELECTION_H
#define EDDY_ELECTION_H

#include <stdbool.h>
#include <stdint.h>

#include "common/etcd.h"

typedef struct election election;

struct election_opts {
    etcd_client *etcd;       /* borrowed; must outlive the election */
    const char *key;         /* the leader key, e.g. "/eddy/eddy/leader" (copied) */
    const char *id;          /* this candidate's id, the key's value (copied) */
    int64_t ttl_s;           /* lease TTL in seconds */
    /* Called when this candidate has become leader. 's' is the leader's session, borrowed
     * until on_demoted returns: check etcd_session_alive(s) before acting on leadership. */
    void (*on_elected)(void *ud, etcd_session *s);
    /* Called when leadership ends (session lost, key gone, or election_free). Must stop
     * every action of the leader before returning. */
    void (*on_demoted)(void *ud);
    /* Called when the candidate gains (true) or loses (false) a live session with etcd. */
    void (*on_connected)(void *ud, bool connected);
    void *ud;
};

/* Start campaigning. Returns NULL on bad options or no memory. Caller owns the result;
 * free with election_free. */
election *election_new(const struct election_opts *o);

/* Stop: a leader is demoted (on_demoted runs), the session's lease is revoked (the leader
 * key goes with it) and the thread is joined. Accepts NULL. */
void election_free(election *e);

/* Whether this candidate currently leads (as last decided by the election thread). */
bool election_is_leader(election *e);

#endif
