/* Test support: a throwaway single-member etcd on free loopback ports in a temporary
 * directory (fast raft timings), for the tests that need a real one. Every etcd started is
 * killed and its directory removed at exit, whatever happens. Plus the small helpers such
 * tests share (a free port, a monotonic clock, removing a directory tree). */
#ifndef EDDY_TEST_ETCD_PROC_H
#define EDDY_TEST_ETCD_PROC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct etcd_proc {
    pid_t pid;
    int cport, cport2, pport;
    bool only_second; /* listen on cport2 only: invisible to clients of 'url' */
    char dir[256];
    char url[64];  /* cport */
    char url2[64]; /* cport2: a second client URL of the same member */
};

/* Start one (healthy within 10 s) or NULL. Free with etcd_proc_free. */
struct etcd_proc *etcd_proc_new(void);
/* Start e again on its ports and directory (same data, same URLs); false if it did not
 * become healthy. */
bool etcd_proc_run(struct etcd_proc *e);
/* kill -9 and reap. */
void etcd_proc_kill(struct etcd_proc *e);
/* Kill, remove the directory, free. Accepts NULL. */
void etcd_proc_free(struct etcd_proc *e);

int64_t now_ms(void);
void sleep_ms(int64_t ms);
/* A port nobody listens on right now (the kernel's choice for port 0); -1 on error. */
int free_port(void);
/* Remove 'dir' and everything under it. */
void rm_tree(const char *dir);

#endif
