/* The coordinator's console endpoints (see console_coordinator.h). */
#include "coordinator/console_coordinator.h"

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdio.h>

#include "common/pbjson.h"

static unsigned api_overview(void *ud, const metrics_http_req *rq, cJSON **out, char *msg,
                             size_t msglen)
{
    const struct console_coordinator *c = ud;
    struct status_reply r;
    eddy_err err = status_read(c->status, &r, msg, msglen);
    if (err != EDDY_OK)
        return err == EDDY_ERR_UNAVAILABLE ? MHD_HTTP_SERVICE_UNAVAILABLE
                                           : MHD_HTTP_INTERNAL_SERVER_ERROR;
    cJSON *status = pbjson_from(&r.msg.base);
    status_release(&r);
    struct metrics_http_process p = {"coordinator", "cluster", c->status->id, "coordinator",
                                     c->version, c->started_ms};
    cJSON *o = metrics_http_overview(&p, status);
    if (!o) {
        snprintf(msg, msglen, "out of memory");
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    *out = o;
    return MHD_HTTP_OK;
}

const struct metrics_http_endpoint console_coordinator_endpoints[] = {
    {"overview", NULL, api_overview},
};
const size_t console_coordinator_nendpoints =
    sizeof(console_coordinator_endpoints) / sizeof(console_coordinator_endpoints[0]);

const char *const console_coordinator_chart_families[] = {
    "eddy_coordinator_leader", "eddy_offline_partitions", "eddy_under_min_insync_partitions",
    "process_resident_memory_bytes", "process_cpu_seconds_total",
};
const size_t console_coordinator_nchart_families =
    sizeof(console_coordinator_chart_families) / sizeof(console_coordinator_chart_families[0]);
