/* State/Reprocess on every state node at once, and the merge of their answers (see
 * reprocess_fanout.h). */
#include "node/cluster/reprocess_fanout.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

struct reprocess_fanout {
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* driven: the last answer wakes the driver */
    size_t n, left;
    rpc_call *call;
    bool all;
    bool driven;                /* a stage-2 driver waits for the answers and replies */
    bool orphan;                /* the driver gave up waiting: the last answer frees */
    uint32_t partitions;
    int64_t set[RP_PARAMS];     /* the request's new half-lives (0: unchanged) */
    int64_t t0_ms;              /* driven: the duration counts from here to the reply */
    struct reprocess_answer *answers; /* [n] */
    struct fan_slot {           /* the callback's context of answer i */
        struct reprocess_fanout *f;
        struct reprocess_answer *a;
    } slots[];
};

static int cmp_part(const void *a, const void *b)
{
    const Eddy__V1__ReprocessedPartition *x = *(Eddy__V1__ReprocessedPartition *const *)a;
    const Eddy__V1__ReprocessedPartition *y = *(Eddy__V1__ReprocessedPartition *const *)b;
    return (x->partition > y->partition) - (x->partition < y->partition);
}

const struct reprocess_answer *reprocess_answers_failed(const struct reprocess_answer *a,
                                                        size_t n, size_t *nparts, size_t *ok)
{
    const struct reprocess_answer *failed = NULL;
    *nparts = *ok = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i].res.code != GRPC_STATUS_OK || !a[i].resp)
            failed = failed ? failed : &a[i];
        else
            *nparts += a[i].resp->n_partitions, ++*ok;
    }
    return failed;
}

grpc_status_code reprocess_merge(const struct reprocess_answer *a, size_t n, bool all,
                                 uint32_t partitions, const int64_t set[RP_PARAMS],
                                 struct reprocess_merged *out, char *err, size_t errlen)
{
    Eddy__V1__ReprocessResponse *m = &out->m;
    eddy__v1__reprocess_response__init(m);
    out->parts = NULL;
    size_t nparts, ok;
    const struct reprocess_answer *failed = reprocess_answers_failed(a, n, &nparts, &ok);
    if (failed) {
        snprintf(err, errlen, "state node %s: %s (%zu of %zu state nodes finished their "
                              "partitions)",
                 failed->node, failed->res.details, ok, n);
        return failed->res.code;
    }
    if (all && nparts < partitions) {
        snprintf(err, errlen, "reprocess: only %zu of %u partitions were rebuilt (partitions "
                              "moving or unassigned); run it again",
                 nparts, partitions);
        return GRPC_STATUS_UNAVAILABLE;
    }
    if (!(out->parts = calloc(nparts ? nparts : 1, sizeof(*out->parts)))) {
        snprintf(err, errlen, "reprocess: out of memory");
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    m->first_seq = UINT64_MAX;
    m->stage2_rebuilt = n > 0;
    for (size_t i = 0; i < n; i++) {
        const Eddy__V1__ReprocessResponse *r = a[i].resp;
        for (size_t k = 0; k < r->n_partitions; k++)
            out->parts[m->n_partitions++] = r->partitions[k];
        m->records_replayed += r->records_replayed;
        if (r->records_replayed > 0 && r->first_seq < m->first_seq)
            m->first_seq = r->first_seq;
        m->duration_ms = r->duration_ms > m->duration_ms ? r->duration_ms : m->duration_ms;
        m->pause_ms = r->pause_ms > m->pause_ms ? r->pause_ms : m->pause_ms;
        m->stage2_rebuilt = m->stage2_rebuilt && r->stage2_rebuilt;
        if (!m->n_parameters) { /* every node answers its own values; the first one's */
            m->parameters = r->parameters;
            m->n_parameters = r->n_parameters;
        }
    }
    /* a stage-2 rebuild's half-lives take effect at its swap, after the nodes answered */
    if (m->n_parameters == RP_PARAMS) {
        for (int i = 0; i < RP_PARAMS; i++) {
            out->params[i] = *m->parameters[i];
            if (set[i] && strcmp(out->params[i].name, reprocess_param_names[i]) == 0) {
                snprintf(out->values[i], sizeof(out->values[i]), "%" PRId64, set[i]);
                out->params[i].value = out->values[i];
            }
            out->pp[i] = &out->params[i];
        }
        m->parameters = out->pp;
    }
    if (m->first_seq == UINT64_MAX)
        m->first_seq = 0;
    qsort(out->parts, m->n_partitions, sizeof(*out->parts), cmp_part);
    m->partitions = out->parts;
    return GRPC_STATUS_OK;
}

void reprocess_merged_release(struct reprocess_merged *out)
{
    free(out->parts);
    out->parts = NULL;
}

void reprocess_fanout_reply(reprocess_fanout *f)
{
    struct reprocess_merged mg;
    char err[1024];
    grpc_status_code code =
        reprocess_merge(f->answers, f->n, f->all, f->partitions, f->set, &mg, err, sizeof(err));
    if (code != GRPC_STATUS_OK) {
        rpc_reply_error(f->call, code, "%s", err);
        return;
    }
    if (f->t0_ms)
        mg.m.duration_ms = clock_mono_ms() - f->t0_ms;
    rpc_reply(f->call, &mg.m.base);
    reprocess_merged_release(&mg);
}

void reprocess_fanout_free(reprocess_fanout *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        if (f->answers[i].resp)
            protobuf_c_message_free_unpacked(&f->answers[i].resp->base, NULL);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f->answers);
    free(f);
}

static void fan_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct fan_slot *s = ud;
    reprocess_fanout *f = s->f;
    s->a->res = *res;
    s->a->resp = (Eddy__V1__ReprocessResponse *)resp;
    pthread_mutex_lock(&f->mu);
    bool last = --f->left == 0;
    bool driven = f->driven, orphan = f->orphan;
    if (last && driven)
        pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (!last || (driven && !orphan))
        return; /* the driver replies and frees */
    if (!driven)
        reprocess_fanout_reply(f);
    reprocess_fanout_free(f);
}

/* A fan-out to 'nodes' (n > 0) for call 'c'; NULL on OOM. */
static reprocess_fanout *fan_new(rpc_call *c, const struct cluster_node *nodes, size_t n,
                                 const struct reprocess_request *rq, uint32_t partitions)
{
    reprocess_fanout *f = calloc(1, sizeof(*f) + n * sizeof(f->slots[0]));
    if (!f)
        return NULL;
    if (!(f->answers = calloc(n, sizeof(*f->answers)))) {
        free(f);
        return NULL;
    }
    pthread_mutex_init(&f->mu, NULL);
    clock_cond_init(&f->cv);
    f->n = f->left = n;
    f->call = c;
    f->all = rq->all;
    f->partitions = partitions;
    memcpy(f->set, rq->set, sizeof(f->set));
    for (size_t i = 0; i < n; i++) {
        struct reprocess_answer *a = &f->answers[i];
        f->slots[i] = (struct fan_slot){f, a};
        snprintf(a->node, sizeof(a->node), "%s", nodes[i].id);
        snprintf(a->addr, sizeof(a->addr), "%s", nodes[i].grpc_addr);
    }
    return f;
}

reprocess_fanout *reprocess_fanout_drive(rpc_call *c, const struct cluster_node *nodes, size_t n,
                                         const struct reprocess_request *rq,
                                         uint32_t partitions, int64_t t0_ms)
{
    reprocess_fanout *f = fan_new(c, nodes, n, rq, partitions);
    if (f) {
        f->driven = true; /* before any answer can arrive */
        f->t0_ms = t0_ms;
    }
    return f;
}

/* The call's remaining time as a call timeout (0: none). */
static int64_t call_timeout(rpc_call *c)
{
    int64_t left_ms = rpc_call_remaining_ms(c);
    return left_ms == INT64_MAX ? 0 : (left_ms > 1 ? left_ms : 1);
}

/* Every call is started before any answer can complete the fan-out: 'left' counts the
 * calls that have not answered, failures to start included. If none started, nothing
 * completes 'f': the caller does. */
bool reprocess_fanout_start(reprocess_fanout *f, peers *pe,
                            const Eddy__State__V1__StateReprocessRequest *req)
{
    int64_t timeout = call_timeout(f->call);
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < f->n; i++) {
        struct reprocess_answer *a = &f->answers[i];
        rpc_channel *ch = pe ? peers_get(pe, a->addr) : NULL;
        if (!ch || rpc_invoke_async(ch, REPROCESS_METHOD_STATE, &req->base,
                                    &eddy__v1__reprocess_response__descriptor, timeout,
                                    fan_done, &f->slots[i]) != EDDY_OK) {
            char msg[sizeof(a->res.details)]; /* (GCC cannot tell addr and details apart) */
            snprintf(msg, sizeof(msg), "cannot call %s", a->addr);
            a->res.code = GRPC_STATUS_UNAVAILABLE;
            memcpy(a->res.details, msg, sizeof(msg));
            f->left--;
        }
    }
    bool started = f->left > 0;
    pthread_mutex_unlock(&f->mu);
    return started;
}

bool reprocess_fanout_wait(reprocess_fanout *f, int64_t ms)
{
    pthread_mutex_lock(&f->mu);
    if (f->left > 0) {
        struct timespec until = clock_mono_after(ms);
        while (f->left > 0 && pthread_cond_timedwait(&f->cv, &f->mu, &until) == 0)
            ;
    }
    bool all = f->left == 0;
    pthread_mutex_unlock(&f->mu);
    return all;
}

bool reprocess_fanout_abandon(reprocess_fanout *f)
{
    pthread_mutex_lock(&f->mu);
    bool abandoned = f->left > 0;
    f->orphan = abandoned;
    pthread_mutex_unlock(&f->mu);
    return abandoned;
}

const struct reprocess_answer *reprocess_fanout_answers(const reprocess_fanout *f, size_t *n)
{
    *n = f->n;
    return f->answers;
}

void reprocess_fanout_call(membership *mem, peers *pe, rpc_call *c,
                           const Eddy__V1__ReprocessRequest *req,
                           const struct reprocess_request *rq)
{
    struct cluster_node *nodes = calloc(REPROCESS_MAX_STATE_NODES, sizeof(*nodes));
    size_t n = 0;
    if (nodes && rq->all) {
        n = membership_state_nodes(mem, nodes, REPROCESS_MAX_STATE_NODES);
    } else if (nodes) {
        uint64_t epoch;
        n = membership_owner(mem, rq->partition, nodes[0].id, &epoch, nodes[0].grpc_addr);
    }
    reprocess_fanout *f =
        nodes && n ? fan_new(c, nodes, n, rq, membership_partitions(mem)) : NULL;
    free(nodes);
    if (!f) {
        if (nodes && !n)
            rpc_reply_error(c, GRPC_STATUS_UNAVAILABLE, "reprocess: no state node owns %s",
                            rq->all ? "any partition" : "the partition");
        else
            rpc_reply_error(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "reprocess: out of memory");
        return;
    }
    Eddy__State__V1__StateReprocessRequest sreq = EDDY__STATE__V1__STATE_REPROCESS_REQUEST__INIT;
    sreq.request = (Eddy__V1__ReprocessRequest *)req;
    if (!reprocess_fanout_start(f, pe, &sreq)) {
        f->left = 1; /* complete it here, as the last answer would */
        struct rpc_result res = f->answers[0].res;
        fan_done(&f->slots[0], &res, NULL);
    }
}
