/* eddy: the command-line client of an Eddy node. Parses the global flags, then hands the
 * rest of the command line to one subcommand (one file each in this directory). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/version.h"

static const struct {
    const char *name;
    int (*run)(struct cli_ctx *ctx, int argc, char **argv);
    const char *summary;
} commands[] = {
    {"ingest", cmd_ingest, "send events from a JSON-lines file (or stdin)"},
    {"recommend", cmd_recommend, "recommended products for a user"},
    {"profile", cmd_profile, "what Eddy knows about a user"},
    {"top", cmd_top, "top products over event-time windows"},
    {"counts", cmd_counts, "event counts per window, overall or for one user"},
    {"delete-user", cmd_delete_user, "remove everything stored about a user"},
    {"health", cmd_health, "is the node serving? (exit 0 only if SERVING)"},
    {"status", cmd_status, "the cluster: nodes, leader, partition map, moves (asks --coordinator)"},
    {"drain", cmd_drain, "move every partition off a state node (scale in; asks --coordinator)"},
    {"roi", cmd_roi, "what a latency improvement is worth: monthly benefit, payback period"},
    {"token", cmd_token, "new: a bearer token and its line for the nodes' --token-file"},
    {"experiments", cmd_experiments, "A/B tests on Recommend: create, update, list, show, stop"},
    {"reprocess", cmd_reprocess, "rebuild state from the log (e.g. with a new half-life), swap atomically"},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out, const struct flag *flags, size_t nflags)
{
    fputs("usage: eddy [global flags] COMMAND [args] [flags]\n"
          "       eddy --version\n\ncommands:\n", out);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fputs("  help CMD     help on one command (also: eddy CMD --help)\n"
          "\nglobal flags (-o is short for --output; DURATION: 500ms, 10s, 1m; plain = ms):\n",
          out);
    config_usage(out, flags, nflags);
    fputs("\nexit codes:\n"
          "  0  success\n"
          "  1  the server answered with an error (\"eddy: NOT_FOUND: ...\" on stderr),\n"
          "     or `eddy health` found the service not SERVING\n"
          "  2  usage error (bad command line, unreadable input file)\n"
          "  3  could not connect, UNAVAILABLE, or deadline exceeded\n"
          "  4  ingest finished but some events were rejected\n"
          "\nResults go to stdout, errors to stderr. See docs/cli.md.\n",
          out);
}

static int find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct cli_ctx ctx = {
        .endpoint = "127.0.0.1:7070",
        .coordinator = "127.0.0.1:7071",
        .output = "table",
        .timeout_ms = 10000,
        .tls_ca = "", .tls_cert = "", .tls_key = "", .tls_server_name = "",
        .token = "",
    };
    const struct flag flags[] = {
        {"endpoint", FLAG_STRING, &ctx.endpoint, "HOST:PORT of an Eddy node", 0, 0},
        {"coordinator", FLAG_STRING, &ctx.coordinator,
         "HOST:PORT of an eddy-coordinator (for eddy status and eddy drain)", 0, 0},
        {"output", FLAG_STRING, &ctx.output, "table | json", 0, 0},
        {"timeout", FLAG_DURATION, &ctx.timeout_ms, "deadline of each call", 1, INT64_MAX},
        {"tls-ca", FLAG_STRING, &ctx.tls_ca,
         "PEM CA of the servers' certificates: TLS on (plaintext without it)", 0, 0},
        {"tls-cert", FLAG_STRING, &ctx.tls_cert,
         "PEM client certificate, for servers that request or require one", 0, 0},
        {"tls-key", FLAG_STRING, &ctx.tls_key, "PEM private key of --tls-cert", 0, 0},
        {"tls-server-name", FLAG_STRING, &ctx.tls_server_name,
         "name checked in the server's certificate (default: the endpoint's host)", 0, 0},
        {"token", FLAG_STRING, &ctx.token,
         "bearer token sent with every call (servers with --token-file; see eddy token new)",
         0, 0},
    };
    const size_t nflags = sizeof(flags) / sizeof(flags[0]);
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    char err[256];
    int first = 0;
    int rc;

    if (!args) {
        cli_errorf("out of memory");
        return CLI_EXIT_SERVER;
    }
    /* config_parse knows only --long flags: spell -o as --output (subcommands accept
     * --output too). After "--" everything is an argument. */
    bool literal = false;
    for (int i = 0; i < argc; i++) {
        args[i] = argv[i];
        if (!literal && strcmp(argv[i], "-o") == 0)
            args[i] = (char *)"--output";
        literal = literal || strcmp(argv[i], "--") == 0;
    }

    rc = config_parse(flags, nflags, argc, args, &first, err, sizeof(err));
    if (rc == CONFIG_HELP) {
        usage(stdout, flags, nflags);
        rc = CLI_EXIT_OK;
        goto out;
    }
    if (rc == CONFIG_VERSION) {
        printf("eddy %s\n", eddy_version());
        rc = CLI_EXIT_OK;
        goto out;
    }
    if (rc != 0) {
        cli_errorf("%s", err);
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    rc = CLI_EXIT_USAGE;
    if (cli_set_output(&ctx) != 0 || cli_check_tls(&ctx) != 0)
        goto out;
    if (first >= argc) {
        usage(stderr, flags, nflags);
        goto out;
    }

    const char *name = argv[first];
    bool help = strcmp(name, "help") == 0;
    if (help && first + 1 >= argc) {
        usage(stdout, flags, nflags);
        rc = CLI_EXIT_OK;
        goto out;
    }
    if (help)
        name = argv[first + 1];
    int c = find_command(name);
    if (c < 0) {
        cli_errorf("unknown command \"%s\" (see eddy --help)", name);
        goto out;
    }
    if (help) {
        char *help_argv[] = {argv[first + 1], (char *)"--help", NULL};
        rc = commands[c].run(&ctx, 2, help_argv);
    } else {
        rc = commands[c].run(&ctx, argc - first, args + first);
    }
out:
    eddy_client_free(ctx.client);
    free(args);
    return rc;
}
