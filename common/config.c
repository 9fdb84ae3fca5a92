/* Flag and environment parsing for every Eddy binary. */
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/version.h"

void config_env_name(const char *name, char *out, size_t outlen)
{
    size_t n = (size_t)snprintf(out, outlen, "EDDY_");
    for (const char *p = name; *p && n + 1 < outlen; p++)
        out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[n < outlen ? n : outlen - 1] = '\0';
}

static int parse_scaled(const char *text, int64_t *out, const char *const *units,
                        const int64_t *scale, size_t nunits)
{
    errno = 0;
    char *end = NULL;
    double v = strtod(text, &end);
    if (end == text || errno != 0 || !isfinite(v) || v < 0)
        return -1;
    int64_t mul = 1;
    if (*end != '\0') {
        size_t i;
        for (i = 0; i < nunits; i++) {
            if (strcmp(end, units[i]) == 0)
                break;
        }
        if (i == nunits)
            return -1;
        mul = scale[i];
    }
    double r = v * (double)mul;
    if (r > 9.2e18)
        return -1;
    *out = (int64_t)llround(r);
    return 0;
}

int config_parse_value(enum flag_type type, const char *text, void *ptr)
{
    static const char *const dur_units[] = {"ms", "s", "m", "h", "d"};
    static const int64_t dur_scale[] = {1, 1000, 60000, 3600000, 86400000};
    static const char *const size_units[] = {"b", "B", "k", "K", "KiB", "kB", "m", "M", "MiB", "MB",
                                             "g", "G", "GiB", "GB"};
    static const int64_t size_scale[] = {1, 1, 1024, 1024, 1024, 1024, 1 << 20, 1 << 20, 1 << 20,
                                         1 << 20, 1 << 30, 1 << 30, 1 << 30, 1 << 30};
    char *end = NULL;

    switch (type) {
    case FLAG_BOOL:
        if (strcmp(text, "true") == 0 || strcmp(text, "1") == 0 || strcmp(text, "yes") == 0)
            *(bool *)ptr = true;
        else if (strcmp(text, "false") == 0 || strcmp(text, "0") == 0 || strcmp(text, "no") == 0)
            *(bool *)ptr = false;
        else
            return -1;
        return 0;
    case FLAG_INT: {
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (end == text || *end != '\0' || errno != 0)
            return -1;
        *(int64_t *)ptr = v;
        return 0;
    }
    case FLAG_DURATION:
        return parse_scaled(text, ptr, dur_units, dur_scale, 5);
    case FLAG_SIZE:
        return parse_scaled(text, ptr, size_units, size_scale, 14);
    case FLAG_DOUBLE: {
        errno = 0;
        double v = strtod(text, &end);
        if (end == text || *end != '\0' || errno != 0 || !isfinite(v))
            return -1;
        *(double *)ptr = v;
        return 0;
    }
    case FLAG_STRING:
        *(const char **)ptr = text;
        return 0;
    }
    return -1;
}

/* Print 'v' in the largest unit of 'units' that divides it exactly (units[0] has scale 1),
 * so the text parses back to the same value: 2592000000 ms is "30d", 1500 ms "1500ms". */
static void format_scaled(int64_t v, char *out, size_t outlen, const char *const *units,
                          const int64_t *scale, size_t nunits)
{
    size_t u = 0;
    for (size_t i = nunits; v != 0 && i-- > 1;) {
        if (v % scale[i] == 0) {
            u = i;
            break;
        }
    }
    snprintf(out, outlen, "%" PRId64 "%s", v / scale[u], v == 0 ? "" : units[u]);
}

void config_format_duration(int64_t ms, char *out, size_t outlen)
{
    static const char *const units[] = {"ms", "s", "m", "h", "d"};
    static const int64_t scale[] = {1, 1000, 60000, 3600000, 86400000};
    format_scaled(ms, out, outlen, units, scale, 5);
}

void config_format_size(int64_t bytes, char *out, size_t outlen)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB"};
    static const int64_t scale[] = {1, 1 << 10, 1 << 20, 1 << 30};
    format_scaled(bytes, out, outlen, units, scale, 4);
}

static int set_flag(const struct flag *f, const char *text, const char *origin, char *err,
                    size_t errlen)
{
    if (config_parse_value(f->type, text, f->ptr) != 0) {
        snprintf(err, errlen, "%s: invalid value '%s' for --%s", origin, text, f->name);
        return -1;
    }
    if (f->type == FLAG_INT || f->type == FLAG_DURATION || f->type == FLAG_SIZE) {
        int64_t v = *(int64_t *)f->ptr;
        int64_t min = f->min, max = f->max;
        if (max == 0) /* no upper bound */
            max = INT64_MAX;
        if (v < min || v > max) {
            snprintf(err, errlen, "%s: --%s=%s is out of range [%" PRId64 ", %" PRId64 "]",
                     origin, f->name, text, min, max);
            return -1;
        }
    }
    return 0;
}

static const struct flag *find_flag(const struct flag *flags, size_t n, const char *name,
                                    size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(flags[i].name) == len && strncmp(flags[i].name, name, len) == 0)
            return &flags[i];
    }
    return NULL;
}

int config_parse(const struct flag *flags, size_t nflags, int argc, char **argv,
                 int *first_arg, char *err, size_t errlen)
{
    char env[128];

    for (size_t i = 0; i < nflags; i++) {
        config_env_name(flags[i].name, env, sizeof(env));
        const char *v = getenv(env);
        if (v && set_flag(&flags[i], v, env, err, errlen) != 0)
            return -1;
    }

    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
            break;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return CONFIG_HELP;
        if (strcmp(a, "--version") == 0)
            return CONFIG_VERSION;
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct flag *f = find_flag(flags, nflags, name, len);
        if (!f) {
            snprintf(err, errlen, "unknown flag --%.*s (see --help)", (int)len, name);
            return -1;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (f->type == FLAG_BOOL) {
                value = "true";
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                snprintf(err, errlen, "flag --%s needs a value", f->name);
                return -1;
            }
        }
        if (set_flag(f, value, "command line", err, errlen) != 0)
            return -1;
    }
    *first_arg = i;
    return 0;
}

int config_main(const char *prog, const struct flag *flags, size_t nflags, int argc,
                char **argv, void (*usage)(FILE *, const struct flag *, size_t),
                const char *const *log_level)
{
    char err[512] = "";
    int first = 0;
    int r = config_parse(flags, nflags, argc, argv, &first, err, sizeof(err));
    if (r == CONFIG_HELP) {
        usage(stdout, flags, nflags);
        return 0;
    }
    if (r == CONFIG_VERSION) {
        printf("%s %s\n", prog, eddy_version());
        return 0;
    }
    if (r < 0 || first < argc) {
        fprintf(stderr, "%s: %s\n", prog, r < 0 ? err : "unexpected argument (see --help)");
        return 2;
    }
    if (log_level && log_set_level(*log_level) != 0) {
        fprintf(stderr, "%s: unknown --log-level '%s'\n", prog, *log_level);
        return 2;
    }
    return -1;
}

void config_usage(FILE *out, const struct flag *flags, size_t nflags)
{
    char env[128], def[64];

    for (size_t i = 0; i < nflags; i++) {
        const struct flag *f = &flags[i];
        switch (f->type) {
        case FLAG_BOOL:
            snprintf(def, sizeof(def), "%s", *(bool *)f->ptr ? "true" : "false");
            break;
        case FLAG_INT:
            snprintf(def, sizeof(def), "%" PRId64, *(int64_t *)f->ptr);
            break;
        case FLAG_DURATION:
            config_format_duration(*(int64_t *)f->ptr, def, sizeof(def));
            break;
        case FLAG_SIZE:
            config_format_size(*(int64_t *)f->ptr, def, sizeof(def));
            break;
        case FLAG_DOUBLE:
            snprintf(def, sizeof(def), "%g", *(double *)f->ptr);
            break;
        case FLAG_STRING: {
            const char *s = *(const char **)f->ptr;
            snprintf(def, sizeof(def), "%s", s ? s : "");
            break;
        }
        }
        config_env_name(f->name, env, sizeof(env));
        fprintf(out, "  --%-26s %s\n  %-28s env %s, default %s\n", f->name, f->help, "", env,
                def[0] ? def : "(none)");
    }
}
