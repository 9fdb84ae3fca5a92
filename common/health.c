/* grpc.health.v1.Health over rpc_server: a table of service names and their status, and
 * the Watch streams that follow it (see health.h).
 *
 * Threads: the table and the watcher list are guarded by h->mu, which is also held while
 * a status is queued on a watcher's stream (rpc_stream_send never blocks). A Watch call
 * is finished by whoever unlinks its watcher from the list: on_cancel, a failed send,
 * or health_shutdown; so each call is finished exactly once. */
#include "common/health.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "grpc/health/v1/health.pb-c.h"

#define MAX_SERVICES 256
#define MAX_WATCHERS 1024
#define MAX_NAME 256

struct service {
    char *name;
    enum health_status st;
};

/* One Watch stream. Owned by the list it is in (h->watchers). */
struct watcher {
    struct watcher *next;
    rpc_call *call;
    char *service;
    int last; /* last status sent (a Grpc__Health__V1__HealthCheckResponse__ServingStatus) */
};

struct health {
    pthread_mutex_t mu; /* guards everything below */
    struct service *services;
    size_t nservices, cap;
    struct watcher *watchers;
    size_t nwatchers;
    bool shut;
};

health *health_new(void)
{
    health *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    pthread_mutex_init(&h->mu, NULL);
    return h;
}

static struct service *find_locked(health *h, const char *name)
{
    for (size_t i = 0; i < h->nservices; i++)
        if (strcmp(h->services[i].name, name) == 0)
            return &h->services[i];
    return NULL;
}

/* The status a watcher of 'name' should see. Under h->mu. */
static int watch_status_locked(health *h, const char *name)
{
    struct service *sv = find_locked(h, name);
    if (sv == NULL)
        return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    return (int)sv->st; /* health_status matches the proto's numbering */
}

static eddy_err send_status(rpc_call *call, int st)
{
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)st;
    return rpc_stream_send(call, &resp.base);
}

static void watcher_free(struct watcher *w)
{
    if (w == NULL)
        return;
    free(w->service);
    free(w);
}

/* Unlink 'w' (whose predecessor link is '*pp'). Under h->mu. */
static void unlink_locked(health *h, struct watcher **pp, struct watcher *w)
{
    *pp = w->next;
    w->next = NULL;
    h->nwatchers--;
}

/* Send the current status to every watcher of 'name' that has not seen it. Watchers whose
 * stream is gone or too far behind are unlinked onto '*dead' for the caller to finish
 * once h->mu is released. Under h->mu. */
static void notify_locked(health *h, const char *name, struct watcher **dead)
{
    int st = watch_status_locked(h, name);
    struct watcher **pp = &h->watchers;
    while (*pp) {
        struct watcher *w = *pp;
        if (strcmp(w->service, name) != 0 || w->last == st) {
            pp = &w->next;
            continue;
        }
        eddy_err err = send_status(w->call, st);
        if (err == EDDY_OK) {
            w->last = st;
            pp = &w->next;
            continue;
        }
        log_warn("msg=\"health watcher dropped\" service=\"%s\" err=\"%s\"", name,
                 eddy_strerror(err));
        unlink_locked(h, pp, w);
        w->last = err == EDDY_ERR_FULL ? -1 : -2;
        w->next = *dead;
        *dead = w;
    }
}

/* Finish and free the watchers of a 'dead' list (outside h->mu). */
static void finish_dead(struct watcher *dead)
{
    while (dead) {
        struct watcher *next = dead->next;
        if (dead->last == -1)
            rpc_stream_finish(dead->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                              "health watcher too slow");
        else
            rpc_stream_finish(dead->call, GRPC_STATUS_UNAVAILABLE, NULL);
        watcher_free(dead);
        dead = next;
    }
}

static void on_check(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    health *h = ud;
    const Grpc__Health__V1__HealthCheckRequest *rq =
        (const Grpc__Health__V1__HealthCheckRequest *)req;
    pthread_mutex_lock(&h->mu);
    struct service *sv = find_locked(h, rq->service);
    enum health_status st = sv ? sv->st : HEALTH_UNKNOWN;
    pthread_mutex_unlock(&h->mu);
    if (sv == NULL) {
        rpc_reply_error(call, GRPC_STATUS_NOT_FOUND, "unknown service");
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)st;
    rpc_reply(call, &resp.base);
}

static void on_watch(void *ud, rpc_call *call, const ProtobufCMessage *req)
{
    health *h = ud;
    const Grpc__Health__V1__HealthCheckRequest *rq =
        (const Grpc__Health__V1__HealthCheckRequest *)req;
    if (strlen(rq->service) > MAX_NAME) {
        rpc_stream_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "service name too long");
        return;
    }
    struct watcher *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->service = strdup(rq->service)) == NULL) {
        watcher_free(w);
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->call = call;

    pthread_mutex_lock(&h->mu);
    if (h->shut || h->nwatchers >= MAX_WATCHERS) {
        bool shut = h->shut;
        pthread_mutex_unlock(&h->mu);
        watcher_free(w);
        if (shut)
            rpc_stream_finish(call, GRPC_STATUS_UNAVAILABLE, "shutting down");
        else
            rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "too many health watchers");
        return;
    }
    w->last = watch_status_locked(h, w->service);
    if (send_status(call, w->last) != EDDY_OK) { /* the client is already gone */
        pthread_mutex_unlock(&h->mu);
        watcher_free(w);
        rpc_stream_finish(call, GRPC_STATUS_UNAVAILABLE, NULL);
        return;
    }
    w->next = h->watchers;
    h->watchers = w;
    h->nwatchers++;
    pthread_mutex_unlock(&h->mu);
}

/* The client went away: finish its stream unless someone else already unlinked it. */
static void on_watch_cancel(void *ud, rpc_call *call)
{
    health *h = ud;
    struct watcher *found = NULL;
    pthread_mutex_lock(&h->mu);
    for (struct watcher **pp = &h->watchers; *pp; pp = &(*pp)->next) {
        if ((*pp)->call == call) {
            found = *pp;
            unlink_locked(h, pp, found);
            break;
        }
    }
    pthread_mutex_unlock(&h->mu);
    if (found) {
        rpc_stream_finish(call, GRPC_STATUS_CANCELLED, NULL); /* no-op on the wire */
        watcher_free(found);
    }
}

eddy_err health_register(health *h, rpc_server *s)
{
    eddy_err err = rpc_server_add_unary(s, "/grpc.health.v1.Health/Check",
                                        &grpc__health__v1__health_check_request__descriptor,
                                        on_check, h);
    if (err != EDDY_OK)
        return err;
    return rpc_server_add_stream(s, "/grpc.health.v1.Health/Watch",
                                 &grpc__health__v1__health_check_request__descriptor, on_watch,
                                 on_watch_cancel, h);
}

void health_set(health *h, const char *service, enum health_status st)
{
    struct watcher *dead = NULL;
    pthread_mutex_lock(&h->mu);
    struct service *sv = find_locked(h, service);
    if (sv == NULL) {
        if (h->nservices >= MAX_SERVICES) {
            log_error("msg=\"too many health services\" service=\"%s\"", service);
            goto out;
        }
        if (h->nservices == h->cap) {
            size_t cap = h->cap ? 2 * h->cap : 8;
            struct service *n = realloc(h->services, cap * sizeof(*n));
            if (n == NULL)
                goto out;
            h->services = n;
            h->cap = cap;
        }
        char *name = strdup(service);
        if (name == NULL)
            goto out;
        sv = &h->services[h->nservices++];
        sv->name = name;
    }
    sv->st = st;
    notify_locked(h, service, &dead);
out:
    pthread_mutex_unlock(&h->mu);
    finish_dead(dead);
}

void health_set_all(health *h, enum health_status st)
{
    struct watcher *dead = NULL;
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->nservices; i++) {
        h->services[i].st = st;
        notify_locked(h, h->services[i].name, &dead);
    }
    pthread_mutex_unlock(&h->mu);
    finish_dead(dead);
}

enum health_status health_get(health *h, const char *service)
{
    pthread_mutex_lock(&h->mu);
    struct service *sv = find_locked(h, service);
    enum health_status st = sv ? sv->st : HEALTH_UNKNOWN;
    pthread_mutex_unlock(&h->mu);
    return st;
}

void health_shutdown(health *h)
{
    pthread_mutex_lock(&h->mu);
    h->shut = true;
    struct watcher *w = h->watchers;
    h->watchers = NULL;
    h->nwatchers = 0;
    pthread_mutex_unlock(&h->mu);
    while (w) {
        struct watcher *next = w->next;
        rpc_stream_finish(w->call, GRPC_STATUS_OK, NULL);
        watcher_free(w);
        w = next;
    }
}

size_t health_watchers(health *h)
{
    pthread_mutex_lock(&h->mu);
    size_t n = h->nwatchers;
    pthread_mutex_unlock(&h->mu);
    return n;
}

void health_free(health *h)
{
    if (h == NULL)
        return;
    health_shutdown(h); /* finishes any watcher still held */
    for (size_t i = 0; i < h->nservices; i++)
        free(h->services[i].name);
    free(h->services);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
