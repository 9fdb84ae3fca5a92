/* A small table of channels to peer nodes. */
#include "node/cluster/peers.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PEERS 1024

struct peer {
    char *addr;
    rpc_channel *ch;
};

struct peers {
    pthread_mutex_t mu;
    struct peer tab[MAX_PEERS];
    size_t n;
    int64_t max_bytes;
    const struct tls_config *tls; /* borrowed; NULL = plaintext */
    char *local_addr;             /* NULL: none; see peers_set_local */
    rpc_local_fn *local;
    void *local_ud;
};

peers *peers_new(int64_t max_message_bytes)
{
    peers *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    pthread_mutex_init(&p->mu, NULL);
    p->max_bytes = max_message_bytes;
    return p;
}

void peers_set_tls(peers *p, const struct tls_config *tls)
{
    p->tls = tls;
}

eddy_err peers_set_local(peers *p, const char *addr, rpc_local_fn *fn, void *ud)
{
    free(p->local_addr);
    if (!(p->local_addr = strdup(addr)))
        return EDDY_ERR_NOMEM;
    p->local = fn;
    p->local_ud = ud;
    return EDDY_OK;
}

void peers_free(peers *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        rpc_channel_close(p->tab[i].ch);
        free(p->tab[i].addr);
    }
    pthread_mutex_destroy(&p->mu);
    free(p->local_addr);
    free(p);
}

rpc_channel *peers_get(peers *p, const char *addr)
{
    rpc_channel *ch = NULL;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        if (strcmp(p->tab[i].addr, addr) == 0) {
            ch = p->tab[i].ch;
            goto out;
        }
    }
    if (p->n == MAX_PEERS)
        goto out;
    if (p->local_addr && strcmp(addr, p->local_addr) == 0) {
        ch = rpc_channel_open_local(p->local, p->local_ud);
    } else {
        struct rpc_channel_opts o = {p->max_bytes, p->max_bytes, false, p->tls, NULL};
        ch = rpc_channel_open(addr, &o);
    }
    char *copy = strdup(addr);
    if (!ch || !copy) {
        rpc_channel_close(ch);
        free(copy);
        ch = NULL;
        goto out;
    }
    p->tab[p->n].addr = copy;
    p->tab[p->n].ch = ch;
    p->n++;
out:
    pthread_mutex_unlock(&p->mu);
    return ch;
}

struct fan {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t left;
};

static void call_done(void *ud, const struct rpc_result *res, ProtobufCMessage *resp)
{
    struct peer_call *c = ud;
    struct fan *f = c->fan;
    c->res = *res;
    c->resp = resp;
    pthread_mutex_lock(&f->mu);
    f->left--;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

void peers_fan(peers *p, const char *method, const ProtobufCMessageDescriptor *resp_desc,
               const char *const *addrs, ProtobufCMessage *const *reqs, struct peer_call *calls,
               size_t n, int64_t timeout_ms)
{
    struct fan f;
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cv, NULL);
    f.left = n;
    for (size_t i = 0; i < n; i++) {
        calls[i].fan = &f;
        calls[i].resp = NULL;
        rpc_channel *ch = peers_get(p, addrs[i]);
        if (!ch || rpc_invoke_async_lent(ch, method, reqs[i], resp_desc, timeout_ms,
                                         call_done, &calls[i]) != EDDY_OK) {
            calls[i].res.code = GRPC_STATUS_UNAVAILABLE;
            snprintf(calls[i].res.details, sizeof(calls[i].res.details), "cannot call %s",
                     addrs[i]);
            pthread_mutex_lock(&f.mu);
            f.left--;
            pthread_mutex_unlock(&f.mu);
        }
    }
    pthread_mutex_lock(&f.mu);
    while (f.left > 0)
        pthread_cond_wait(&f.cv, &f.mu);
    pthread_mutex_unlock(&f.mu);
    pthread_mutex_destroy(&f.mu);
    pthread_cond_destroy(&f.cv);
}
