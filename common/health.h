/* grpc.health.v1.Health: Check and Watch over a table of service names and their status.
 * The process registers "", "liveness", "readiness" and its public services; Watch
 * streams the current status, then every change, until the client goes away. */
#ifndef EDDY_HEALTH_H
#define EDDY_HEALTH_H

#include <stddef.h>

#include "common/err.h"
#include "common/rpc_server.h"

typedef struct health health;

enum health_status {
    HEALTH_UNKNOWN = 0,
    HEALTH_SERVING = 1,
    HEALTH_NOT_SERVING = 2,
};

/* Caller owns the result; free with health_free (after the server is shut down). */
health *health_new(void);
void health_free(health *h);

/* Register /grpc.health.v1.Health/Check and /Watch on 's' (before rpc_server_start). */
eddy_err health_register(health *h, rpc_server *s);

/* Set the status of 'service' (adding it if new) and notify its watchers. Thread-safe. */
void health_set(health *h, const char *service, enum health_status st);

/* Set every known service to 'st' (used on shutdown: NOT_SERVING). */
void health_set_all(health *h, enum health_status st);

/* The status of 'service', HEALTH_UNKNOWN if it is not registered. */
enum health_status health_get(health *h, const char *service);

/* End all Watch streams (status OK) before the server shuts down. */
void health_shutdown(health *h);

/* Number of open Watch streams (for metrics and tests). */
size_t health_watchers(health *h);

#endif
