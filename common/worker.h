/* A named background thread that sleeps until it is kicked, a deadline passes or it is
 * told to stop: the start / wait / kick / stop-and-join sequence the node's and the
 * coordinator's background loops (checkpoints, forwarder, mover, etcd leases ...) share. */
#ifndef EDDY_WORKER_H
#define EDDY_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

struct worker;

/* The thread's body: loop on worker_wait (or worker_stopping) and return once it says
 * stop. Runs on the worker's own thread, already named. */
typedef void worker_fn(struct worker *w, void *ud);

/* Embedded in its owner. The owner's thread calls worker_start and worker_stop; any thread
 * may call worker_kick, worker_request_stop and worker_stopping; only the worker's own
 * thread calls worker_wait and worker_sleep. A zeroed struct is "not started": stopping it
 * is a no-op, and worker_stopping reports a requested stop even then. */
struct worker {
    pthread_t thread;
    pthread_mutex_t mu;   /* guards 'kicked' */
    pthread_cond_t cv;    /* CLOCK_MONOTONIC; signalled by kicks and the stop request */
    bool kicked;
    bool started;
    atomic_bool stop;
    worker_fn *fn;
    void *ud;
    char name[16];
};

/* Start the thread, named "eddy-<name>" (common/thread.h), running fn(w, ud). On error
 * nothing runs and 'w' needs no worker_stop (calling it is harmless). */
eddy_err worker_start(struct worker *w, const char *name, worker_fn *fn, void *ud);

/* Ask the thread to stop and wake it; returns at once. Any thread, any number of times;
 * lets the owner wake other things the thread may block on (a curl multi, another
 * condition variable) before worker_stop joins it. */
void worker_request_stop(struct worker *w);

/* Request a stop, join the thread and release the worker. Never from the worker's thread. */
void worker_stop(struct worker *w);

/* Whether a stop was requested (lock-free: for loops and callbacks polling it). */
bool worker_stopping(struct worker *w);

/* Wake the thread out of worker_wait, or make its next worker_wait return at once: kicks
 * are remembered (one pending kick at most), never lost. Any thread, but not concurrently
 * with worker_start or worker_stop; a kick before worker_start is dropped. */
void worker_kick(struct worker *w);

/* Wait up to 'ms' (<= 0: do not wait) for a kick or the stop request; consumes the kick.
 * Returns false once a stop was requested: the body returns then. */
bool worker_wait(struct worker *w, int64_t ms);

/* Sleep the whole 'ms' unless a stop is requested: kicks neither shorten the sleep nor
 * outlive it (the work that follows serves them). Returns false on stop. For a pause
 * before a retry that a kick must not hurry. */
bool worker_sleep(struct worker *w, int64_t ms);

#endif
