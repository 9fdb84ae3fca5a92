/* Thread names, as `top -H`, `ps -L`, perf and gdb show them (15 characters at most). */
#ifndef EDDY_THREAD_H
#define EDDY_THREAD_H

#include <pthread.h>

/* Name the calling thread "eddy-<what>" (cut to 15 characters). */
static inline void thread_name(const char *what)
{
    char name[16] = "eddy-";
    size_t n = 5;
    while (*what && n < sizeof(name) - 1)
        name[n++] = *what++;
    name[n] = '\0';
    pthread_setname_np(pthread_self(), name);
}

#endif
