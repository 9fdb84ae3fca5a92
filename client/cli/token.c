/* eddy token new: a fresh bearer secret and the token-file line that grants it (only the
 * secret's SHA-256 goes into the file; docs/security.md). Needs no server. */
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common/tokens.h"

#define SECRET_BYTES 32

int cmd_token(struct cli_ctx *ctx, int argc, char **argv)
{
    const char *tenant = "", *roles = "";
    double events = -1, calls = -1;
    const struct cli_opt opts[] = {
        {"tenant", FLAG_STRING, &tenant, "NAME", "the tenant the token acts for (required)"},
        {"roles", FLAG_STRING, &roles, "LIST",
         "comma-separated: ingest, read, admin (required)"},
        {"events-per-second", FLAG_DOUBLE, &events, "N",
         "this tenant's Ingest quota per node (default: the node's flag)"},
        {"calls-per-second", FLAG_DOUBLE, &calls, "N",
         "this tenant's call quota per node (default: the node's flag)"},
    };
    const struct cli_spec spec = {"token", "new",
                                  "Print a new bearer token (give it to the client: --token or "
                                  "EDDY_TOKEN) and the line to add to the nodes' --token-file.",
                                  opts, sizeof(opts) / sizeof(opts[0]), 1, 1};
    const char *pos[1];
    int npos;
    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    if (strcmp(pos[0], "new") != 0) {
        cli_errorf("token: unknown action \"%s\" (only: new)", pos[0]);
        return CLI_EXIT_USAGE;
    }
    unsigned char raw[SECRET_BYTES];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        cli_errorf("token: no random bytes from the system");
        return CLI_EXIT_SERVER;
    }
    static const char hex[] = "0123456789abcdef";
    char secret[5 + 2 * SECRET_BYTES + 1] = "eddy_";
    for (size_t i = 0; i < SECRET_BYTES; i++) {
        secret[5 + 2 * i] = hex[raw[i] >> 4];
        secret[6 + 2 * i] = hex[raw[i] & 15];
    }
    secret[sizeof(secret) - 1] = '\0';
    char key[TOKEN_HASH_KEY_LEN], line[1024], rates[96] = "";
    token_hash_key(secret, strlen(secret), key);
    size_t used = 0;
    if (events >= 0)
        used += (size_t)snprintf(rates, sizeof(rates), " events_per_s=%g", events);
    if (calls >= 0)
        snprintf(rates + used, sizeof(rates) - used, " calls_per_s=%g", calls);
    snprintf(line, sizeof(line), "%s tenant=%s roles=%s%s", key, tenant, roles, rates);
    /* the node's own parser says whether the line is valid */
    token_table *t = NULL;
    char why[256];
    if (token_table_parse(line, strlen(line), &t, why, sizeof(why)) != EDDY_OK) {
        cli_errorf("token: %s", strstr(why, ": ") ? strstr(why, ": ") + 2 : why);
        return CLI_EXIT_USAGE;
    }
    token_table_free(t);
    if (ctx->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "token", secret);
        cJSON_AddStringToObject(o, "line", line);
        return cli_json_print(o);
    }
    printf("token: %s\nline: %s\n", secret, line);
    return CLI_EXIT_OK;
}
