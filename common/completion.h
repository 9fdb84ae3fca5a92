/* A one-shot completion: a thread starts work that finishes on another thread (a writer
 * job, an RPC) and waits for its result. Init it, hand it to the work, call
 * completion_signal exactly once from the finishing side, completion_wait on the waiting
 * side (which also destroys it). */
#ifndef EDDY_COMPLETION_H
#define EDDY_COMPLETION_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

struct completion {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    eddy_err err;   /* what completion_signal passed */
    uint64_t value; /* a result that goes with it (e.g. a seq) */
};

void completion_init(struct completion *c);
/* The work is done with 'err' (and 'value'). Any thread. */
void completion_signal(struct completion *c, eddy_err err, uint64_t value);
/* If 'started' is EDDY_OK (the work was handed over and will signal), wait for the signal
 * and return its error; otherwise return 'started' at once. Destroys the completion either
 * way; c->value stays readable. */
eddy_err completion_wait(struct completion *c, eddy_err started);

#endif
