/* A throwaway etcd for tests (see etcd_proc.h). */
#include "tests/support/etcd_proc.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;


#define MAX_PROCS 8
static struct etcd_proc *procs[MAX_PROCS]; /* killed and removed at exit, whatever happens */

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* A port nobody listens on right now (the kernel's choice for port 0). */
int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static size_t sink(char *d, size_t sz, size_t nm, void *u)
{
    size_t n = sz * nm;
    char *buf = u;
    size_t have = strlen(buf);
    size_t take = n < 255 - have ? n : 255 - have;
    memcpy(buf + have, d, take);
    buf[have + take] = '\0';
    return n;
}

static bool healthy(const char *url)
{
    char body[256] = "", u[128];
    snprintf(u, sizeof(u), "%s/health", url);
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, u);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 500L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    return rc == CURLE_OK && strstr(body, "\"health\":\"true\"") != NULL;
}

/* Start etcd on e's ports and directory (set on the first start, reused on a restart:
 * same data, same URLs) and wait, with a deadline, until /health says true. */
bool etcd_proc_run(struct etcd_proc *e)
{
    char data[300], log[300], cu[140], pu[64], cluster[96];
    snprintf(data, sizeof(data), "%s/data", e->dir);
    snprintf(log, sizeof(log), "%s/etcd.log", e->dir);
    if (e->only_second)
        snprintf(cu, sizeof(cu), "%s", e->url2);
    else
        snprintf(cu, sizeof(cu), "%s,%s", e->url, e->url2);
    snprintf(pu, sizeof(pu), "http://127.0.0.1:%d", e->pport);
    snprintf(cluster, sizeof(cluster), "n1=%s", pu);
    char *argv[] = {"etcd", "--name", "n1", "--data-dir", data, "--listen-client-urls", cu,
                    "--advertise-client-urls", cu, "--listen-peer-urls", pu,
                    "--initial-advertise-peer-urls", pu, "--initial-cluster", cluster,
                    "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "error",
                    "--heartbeat-interval", "10", "--election-timeout", "50", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    int rc = posix_spawnp(&e->pid, "etcd", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        e->pid = 0;
        return false;
    }
    int64_t deadline = now_ms() + 10000;
    while (now_ms() < deadline) {
        if (healthy(e->url2))
            return true;
        if (waitpid(e->pid, NULL, WNOHANG) == e->pid) { /* died: a port was taken? */
            e->pid = 0;
            return false;
        }
        sleep_ms(10);
    }
    return false;
}

void etcd_proc_kill(struct etcd_proc *e)
{
    if (e->pid > 0) {
        kill(e->pid, SIGKILL);
        waitpid(e->pid, NULL, 0);
        e->pid = 0;
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void etcd_proc_free(struct etcd_proc *e)
{
    if (!e)
        return;
    etcd_proc_kill(e);
    if (e->dir[0])
        rm_tree(e->dir);
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i] == e)
            procs[i] = NULL;
    free(e);
}

static void kill_all_at_exit(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        etcd_proc_free(procs[i]);
}

struct etcd_proc *etcd_proc_new(void)
{
    static bool registered;
    if (!registered) {
        registered = true;
        atexit(kill_all_at_exit);
    }
    struct etcd_proc *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    for (int i = 0; i < MAX_PROCS; i++) {
        if (!procs[i]) {
            procs[i] = e;
            break;
        }
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(e->dir, sizeof(e->dir), "%s/eddy-etcd-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(e->dir)) {
        e->dir[0] = '\0';
        etcd_proc_free(e);
        return NULL;
    }
    for (int attempt = 0; attempt < 3; attempt++) { /* a port may be taken meanwhile */
        e->cport = free_port();
        e->cport2 = free_port();
        e->pport = free_port();
        snprintf(e->url, sizeof(e->url), "http://127.0.0.1:%d", e->cport);
        snprintf(e->url2, sizeof(e->url2), "http://127.0.0.1:%d", e->cport2);
        if (e->cport > 0 && e->cport2 > 0 && e->pport > 0 && e->cport != e->pport &&
            e->cport2 != e->pport && e->cport != e->cport2 && etcd_proc_run(e))
            return e;
        etcd_proc_kill(e);
    }
    etcd_proc_free(e);
    return NULL;
}
