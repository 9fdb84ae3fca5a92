/* eddy delete-user: the right to be forgotten (Eddy.DeleteUser). */
#include <inttypes.h>

#include "cli.h"

int cmd_delete_user(struct cli_ctx *ctx, int argc, char **argv)
{
    const struct cli_spec spec = {"delete-user", "USER",
                                  "Remove the user's model, windows and log entries. Product "
                                  "aggregates the user contributed to are anonymous and stay.",
                                  NULL, 0, 1, 1};
    const char *pos[1];
    int npos;
    eddy_error err;
    Eddy__V1__DeleteUserResponse *resp = NULL;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    eddy_client *c = cli_client(ctx);
    if (!c)
        return CLI_EXIT_CONNECT;
    if (eddy_delete_user(c, pos[0], &resp, &err) != EDDY_STATUS_OK)
        return cli_fail(ctx, &err);
    if (ctx->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "user_id", pos[0]);
        cJSON_AddBoolToObject(o, "model_deleted", resp->model_deleted);
        cJSON_AddNumberToObject(o, "windows_deleted", (double)resp->windows_deleted);
        cJSON_AddNumberToObject(o, "log_entries_deleted", (double)resp->log_entries_deleted);
        rc = cli_json_print(o);
    } else {
        printf("deleted user %s: model %s, %" PRIu64 " windows, %" PRIu64 " log entries\n",
               pos[0], resp->model_deleted ? "removed" : "not found", resp->windows_deleted,
               resp->log_entries_deleted);
        rc = CLI_EXIT_OK;
    }
    eddy_response_free(resp);
    return rc;
}
