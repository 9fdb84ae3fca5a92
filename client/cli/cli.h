/* Shared pieces of the `eddy` command-line tool: the context every subcommand gets, flag
 * parsing for subcommands, exit codes, and the output helpers (tables, JSON, times). */
#ifndef EDDY_CLI_H
#define EDDY_CLI_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/config.h"
#include "common/tls.h"
#include "eddy/client.h"

/* Exit codes, documented in `eddy --help` and docs/cli.md. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_SERVER = 1,   /* the server answered with an error */
    CLI_EXIT_USAGE = 2,    /* bad command line or unreadable input file */
    CLI_EXIT_CONNECT = 3,  /* could not connect, UNAVAILABLE, or deadline exceeded */
    CLI_EXIT_REJECTED = 4, /* ingest finished but some events were rejected */
};

/* Global settings, then the client made from them on first use. One per process; only the
 * main thread touches it. */
struct cli_ctx {
    const char *endpoint;
    const char *coordinator; /* HOST:PORT of an eddy-coordinator (eddy status) */
    const char *output; /* "table" or "json" */
    int64_t timeout_ms;
    const char *tls_ca, *tls_cert, *tls_key, *tls_server_name; /* "" = unset */
    struct tls_config tls; /* from the four above: see cli_tls */
    const char *token;     /* --token / EDDY_TOKEN: bearer token of every call ("" = none) */
    bool json;
    eddy_client *client;
};

/* The TLS settings of the global flags (plaintext unless --tls-ca is set), for channels a
 * subcommand opens itself; borrowed from ctx. */
const struct tls_config *cli_tls(struct cli_ctx *ctx);

/* Check the TLS flags (a certificate needs its key, and TLS needs --tls-ca): 0, or -1
 * after a message on stderr. */
int cli_check_tls(const struct cli_ctx *ctx);

/* The client for ctx->endpoint, created on first use; NULL (after a message on stderr) if
 * it cannot be created. Owned by ctx; freed by main. */
eddy_client *cli_client(struct cli_ctx *ctx);

/* Print "eddy: CODE: message" on stderr and return the exit code for 'err'. */
int cli_fail(const struct cli_ctx *ctx, const eddy_error *err);

/* The exit code for a call that ended with 'code'. */
int cli_exit_code(eddy_status code);

/* Print "eddy: <message>" on stderr. */
void cli_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- subcommand flags ------------------------------------------------------------------ */

/* One flag of a subcommand; parsed with config_parse_value. Subcommand flags have no
 * environment variables (EDDY_USER etc. would be surprising). */
struct cli_opt {
    const char *name; /* without dashes */
    enum flag_type type;
    void *ptr;
    const char *arg;  /* value placeholder in help ("N"), NULL for FLAG_BOOL */
    const char *help;
};

/* A subcommand's command line: positional arguments and flags in any order, "--" ends
 * flags. The global flags (--endpoint, -o/--output, --timeout) are accepted here too. */
struct cli_spec {
    const char *name;     /* "recommend" */
    const char *args;     /* positional synopsis, "USER" */
    const char *summary;  /* one line */
    const struct cli_opt *opts;
    size_t nopts;
    int min_pos, max_pos;
};

/* Parse argv[1..argc) (argv[0] is the subcommand name). Positional arguments are stored
 * in pos[] (borrowed from argv), their number in *npos. Returns CLI_CONTINUE to go on, or
 * an exit code to return at once: CLI_EXIT_OK after printing help for --help,
 * CLI_EXIT_USAGE after a message on stderr. */
#define CLI_CONTINUE (-1)
int cli_parse(struct cli_ctx *ctx, const struct cli_spec *spec, int argc, char **argv,
              const char **pos, int *npos);

/* A flag that may be given several times ("--set A=1 --set B=2"; cli_parse keeps one
 * value per flag): take every "--NAME VALUE" and "--NAME=VALUE" out of argv[0..argc)
 * before cli_parse. The values (borrowed from argv) go to vals[] (room for 'max'), their
 * number to *nvals; 'rest' gets the other arguments in order (argv[0] first, everything
 * after "--" as it is). Returns the number of those, or -1 after a message (a value
 * missing, more than 'max'). */
int cli_take_repeated(const char *cmd, const char *name, int argc, char **argv, char **rest,
                      const char **vals, size_t max, size_t *nvals);

/* Print the subcommand's usage and flags. */
void cli_help(FILE *out, const struct cli_spec *spec);

/* Validate ctx->output (setting ctx->json) and ctx->endpoint; CLI_EXIT_USAGE (after a
 * message) if either is invalid. */
int cli_set_output(struct cli_ctx *ctx);

/* ---- output ---------------------------------------------------------------------------- */

/* "2024-05-01T12:00:00.123Z" (UTC) for 'ms' since the epoch into buf; "-" for 0. */
void cli_format_time(int64_t ms, char *buf, size_t len);

/* An aligned text table. Header names starting with '>' are right-aligned columns (the
 * '>' is not printed). Cells are copied. Bounded to CLI_TABLE_MAX_ROWS rows; more are
 * counted and reported as "... N more rows". */
#define CLI_TABLE_MAX_ROWS 100000
struct cli_table;

/* Caller owns the result; free with cli_table_free. NULL on allocation failure. */
struct cli_table *cli_table_new(size_t ncols, const char *const *header);
void cli_table_free(struct cli_table *t);

/* Append the next cell (row by row, left to right). Returns 0, or -1 out of memory. */
int cli_table_cell(struct cli_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Print the header and rows with 'indent' spaces before each line. */
void cli_table_print(const struct cli_table *t, FILE *out, int indent);

/* Print 'root' formatted to stdout and delete it (accepts NULL: out of memory). Returns
 * CLI_EXIT_OK, or CLI_EXIT_SERVER after a message if it could not be printed. */
int cli_json_print(cJSON *root);

/* JSON object of a TypeCounts message (NULL counts give zeros). */
cJSON *cli_json_counts(const Eddy__V1__TypeCounts *c);

/* Who answered a read (--allow-stale): in text, a line when a follower did; in JSON a
 * "staleness" member of 'o' (from_follower false, lag 0 for a leader's answer). */
void cli_print_staleness(const Eddy__V1__ReadStaleness *s);
void cli_json_staleness(cJSON *o, const Eddy__V1__ReadStaleness *s);

/* ---- subcommands ----------------------------------------------------------------------- */

int cmd_ingest(struct cli_ctx *ctx, int argc, char **argv);
int cmd_recommend(struct cli_ctx *ctx, int argc, char **argv);
int cmd_profile(struct cli_ctx *ctx, int argc, char **argv);
int cmd_top(struct cli_ctx *ctx, int argc, char **argv);
int cmd_counts(struct cli_ctx *ctx, int argc, char **argv);
int cmd_delete_user(struct cli_ctx *ctx, int argc, char **argv);
int cmd_health(struct cli_ctx *ctx, int argc, char **argv);
int cmd_status(struct cli_ctx *ctx, int argc, char **argv);
int cmd_drain(struct cli_ctx *ctx, int argc, char **argv);
int cmd_roi(struct cli_ctx *ctx, int argc, char **argv);
int cmd_reprocess(struct cli_ctx *ctx, int argc, char **argv);
int cmd_token(struct cli_ctx *ctx, int argc, char **argv);
int cmd_experiments(struct cli_ctx *ctx, int argc, char **argv);

#endif
