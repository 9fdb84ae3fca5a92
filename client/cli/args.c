/* Subcommand flag parsing, the lazily created client and error reporting for `eddy`. */
#include <stdarg.h>
#include <string.h>

#include "cli.h"

void cli_errorf(const char *fmt, ...)
{
    va_list ap;

    fputs("eddy: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_exit_code(eddy_status code)
{
    switch (code) {
    case EDDY_STATUS_OK:
        return CLI_EXIT_OK;
    case EDDY_STATUS_UNAVAILABLE:
    case EDDY_STATUS_DEADLINE_EXCEEDED:
        return CLI_EXIT_CONNECT;
    default:
        return CLI_EXIT_SERVER;
    }
}

int cli_fail(const struct cli_ctx *ctx, const eddy_error *err)
{
    int rc = cli_exit_code(err->code);
    const char *msg = err->message[0] ? err->message : "(no message)";

    if (rc == CLI_EXIT_CONNECT)
        cli_errorf("%s: %s (endpoint %s)", eddy_status_name(err->code), msg, ctx->endpoint);
    else
        cli_errorf("%s: %s", eddy_status_name(err->code), msg);
    return rc;
}

/* Whether a string flag is set (NULL or "" is not: a ctx may come without the TLS flags). */
static bool set(const char *s)
{
    return s && *s;
}

eddy_client *cli_client(struct cli_ctx *ctx)
{
    if (ctx->client)
        return ctx->client;
    eddy_options *o = eddy_options_new();
    if (!o) {
        cli_errorf("out of memory");
        return NULL;
    }
    eddy_options_set_timeout_ms(o, ctx->timeout_ms);
    if (set(ctx->tls_ca) && (!eddy_options_set_tls(o, ctx->tls_ca, ctx->tls_cert, ctx->tls_key) ||
                           !eddy_options_set_tls_server_name(o, ctx->tls_server_name))) {
        cli_errorf("out of memory");
        eddy_options_free(o);
        return NULL;
    }
    if (set(ctx->token) && !eddy_options_set_token(o, ctx->token)) {
        cli_errorf("out of memory");
        eddy_options_free(o);
        return NULL;
    }
    ctx->client = eddy_client_new(ctx->endpoint, o);
    eddy_options_free(o);
    if (!ctx->client)
        cli_errorf("cannot create a client for endpoint \"%s\"", ctx->endpoint);
    return ctx->client;
}

const struct tls_config *cli_tls(struct cli_ctx *ctx)
{
    ctx->tls = (struct tls_config){.ca = ctx->tls_ca, .cert = ctx->tls_cert,
                                   .key = ctx->tls_key, .server_name = ctx->tls_server_name};
    return &ctx->tls;
}

int cli_check_tls(const struct cli_ctx *ctx)
{
    if (set(ctx->tls_cert) != set(ctx->tls_key)) {
        cli_errorf("--tls-cert and --tls-key go together");
        return -1;
    }
    if ((set(ctx->tls_cert) || set(ctx->tls_server_name)) && !set(ctx->tls_ca)) {
        cli_errorf("--tls-cert and --tls-server-name need --tls-ca (TLS is on only with a CA)");
        return -1;
    }
    return 0;
}

int cli_set_output(struct cli_ctx *ctx)
{
    if (strcmp(ctx->output, "table") == 0) {
        ctx->json = false;
    } else if (strcmp(ctx->output, "json") == 0) {
        ctx->json = true;
    } else {
        cli_errorf("--output must be table or json, not \"%s\"", ctx->output);
        return CLI_EXIT_USAGE;
    }
    if (!ctx->endpoint[0]) {
        cli_errorf("--endpoint must not be empty");
        return CLI_EXIT_USAGE;
    }
    return 0;
}

void cli_help(FILE *out, const struct cli_spec *spec)
{
    char left[64];

    fprintf(out, "usage: eddy [global flags] %s%s%s%s\n\n%s\n", spec->name,
            spec->args[0] ? " " : "", spec->args, spec->nopts ? " [flags]" : "",
            spec->summary);
    if (spec->nopts)
        fputs("\nflags:\n", out);
    for (size_t i = 0; i < spec->nopts; i++) {
        const struct cli_opt *o = &spec->opts[i];
        snprintf(left, sizeof(left), "--%s%s%s", o->name, o->arg ? " " : "",
                 o->arg ? o->arg : "");
        fprintf(out, "  %-24s %s\n", left, o->help);
    }
    fputs("\nglobal flags (also accepted here): --endpoint HOST:PORT, --coordinator HOST:PORT,"
          " -o/--output table|json, --timeout DURATION, --tls-ca FILE, --tls-cert FILE,"
          " --tls-key FILE, --tls-server-name NAME, --token TOKEN\n",
          out);
}

static const struct cli_opt *find_opt(const struct cli_opt *opts, size_t n, const char *name,
                                      size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    }
    return NULL;
}

int cli_parse(struct cli_ctx *ctx, const struct cli_spec *spec, int argc, char **argv,
              const char **pos, int *npos)
{
    const struct cli_opt global[] = {
        {"endpoint", FLAG_STRING, &ctx->endpoint, "HOST:PORT", ""},
        {"coordinator", FLAG_STRING, &ctx->coordinator, "HOST:PORT", ""},
        {"output", FLAG_STRING, &ctx->output, "FORMAT", ""},
        {"timeout", FLAG_DURATION, &ctx->timeout_ms, "DURATION", ""},
        {"tls-ca", FLAG_STRING, &ctx->tls_ca, "FILE", ""},
        {"tls-cert", FLAG_STRING, &ctx->tls_cert, "FILE", ""},
        {"tls-key", FLAG_STRING, &ctx->tls_key, "FILE", ""},
        {"tls-server-name", FLAG_STRING, &ctx->tls_server_name, "NAME", ""},
        {"token", FLAG_STRING, &ctx->token, "TOKEN", ""},
    };
    bool flags_done = false;

    *npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (flags_done || a[0] != '-' || strcmp(a, "-") == 0) {
            if (*npos >= spec->max_pos) {
                cli_errorf("%s: unexpected argument \"%s\" (see eddy %s --help)", spec->name,
                           a, spec->name);
                return CLI_EXIT_USAGE;
            }
            pos[(*npos)++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_help(stdout, spec);
            return CLI_EXIT_OK;
        }
        const char *name = a[1] == '-' ? a + 2 : a + 1;
        if (strcmp(a, "-o") == 0)
            name = "output";
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct cli_opt *o = a[1] == '-' || strcmp(a, "-o") == 0
                                      ? find_opt(spec->opts, spec->nopts, name, len)
                                      : NULL;
        if (!o && (a[1] == '-' || strcmp(a, "-o") == 0))
            o = find_opt(global, sizeof(global) / sizeof(global[0]), name, len);
        if (!o) {
            cli_errorf("%s: unknown flag %s (see eddy %s --help)", spec->name, a, spec->name);
            return CLI_EXIT_USAGE;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (o->type == FLAG_BOOL) {
                value = "true";
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                cli_errorf("%s: flag --%s needs a value", spec->name, o->name);
                return CLI_EXIT_USAGE;
            }
        }
        if (config_parse_value(o->type, value, o->ptr) != 0 ||
            ((o->type == FLAG_INT || o->type == FLAG_DURATION) && *(int64_t *)o->ptr < 0)) {
            cli_errorf("%s: invalid value \"%s\" for --%s", spec->name, value, o->name);
            return CLI_EXIT_USAGE;
        }
    }
    if (*npos < spec->min_pos) {
        cli_errorf("%s: missing %s (usage: eddy %s %s)", spec->name, spec->args, spec->name,
                   spec->args);
        return CLI_EXIT_USAGE;
    }
    if (cli_set_output(ctx) != 0 || cli_check_tls(ctx) != 0)
        return CLI_EXIT_USAGE;
    if (ctx->timeout_ms <= 0) {
        cli_errorf("--timeout must be positive");
        return CLI_EXIT_USAGE;
    }
    return CLI_CONTINUE;
}

int cli_take_repeated(const char *cmd, const char *name, int argc, char **argv, char **rest,
                      const char **vals, size_t max, size_t *nvals)
{
    size_t len = strlen(name);
    int n = 0;
    *nvals = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "--") == 0) { /* the rest are arguments, not flags */
            while (i < argc)
                rest[n++] = argv[i++];
            break;
        }
        if (strncmp(a, "--", 2) != 0 || strncmp(a + 2, name, len) != 0 ||
            (a[2 + len] != '\0' && a[2 + len] != '=')) {
            rest[n++] = argv[i];
            continue;
        }
        if (a[2 + len] == '=') {
            v = a + 3 + len;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            cli_errorf("%s: flag --%s needs a value", cmd, name);
            return -1;
        }
        if (*nvals >= max) {
            cli_errorf("%s: at most %zu --%s", cmd, max, name);
            return -1;
        }
        vals[(*nvals)++] = v;
    }
    return n;
}
