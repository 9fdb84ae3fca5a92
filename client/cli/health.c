/* eddy health: grpc.health.v1 Check of the node (or one of its services). */
#include "cli.h"

static const char *serving_name(Grpc__Health__V1__HealthCheckResponse__ServingStatus s)
{
    switch (s) {
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING:
        return "SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING:
        return "NOT_SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
        return "SERVICE_UNKNOWN";
    default:
        return "UNKNOWN";
    }
}

int cmd_health(struct cli_ctx *ctx, int argc, char **argv)
{
    const char *service = "";
    const struct cli_opt opts[] = {
        {"service", FLAG_STRING, &service, "NAME",
         "service to check: \"\" (whole process, default), liveness, readiness, eddy.v1.Eddy"},
    };
    const struct cli_spec spec = {"health", "", "Ask the node whether it is serving. Prints "
                                  "SERVING or NOT_SERVING; exits 0 only if SERVING.",
                                  opts, 1, 0, 0};
    const char *pos[1];
    int npos;
    eddy_error err;
    Grpc__Health__V1__HealthCheckResponse__ServingStatus st;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    eddy_client *c = cli_client(ctx);
    if (!c)
        return CLI_EXIT_CONNECT;
    if (eddy_health_check(c, service, &st, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    rc = st == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
             ? CLI_EXIT_OK
             : CLI_EXIT_SERVER;
    if (ctx->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "service", service);
        cJSON_AddStringToObject(o, "status", serving_name(st));
        int prc = cli_json_print(o);
        return prc != CLI_EXIT_OK ? prc : rc;
    }
    puts(serving_name(st));
    return rc;
}
