/* A small table of channels to peer nodes. */
#include "node/cluster/peers.h"

#include <pthread.h>
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

void peers_free(peers *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        rpc_channel_close(p->tab[i].ch);
        free(p->tab[i].addr);
    }
    pthread_mutex_destroy(&p->mu);
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
    struct rpc_channel_opts o = {p->max_bytes, p->max_bytes, false};
    ch = rpc_channel_open(addr, &o);
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
