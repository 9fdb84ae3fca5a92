/* Table-driven flags: every setting is a --flag with an EDDY_* environment variable
 * (--data-dir <-> EDDY_DATA_DIR). The environment is read first, the command line wins.
 * Defaults are the values the target variables hold before config_parse. */
#ifndef EDDY_CONFIG_H
#define EDDY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum flag_type {
    FLAG_BOOL,     /* bool *; "--x", "--x=true|false|1|0" */
    FLAG_INT,      /* int64_t * */
    FLAG_DURATION, /* int64_t * in milliseconds; "250ms", "5s", "2m", "1h", "7d" or plain ms */
    FLAG_SIZE,     /* int64_t * in bytes; "512", "64k", "4MiB", "1G" */
    FLAG_DOUBLE,   /* double * */
    FLAG_STRING,   /* const char **; points into argv/environ, never freed */
};

struct flag {
    const char *name;   /* without dashes */
    enum flag_type type;
    void *ptr;
    const char *help;
    int64_t min, max;   /* bounds for INT/DURATION/SIZE; max == 0 means no upper bound */
};

enum { CONFIG_HELP = 1, CONFIG_VERSION = 2 };

/* Parse the environment, then argv[1..] up to the first argument that is not a flag (or
 * "--"). On success returns 0 and sets *first_arg to that argument's index. With --help
 * returns CONFIG_HELP, with --version CONFIG_VERSION (eddy_version() in common/version.h).
 * On a bad flag or value returns -1 with a message in 'err'. */
int config_parse(const struct flag *flags, size_t nflags, int argc, char **argv,
                 int *first_arg, char *err, size_t errlen);

/* The usual start of a daemon's main: parse the environment and argv (no positional
 * arguments), print 'usage' on --help and "PROG VERSION" on --version, report a bad flag on stderr as "PROG: message",
 * and set the log level from *log_level (a flag's target; NULL: none). Returns -1 to go
 * on, or the exit code: 0 after --help, 2 on a usage error. */
int config_main(const char *prog, const struct flag *flags, size_t nflags, int argc,
                char **argv, void (*usage)(FILE *, const struct flag *, size_t),
                const char *const *log_level);

/* Print each flag with its environment variable, default and help text. */
void config_usage(FILE *out, const struct flag *flags, size_t nflags);

/* A duration (ms) or size (bytes) as a human reads it and config_parse_value parses it
 * back exactly: the largest unit that divides the value ("30d", "90s", "1500ms"; "64MiB",
 * "4KiB", "1000B"; 0 is "0"). 'out' holds at least 32 bytes. */
void config_format_duration(int64_t ms, char *out, size_t outlen);
void config_format_size(int64_t bytes, char *out, size_t outlen);

/* Parse one value as 'type' into 'ptr'; returns 0 or -1. Exposed for the CLI and tests. */
int config_parse_value(enum flag_type type, const char *text, void *ptr);

/* The environment variable of 'name': "EDDY_" + upper-case, '-' -> '_'. */
void config_env_name(const char *name, char *out, size_t outlen);

#endif
