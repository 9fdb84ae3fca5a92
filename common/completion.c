/* One-shot completions (see completion.h). */
#include "common/completion.h"

#include "common/clock.h"

void completion_init(struct completion *c)
{
    pthread_mutex_init(&c->mu, NULL);
    clock_cond_init(&c->cv);
    c->done = false;
    c->err = EDDY_OK;
    c->value = 0;
}

void completion_signal(struct completion *c, eddy_err err, uint64_t value)
{
    pthread_mutex_lock(&c->mu);
    c->err = err;
    c->value = value;
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

eddy_err completion_wait(struct completion *c, eddy_err started)
{
    if (started == EDDY_OK) {
        pthread_mutex_lock(&c->mu);
        while (!c->done)
            pthread_cond_wait(&c->cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
        started = c->err;
    }
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    return started;
}
