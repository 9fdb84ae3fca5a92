/* Output helpers of `eddy`: aligned tables for people, JSON for scripts, UTC times. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

void cli_format_time(int64_t ms, char *buf, size_t len)
{
    struct tm tm;
    time_t secs;
    int64_t frac;

    if (ms == 0) {
        snprintf(buf, len, "-");
        return;
    }
    /* Floor division so that negative times still print a valid clock. */
    secs = (time_t)(ms / 1000);
    frac = ms % 1000;
    if (frac < 0) {
        frac += 1000;
        secs -= 1;
    }
    /* Format in full, then copy what fits: 'buf' may be shorter than a timestamp. */
    char full[64];
    if (!gmtime_r(&secs, &tm))
        snprintf(full, sizeof(full), "%lld", (long long)ms);
    else
        snprintf(full, sizeof(full), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac);
    if (len == 0)
        return;
    size_t n = strlen(full);
    if (n >= len)
        n = len - 1;
    memcpy(buf, full, n);
    buf[n] = '\0';
}

/* Cells are stored row-major in one growing array of strings. */
struct cli_table {
    size_t ncols;
    const char *const *header;
    char **cells;
    size_t ncells, cap;
    size_t dropped_cells; /* cells of rows over CLI_TABLE_MAX_ROWS: counted, not kept */
};

struct cli_table *cli_table_new(size_t ncols, const char *const *header)
{
    struct cli_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ncols = ncols;
    t->header = header;
    return t;
}

void cli_table_free(struct cli_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->ncells; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

int cli_table_cell(struct cli_table *t, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    if (t->ncells / t->ncols >= CLI_TABLE_MAX_ROWS) {
        t->dropped_cells++;
        return 0;
    }
    if (t->ncells == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        char **cells = realloc(t->cells, cap * sizeof(*cells));
        if (!cells)
            return -1;
        t->cells = cells;
        t->cap = cap;
    }
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    t->cells[t->ncells++] = s;
    return 0;
}

static const char *head_name(const struct cli_table *t, size_t c, bool *right)
{
    const char *h = t->header[c];
    *right = h[0] == '>';
    return *right ? h + 1 : h;
}

void cli_table_print(const struct cli_table *t, FILE *out, int indent)
{
    size_t width[32] = {0};
    size_t ncols = t->ncols < 32 ? t->ncols : 32;
    bool right;

    for (size_t c = 0; c < ncols; c++)
        width[c] = strlen(head_name(t, c, &right));
    for (size_t i = 0; i < t->ncells; i++) {
        size_t c = i % t->ncols;
        size_t w = strlen(t->cells[i]);
        if (c < ncols && w > width[c])
            width[c] = w;
    }
    size_t nrows = (t->ncells + t->ncols - 1) / t->ncols;
    for (size_t r = 0; r <= nrows; r++) {
        fprintf(out, "%*s", indent, "");
        for (size_t c = 0; c < ncols; c++) {
            const char *name = head_name(t, c, &right);
            const char *s = r == 0 ? name : "";
            size_t idx = (r - 1) * t->ncols + c;
            if (r > 0 && idx < t->ncells)
                s = t->cells[idx];
            bool last = c + 1 == ncols;
            if (right)
                fprintf(out, "%*s", (int)width[c], s);
            else if (last)
                fputs(s, out);
            else
                fprintf(out, "%-*s", (int)width[c], s);
            if (!last)
                fputs("  ", out);
        }
        fputc('\n', out);
    }
    if (t->dropped_cells)
        fprintf(out, "%*s... %zu more rows\n", indent, "",
                (t->dropped_cells + t->ncols - 1) / t->ncols);
}

int cli_json_print(cJSON *root)
{
    char *text = root ? cJSON_Print(root) : NULL;

    cJSON_Delete(root);
    if (!text) {
        cli_errorf("out of memory while printing JSON");
        return CLI_EXIT_SERVER;
    }
    puts(text);
    cJSON_free(text);
    return CLI_EXIT_OK;
}

cJSON *cli_json_counts(const Eddy__V1__TypeCounts *c)
{
    Eddy__V1__TypeCounts zero = EDDY__V1__TYPE_COUNTS__INIT;
    cJSON *o = cJSON_CreateObject();

    if (!c)
        c = &zero;
    cJSON_AddNumberToObject(o, "view", (double)c->view);
    cJSON_AddNumberToObject(o, "click", (double)c->click);
    cJSON_AddNumberToObject(o, "add_to_cart", (double)c->add_to_cart);
    cJSON_AddNumberToObject(o, "remove_from_cart", (double)c->remove_from_cart);
    cJSON_AddNumberToObject(o, "purchase", (double)c->purchase);
    cJSON_AddNumberToObject(o, "search", (double)c->search);
    cJSON_AddNumberToObject(o, "total", (double)c->total);
    return o;
}

void cli_print_staleness(const Eddy__V1__ReadStaleness *s)
{
    if (s && s->from_follower)
        printf("answered by a follower: %" PRIu64 " records, %" PRIu64
               " ms behind its leader\n",
               s->lag_records, s->lag_ms);
}

void cli_json_staleness(cJSON *o, const Eddy__V1__ReadStaleness *s)
{
    cJSON *j = cJSON_AddObjectToObject(o, "staleness");
    cJSON_AddBoolToObject(j, "from_follower", s && s->from_follower);
    cJSON_AddNumberToObject(j, "lag_records", s ? (double)s->lag_records : 0);
    cJSON_AddNumberToObject(j, "lag_ms", s ? (double)s->lag_ms : 0);
}
