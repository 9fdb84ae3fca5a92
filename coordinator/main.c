/* eddy-coordinator: flags, signal handling, start and stop order.
 *
 * Every coordinator serves ClusterStatus and health and campaigns for the leader key; the
 * one elected runs the leader loop (leader.c) that writes the partition map. Any number
 * may run: the standbys take over when the leader's lease goes. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/cluster.h"
#include "common/config.h"
#include "common/etcd.h"
#include "common/netaddr.h"
#include "common/health.h"
#include "common/reflection.h"
#include "common/log.h"
#include "common/rpc_server.h"
#include "common/security.h"
#include "common/metrics.h"
#include "common/metrics_http.h"
#include "coordinator/console_coordinator.h"
#include "coordinator/election.h"
#include "coordinator/leader.h"
#include "coordinator/status.h"

#define HEALTH_LEADER "leader"
#define HEALTH_SERVICE "eddy.cluster.v1.Coordinator"

struct coord_config {
    const char *etcd, *cluster, *id, *listen, *log_level, *metrics_listen;
    int64_t lease_ttl, partitions, settle, shutdown_grace, etcd_timeout;
    int64_t max_moves, move_timeout, load_interval;
    int64_t replication_factor, min_insync;
    bool unclean_leader_election;
    double load_imbalance, load_min_rate;
    struct security_flags sec;
};

#define F(n, t, field, help, lo, hi) {n, t, &c->field, help, lo, hi}

static size_t coord_flags(struct coord_config *c, struct flag *out)
{
    const struct flag fl[] = {
        F("etcd", FLAG_STRING, etcd, "etcd endpoints, comma-separated (http://host:port) [required]",
          0, 0),
        F("cluster", FLAG_STRING, cluster, "cluster name: keys live under /eddy/<cluster>/", 0, 0),
        F("id", FLAG_STRING, id, "this coordinator's id (default: hostname-pid)", 0, 0),
        F("listen", FLAG_STRING, listen, "gRPC address for ClusterStatus and health (port 0 picks one)",
          0, 0),
        F("metrics-listen", FLAG_STRING, metrics_listen,
          "Prometheus /metrics address (port 0 picks one; empty disables)", 0, 0),
        F("lease-ttl", FLAG_DURATION, lease_ttl,
          "TTL of the leader lease (whole seconds): a dead leader is replaced within about this",
          1000, 3600 * 1000),
        F("partitions", FLAG_INT, partitions,
          "partitions P of a NEW cluster (an existing cluster keeps its stored P)", 1, 65535),
        F("replication-factor", FLAG_INT, replication_factor,
          "copies of each partition on distinct state nodes, leader included (capped by the "
          "eligible state nodes)", 1, CLUSTER_REPLICAS_MAX),
        F("min-insync-replicas", FLAG_INT, min_insync,
          "copies that must hold a record before an Ingest is acknowledged (0 = 2 when the "
          "replication factor is 2 or more, else 1)", 0, CLUSTER_REPLICAS_MAX),
        F("unclean-leader-election", FLAG_BOOL, unclean_leader_election,
          "give a partition whose every in-sync copy is gone to another node (what only "
          "those copies held is lost) instead of keeping it offline until one returns", 0, 0),
        F("settle", FLAG_DURATION, settle,
          "wait until node changes have been quiet this long before reassigning", 0, 60000),
        F("max-moves", FLAG_INT, max_moves,
          "live partition moves in progress at once, cluster-wide", 1, 65535),
        F("move-timeout", FLAG_DURATION, move_timeout,
          "cancel a move whose target has not caught up after this (it is planned again; 0 = "
          "never)", 0, 0),
        F("load-rebalance-interval", FLAG_DURATION, load_interval,
          "move hot partitions between state nodes by their published event rates at most "
          "once per this (0 = never)", 0, 0),
        F("load-imbalance", FLAG_DOUBLE, load_imbalance,
          "rebalance when the busiest state node carries more than the mean times (1 + this)",
          0, 0),
        F("load-min-rate", FLAG_DOUBLE, load_min_rate,
          "events/s between the busiest and the quietest node below which load is ignored", 0,
          0),
        F("etcd-timeout", FLAG_DURATION, etcd_timeout, "deadline of each etcd call", 100, 60000),
        F("log-level", FLAG_STRING, log_level, "debug, info, warn or error", 0, 0),
        F("shutdown-grace", FLAG_DURATION, shutdown_grace,
          "on SIGTERM, wait this long for in-flight calls", 0, 0),
    };
    memcpy(out, fl, sizeof(fl));
    size_t n = sizeof(fl) / sizeof(fl[0]);
    return n + security_flags_list(&c->sec, NULL, out + n);
}

static void usage(FILE *out, const struct flag *fl, size_t n)
{
    fprintf(out, "eddy-coordinator %s: leader-elected partition assignment for an Eddy cluster\n\n"
                 "usage: eddy-coordinator --etcd http://HOST:PORT[,...] [--cluster NAME] [flags]\n"
                 "       eddy-coordinator --version\n\n"
                 "Every flag can also be set through its EDDY_* environment variable.\n\n",
            EDDY_VERSION);
    config_usage(out, fl, n);
}

/* "host:2379,http://h2:2379" -> "http://host:2379,http://h2:2379". Caller frees. */
static char *normalize_endpoints(const char *in)
{
    size_t n = strlen(in), cap = n * 2 + 16;
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    const char *p = in;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len) {
            bool scheme = memmem(p, len, "://", 3) != NULL;
            int w = snprintf(o, cap - (size_t)(o - out), "%s%s%.*s", o == out ? "" : ",",
                             scheme ? "" : "http://", (int)len, p);
            o += w;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    *o = '\0';
    return out;
}

/* Callbacks of the election, on its thread. */
struct coord {
    const struct coord_config *cfg;
    etcd_client *etcd;
    health *hl;
    leader *lead;
    const char *id;
    metric_gauge *is_leader;      /* eddy_coordinator_leader: 1 on the acting leader */
    metric_counter *elections;    /* eddy_coordinator_elections_total: times it became leader */
    metric_gauge *offline;        /* eddy_offline_partitions (set by the acting leader) */
    metric_gauge *under_min_insync; /* eddy_under_min_insync_partitions (likewise) */
};

static void on_elected(void *ud, etcd_session *s)
{
    struct coord *co = ud;
    struct leader_opts lo = {
        .etcd = co->etcd, .cluster = co->cfg->cluster, .id = co->id,
        .partitions = (uint32_t)co->cfg->partitions,
        .replication_factor = (uint32_t)co->cfg->replication_factor,
        .min_insync = (uint32_t)co->cfg->min_insync, .settle_ms = co->cfg->settle,
        .max_moves = co->cfg->max_moves, .move_timeout_ms = co->cfg->move_timeout,
        .load_interval_ms = co->cfg->load_interval, .load_imbalance = co->cfg->load_imbalance,
        .unclean = co->cfg->unclean_leader_election,
        .offline = co->offline, .under_min_insync = co->under_min_insync,
        .load_min_eps = co->cfg->load_min_rate,
    };
    co->lead = leader_start(&lo, s);
    if (!co->lead)
        log_error("msg=\"cannot start the leader loop\"");
    health_set(co->hl, HEALTH_LEADER, HEALTH_SERVING);
    metric_gauge_set(co->is_leader, 1);
    metric_counter_inc(co->elections);
}

static void on_demoted(void *ud)
{
    struct coord *co = ud;
    health_set(co->hl, HEALTH_LEADER, HEALTH_NOT_SERVING);
    metric_gauge_set(co->is_leader, 0);
    leader_stop(co->lead);
    co->lead = NULL;
    metric_gauge_set(co->offline, 0); /* the next leader reports them */
    metric_gauge_set(co->under_min_insync, 0);
}

static void on_connected(void *ud, bool connected)
{
    struct coord *co = ud;
    health_set(co->hl, "readiness", connected ? HEALTH_SERVING : HEALTH_NOT_SERVING);
    health_set(co->hl, HEALTH_SERVICE, connected ? HEALTH_SERVING : HEALTH_NOT_SERVING);
    log_info("msg=\"etcd session %s\" id=%s", connected ? "up" : "down", co->id);
}

int main(int argc, char **argv)
{
    struct coord_config cfg = {
        .cluster = "eddy", .listen = "127.0.0.1:7071", .metrics_listen = "127.0.0.1:9465", .log_level = "info",
        .lease_ttl = 10000, .partitions = 256, .settle = 200, .shutdown_grace = 5000,
        .max_moves = 2, .move_timeout = 600000, .load_interval = 300000,
        .replication_factor = 2, .min_insync = 0,
        .load_imbalance = 0.25, .load_min_rate = 100,
        .etcd_timeout = 2000,
        .sec = security_flags_defaults(),
    }, *c = &cfg;
    struct flag flags[48];
    size_t nflags = coord_flags(c, flags);
    int rc = config_main("eddy-coordinator", flags, nflags, argc, argv, usage, &c->log_level);
    if (rc >= 0)
        return rc;
    if (!c->etcd || !*c->etcd) {
        fprintf(stderr, "eddy-coordinator: --etcd is required (or EDDY_ETCD)\n");
        return 2;
    }
    if (!*c->cluster || strlen(c->cluster) >= CLUSTER_ID_MAX || strchr(c->cluster, '/')) {
        fprintf(stderr, "eddy-coordinator: --cluster must be 1..%d characters without '/'\n",
                CLUSTER_ID_MAX - 1);
        return 2;
    }
    if (c->min_insync == 0)
        c->min_insync = c->replication_factor >= 2 ? 2 : 1;
    if (c->min_insync > c->replication_factor) {
        fprintf(stderr, "eddy-coordinator: --min-insync-replicas (%" PRId64 ") above "
                        "--replication-factor (%" PRId64 ")\n",
                c->min_insync, c->replication_factor);
        return 2;
    }
    char default_id[CLUSTER_ID_MAX];
    if (!c->id) {
        char host[64] = "coordinator";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        snprintf(default_id, sizeof(default_id), "%s-%ld", host, (long)getpid());
        c->id = default_id;
    }
    if (!*c->id || strlen(c->id) >= CLUSTER_ID_MAX) {
        fprintf(stderr, "eddy-coordinator: --id must be 1..%d characters\n", CLUSTER_ID_MAX - 1);
        return 2;
    }
    struct tls_config tls;
    struct etcd_security esec;
    char why[512];
    if (security_configure(&c->sec, c->listen, &tls, &esec, why, sizeof(why)) != EDDY_OK) {
        fprintf(stderr, "eddy-coordinator: %s\n", why);
        return 2;
    }
    int64_t ttl_s = (c->lease_ttl + 999) / 1000;

    /* Block the stop signals before any thread exists, so every thread inherits the mask
     * and main receives them in sigwait. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    char *endpoints = normalize_endpoints(c->etcd);
    etcd_client *etcd = endpoints ? etcd_client_new_secure(endpoints, c->etcd_timeout, &esec)
                                  : NULL;
    rpc_server *srv = NULL;
    auth *gate = NULL; /* --token-file's gate of srv */
    health *hl = health_new();
    reflection *refl = NULL; /* server reflection of srv (grpcurl) */
    election *el = NULL;
    metrics *reg = metrics_new();
    metrics_http *mh = NULL;
    struct coord co = {.cfg = c, .etcd = etcd, .hl = hl, .id = c->id};
    if (!reg || metrics_add_process(reg) != EDDY_OK) {
        log_error("msg=\"cannot register metrics\"");
        goto out;
    }
    co.is_leader = metrics_gauge(reg, "eddy_coordinator_leader",
                                 "1 while this coordinator is the acting leader, else 0.");
    co.elections = metrics_counter(reg, "eddy_coordinator_elections_total",
                                   "Times this coordinator became the leader.");
    co.offline = metrics_gauge(reg, "eddy_offline_partitions",
                               "Partitions whose leader is not a live state node (0 on a "
                               "coordinator that is not the leader).");
    co.under_min_insync = metrics_gauge(
        reg, "eddy_under_min_insync_partitions",
        "Partitions with fewer live in-sync copies than min-insync: their writes are refused "
        "(0 on a coordinator that is not the leader).");
    struct status_service svc = {etcd, c->cluster, c->id};
    if (!etcd) {
        log_error("msg=\"bad --etcd\" etcd=\"%s\"", c->etcd);
        goto out;
    }
    struct rpc_server_opts so = {.listen = c->listen, .cq_threads = 1, .handler_threads = 2,
                                 .metrics = reg, .tls = &tls};
    if (security_auth_new(&c->sec, reg, &gate, why, sizeof(why)) != EDDY_OK) {
        log_error("msg=\"bad --token-file\" error=\"%s\"", why);
        goto out;
    }
    security_gate_server(gate, &so);
    srv = rpc_server_new(&so);
    if (!srv || !hl) {
        log_error("msg=\"out of memory at start\"");
        goto out;
    }
    if (!(refl = reflection_new(eddy_descriptor_set, eddy_descriptor_set_len, why,
                                sizeof(why)))) {
        log_error("msg=\"bad embedded descriptor set\" error=\"%s\"", why);
        goto out;
    }
    if (status_register(&svc, srv) != EDDY_OK || health_register(hl, srv) != EDDY_OK ||
        reflection_register(refl, srv) != EDDY_OK)
        goto out;
    health_set(hl, "", HEALTH_SERVING);
    health_set(hl, "liveness", HEALTH_SERVING);
    health_set(hl, "readiness", HEALTH_NOT_SERVING);
    health_set(hl, HEALTH_SERVICE, HEALTH_NOT_SERVING);
    health_set(hl, HEALTH_LEADER, HEALTH_NOT_SERVING);
    int port = 0;
    why[0] = '\0';
    eddy_err e = netaddr_check_bind(c->listen, "--listen", why, sizeof(why));
    if (e == EDDY_OK)
        e = rpc_server_start(srv, &port);
    if (e != EDDY_OK) {
        log_error("msg=\"cannot listen\" listen=%s error=\"%s\"", c->listen,
                  why[0] ? why : eddy_strerror(e));
        goto out;
    }
    int metrics_port = 0;
    struct console_coordinator console = {&svc, EDDY_VERSION, clock_wall_ms()};
    struct metrics_http_opts mo = {
        .reg = reg, .listen = c->metrics_listen, .api = console_coordinator_endpoints,
        .napi = console_coordinator_nendpoints, .api_ud = &console,
        .chart_families = console_coordinator_chart_families,
        .nchart_families = console_coordinator_nchart_families,
    };
    if (c->metrics_listen[0] &&
        ((e = netaddr_check_bind(c->metrics_listen, "--metrics-listen", why, sizeof(why))) !=
             EDDY_OK ||
         (e = metrics_http_open(&mo, &mh, &metrics_port)) != EDDY_OK)) {
        log_error("msg=\"cannot serve metrics\" metrics_listen=%s error=\"%s\"",
                  c->metrics_listen, why[0] ? why : eddy_strerror(e));
        goto out;
    }
    char leader_key[CLUSTER_KEY_MAX];
    cluster_key(leader_key, sizeof(leader_key), c->cluster, "leader");
    struct election_opts eo = {
        .etcd = etcd, .key = leader_key, .id = c->id, .ttl_s = ttl_s,
        .on_elected = on_elected, .on_demoted = on_demoted, .on_connected = on_connected,
        .ud = &co,
    };
    el = election_new(&eo);
    if (!el) {
        log_error("msg=\"cannot start the election\"");
        goto out;
    }
    log_info("msg=\"eddy-coordinator ready\" id=%s cluster=%s etcd=%s listen=%s port=%d "
             "lease_ttl_s=%" PRId64 " settle_ms=%" PRId64 " replication_factor=%" PRId64
             " min_insync=%" PRId64,
             c->id, c->cluster, endpoints, c->listen, port, ttl_s, c->settle,
             c->replication_factor, c->min_insync);
    printf("listening on %d\n", port); /* a line for scripts: the bound port (useful with :0) */
    if (mh)
        printf("metrics on %d\n", metrics_port);
    fflush(stdout);

    int sig = 0;
    sigwait(&stop, &sig);
    log_info("msg=\"shutting down\" signal=%d id=%s", sig, c->id);
    health_set_all(hl, HEALTH_NOT_SERVING);
    /* Stops the leader loop and its watches, then revokes the lease: the leader key goes
     * now and a standby takes over without waiting for the TTL. */
    election_free(el);
    el = NULL;
    health_shutdown(hl);
    rpc_server_shutdown(srv, c->shutdown_grace);
    status = 0;
out:
    election_free(el);
    rpc_server_free(srv);
    auth_free(gate); /* after the server it gates */
    metrics_http_close(mh); /* before the etcd client its console reads */
    health_free(hl);
    reflection_free(refl); /* after the server */
    metrics_free(reg);
    etcd_client_free(etcd);
    free(endpoints);
    if (status == 0)
        log_info("msg=\"stopped cleanly\"");
    return status;
}
