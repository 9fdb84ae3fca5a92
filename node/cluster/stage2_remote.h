/* The cluster's stage2cache_source: popular products per category gathered from every state
 * node (CategoryTop, merged best first), and a product's neighbours from the owner of its
 * partition (Neighbours). Recommend on a user's owner reads stage 2 through this, behind
 * the stage2cache's --stage2-staleness caches. */
#ifndef EDDY_STAGE2_REMOTE_H
#define EDDY_STAGE2_REMOTE_H

#include "node/cluster/membership.h"
#include "node/cluster/peers.h"
#include "node/state/stage2cache.h"

struct stage2_remote {
    membership *mem;        /* borrowed */
    peers *peers;           /* borrowed */
    int64_t timeout_ms;
    struct stage2cache_source source; /* filled by stage2_remote_init */
};

void stage2_remote_init(struct stage2_remote *r, membership *mem, peers *pe,
                        int64_t timeout_ms);

#endif
