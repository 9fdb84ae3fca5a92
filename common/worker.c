/* Background threads that wait for a kick, a deadline or the stop request (see worker.h). */
#include "common/worker.h"

#include <errno.h>
#include <stdio.h>

#include "common/clock.h"
#include "common/thread.h"

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    thread_name(w->name);
    w->fn(w, w->ud);
    return NULL;
}

eddy_err worker_start(struct worker *w, const char *name, worker_fn *fn, void *ud)
{
    w->started = false;
    w->kicked = false;
    atomic_store(&w->stop, false);
    w->fn = fn;
    w->ud = ud;
    snprintf(w->name, sizeof(w->name), "%s", name);
    if (pthread_mutex_init(&w->mu, NULL) != 0)
        return EDDY_ERR_NOMEM;
    if (clock_cond_init(&w->cv) != 0) {
        pthread_mutex_destroy(&w->mu);
        return EDDY_ERR_NOMEM;
    }
    w->started = true; /* before the thread: what it starts may kick it at once */
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        w->started = false;
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        return EDDY_ERR_NOMEM;
    }
    return EDDY_OK;
}

void worker_request_stop(struct worker *w)
{
    atomic_store(&w->stop, true);
    if (!w->started)
        return;
    /* under the mutex: a thread between its check of 'stop' and its wait cannot miss it */
    pthread_mutex_lock(&w->mu);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void worker_stop(struct worker *w)
{
    worker_request_stop(w);
    if (!w->started)
        return;
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->started = false;
}

bool worker_stopping(struct worker *w)
{
    return atomic_load(&w->stop);
}

void worker_kick(struct worker *w)
{
    if (!w->started)
        return;
    pthread_mutex_lock(&w->mu);
    w->kicked = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

bool worker_wait(struct worker *w, int64_t ms)
{
    struct timespec dl = clock_mono_after(ms > 0 ? ms : 0);
    pthread_mutex_lock(&w->mu);
    while (!w->kicked && !atomic_load(&w->stop) && ms > 0) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT)
            break;
    }
    w->kicked = false;
    pthread_mutex_unlock(&w->mu);
    return !atomic_load(&w->stop);
}

bool worker_sleep(struct worker *w, int64_t ms)
{
    struct timespec dl = clock_mono_after(ms > 0 ? ms : 0);
    pthread_mutex_lock(&w->mu);
    while (!atomic_load(&w->stop) && ms > 0) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT)
            break;
    }
    w->kicked = false;
    pthread_mutex_unlock(&w->mu);
    return !atomic_load(&w->stop);
}
