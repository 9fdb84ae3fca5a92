/* eddy ingest: JSON lines -> batches of Eddy.Ingest, with retries on backpressure, an
 * optional progress bar, and every rejection reported with the line it came from. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "client/jsonl.h"

#define MAX_LINE_BYTES (1 << 20)   /* a longer line is rejected, not buffered */
#define MAX_BATCH_BYTES (2 << 20)  /* flush a batch early: nodes take 4 MiB requests */
#define MAX_REPORTED 10000         /* rejections kept for the report; the rest are counted */
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000

struct rejection {
    uint64_t line;
    int64_t index; /* index in its batch; -1 for a rejection made by the client */
    char *field;
    char *reason;
};

/* The state of one `eddy ingest` run; main thread only. */
struct ingest {
    struct cli_ctx *ctx;
    eddy_client *client;
    int64_t batch_max, retries;

    Eddy__V1__Event **events; /* the batch being filled: owned, freed after sending */
    uint64_t *lines;          /* line number of each event of the batch */
    size_t n, bytes;

    uint64_t accepted, duplicates, late, rejected;
    struct rejection *rej;
    size_t nrej;

    bool progress;
    int64_t total_bytes; /* size of the input if it is a regular file, else 0 */
    int64_t read_bytes;
    uint64_t line_no;
    eddy_error err; /* the error that stopped the run */
    uint64_t failed_first, failed_last; /* lines of the batch that was not recorded */
};

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Record a rejection; returns -1 only when out of memory. */
static int add_rejection(struct ingest *g, uint64_t line, int64_t index, const char *field,
                         const char *reason)
{
    g->rejected++;
    if (g->nrej >= MAX_REPORTED)
        return 0;
    struct rejection *r = &g->rej[g->nrej];
    r->line = line;
    r->index = index;
    r->field = strdup(field ? field : "");
    r->reason = strdup(reason ? reason : "");
    g->nrej++;
    return r->field && r->reason ? 0 : -1;
}

static void draw_progress(struct ingest *g, bool done)
{
    if (!g->progress)
        return;
    if (done) {
        fputs("\r\033[K", stderr);
        return;
    }
    if (g->total_bytes > 0) {
        int pct = (int)(g->read_bytes * 100 / g->total_bytes);
        int fill = pct * 30 / 100;
        fprintf(stderr, "\r[%.*s%*s] %3d%%  %" PRIu64 " lines, %" PRIu64 " accepted\033[K", fill,
                "##############################", 30 - fill, "", pct, g->line_no, g->accepted);
    } else {
        fprintf(stderr, "\r%" PRIu64 " lines, %" PRIu64 " accepted\033[K", g->line_no,
                g->accepted);
    }
    fflush(stderr);
}

static void clear_batch(struct ingest *g)
{
    for (size_t i = 0; i < g->n; i++)
        jsonl_event_free(g->events[i]);
    g->n = 0;
    g->bytes = 0;
}

/* Send the batch, retrying on UNAVAILABLE / RESOURCE_EXHAUSTED (the write was not made, and
 * event ids make a resend safe anyway). Returns 0, or -1 with g->err set. */
static int send_batch(struct ingest *g)
{
    Eddy__V1__IngestResponse *resp = NULL;
    int64_t backoff = BACKOFF_FIRST_MS;
    int rc = 0;

    if (g->n == 0)
        return 0;
    for (int64_t attempt = 0;; attempt++) {
        eddy_status st = eddy_ingest(g->client, g->events, g->n, &resp, &g->err);
        if (st == EDDY_STATUS_OK)
            break;
        bool retry = st == EDDY_STATUS_UNAVAILABLE || st == EDDY_STATUS_RESOURCE_EXHAUSTED;
        if (!retry || attempt >= g->retries) {
            g->failed_first = g->lines[0];
            g->failed_last = g->lines[g->n - 1];
            rc = -1;
            goto out;
        }
        /* a tenant quota names its wait (libeddy already waited it if it fit the timeout) */
        sleep_ms(g->err.retry_after_ms > backoff ? g->err.retry_after_ms : backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    g->accepted += resp->accepted;
    g->duplicates += resp->duplicates;
    g->late += resp->late;
    for (size_t i = 0; i < resp->n_rejected; i++) {
        const Eddy__V1__Rejection *r = resp->rejected[i];
        uint64_t line = r->index < g->n ? g->lines[r->index] : 0;
        if (add_rejection(g, line, r->index, r->field, r->reason) != 0) {
            g->err.code = EDDY_STATUS_RESOURCE_EXHAUSTED;
            snprintf(g->err.message, sizeof(g->err.message), "out of memory");
            rc = -1;
            goto out;
        }
    }
out:
    eddy_response_free(resp);
    clear_batch(g);
    draw_progress(g, false);
    return rc;
}

/* Read one line into *buf without its newline. Returns its length, or -1 at the end of the
 * input. A line longer than MAX_LINE_BYTES is read to its end but not kept: *too_long. */
static int64_t read_line(FILE *in, char *buf, bool *too_long, int64_t *nread)
{
    size_t n = 0;
    int ch;
    bool any = false;

    *too_long = false;
    while ((ch = getc_unlocked(in)) != EOF) {
        any = true;
        (*nread)++;
        if (ch == '\n')
            break;
        if (n < MAX_LINE_BYTES)
            buf[n++] = (char)ch;
        else
            *too_long = true;
    }
    if (!any)
        return -1;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    return (int64_t)n;
}

static int by_line(const void *a, const void *b)
{
    const struct rejection *x = a, *y = b;
    return (x->line > y->line) - (x->line < y->line);
}

/* Client-side rejections are found when a line is read, server ones when its batch is
 * answered: sort so that the report follows the input. */
static int print_summary(struct ingest *g)
{
    qsort(g->rej, g->nrej, sizeof(*g->rej), by_line);
    if (g->ctx->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "accepted", (double)g->accepted);
        cJSON_AddNumberToObject(o, "duplicates", (double)g->duplicates);
        cJSON_AddNumberToObject(o, "late", (double)g->late);
        cJSON_AddNumberToObject(o, "rejected_count", (double)g->rejected);
        cJSON_AddNumberToObject(o, "lines", (double)g->line_no);
        cJSON *arr = cJSON_AddArrayToObject(o, "rejected");
        for (size_t i = 0; i < g->nrej; i++) {
            const struct rejection *r = &g->rej[i];
            cJSON *it = cJSON_CreateObject();
            cJSON_AddNumberToObject(it, "line", (double)r->line);
            if (r->index >= 0)
                cJSON_AddNumberToObject(it, "index", (double)r->index);
            else
                cJSON_AddNullToObject(it, "index");
            cJSON_AddStringToObject(it, "field", r->field);
            cJSON_AddStringToObject(it, "reason", r->reason);
            cJSON_AddItemToArray(arr, it);
        }
        return cli_json_print(o);
    }
    printf("accepted:    %" PRIu64 "\n", g->accepted);
    printf("duplicates:  %" PRIu64 "\n", g->duplicates);
    printf("late:        %" PRIu64 "\n", g->late);
    printf("rejected:    %" PRIu64 "\n", g->rejected);
    for (size_t i = 0; i < g->nrej; i++)
        printf("  line %" PRIu64 ": %s\n", g->rej[i].line, g->rej[i].reason);
    if (g->rejected > g->nrej)
        printf("  ... and %" PRIu64 " more\n", g->rejected - g->nrej);
    return CLI_EXIT_OK;
}

/* Parse one non-blank line into the batch, or record why it cannot be sent. */
static int take_line(struct ingest *g, const char *line, size_t len, bool too_long)
{
    struct jsonl_error jerr;
    Eddy__V1__Event *ev = NULL;

    if (too_long) {
        char reason[96];
        snprintf(reason, sizeof(reason), "line longer than %d bytes", MAX_LINE_BYTES);
        return add_rejection(g, g->line_no, -1, "", reason);
    }
    eddy_err e = jsonl_parse_event(line, len, &ev, &jerr);
    if (e == EDDY_ERR_INVALID)
        return add_rejection(g, g->line_no, -1, jerr.field, jerr.reason);
    if (e != EDDY_OK)
        return -1;
    g->events[g->n] = ev;
    g->lines[g->n] = g->line_no;
    g->n++;
    g->bytes += len;
    return 0;
}

static int run(struct ingest *g, FILE *in, const char *name)
{
    char *buf = malloc(MAX_LINE_BYTES + 1);
    bool too_long;
    int64_t len;
    int rc = CLI_EXIT_OK;

    if (!buf)
        goto nomem;
    while ((len = read_line(in, buf, &too_long, &g->read_bytes)) >= 0) {
        g->line_no++;
        if (!too_long && jsonl_is_blank(buf, (size_t)len))
            continue;
        if (take_line(g, buf, (size_t)len, too_long) != 0)
            goto nomem;
        if ((int64_t)g->n >= g->batch_max || g->bytes >= MAX_BATCH_BYTES) {
            if (send_batch(g) != 0)
                goto failed;
        }
    }
    if (ferror(in)) {
        draw_progress(g, true);
        cli_errorf("ingest: reading %s: %s", name, strerror(errno));
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (send_batch(g) != 0)
        goto failed;
    draw_progress(g, true);
    rc = print_summary(g);
    if (rc == CLI_EXIT_OK && g->rejected > 0)
        rc = CLI_EXIT_REJECTED;
    goto out;

nomem:
    g->err.code = EDDY_STATUS_RESOURCE_EXHAUSTED;
    snprintf(g->err.message, sizeof(g->err.message), "out of memory");
failed:
    /* Show what was recorded before the failure, then the failure itself. */
    draw_progress(g, true);
    print_summary(g);
    fflush(stdout);
    if (g->failed_first)
        cli_errorf("ingest stopped: the batch of lines %" PRIu64 "-%" PRIu64
                   " of %s was not recorded",
                   g->failed_first, g->failed_last, name);
    else
        cli_errorf("ingest stopped at line %" PRIu64 " of %s", g->line_no, name);
    rc = cli_fail(g->ctx, &g->err);
out:
    free(buf);
    return rc;
}

int cmd_ingest(struct cli_ctx *ctx, int argc, char **argv)
{
    int64_t batch = 500, retries = 5;
    const struct cli_opt opts[] = {
        {"batch", FLAG_INT, &batch, "N", "events per Ingest call (default 500)"},
        {"retries", FLAG_INT, &retries, "N",
         "resends of a batch answered UNAVAILABLE or RESOURCE_EXHAUSTED (default 5)"},
    };
    const struct cli_spec spec = {
        "ingest", "[FILE|-]",
        "Send events from FILE (default: stdin), one JSON object per line in the UserEvent\n"
        "shape (eventId, userId, sessionId, timestamp, eventType, productId, category, brand,\n"
        "price, searchQuery, metadata). Blank lines are skipped. Prints accepted, duplicates,\n"
        "late and rejected counts, and each rejection as \"line N: reason\". Exit code 4 if\n"
        "any event was rejected. A progress bar is drawn on stderr when it is a terminal.",
        opts, sizeof(opts) / sizeof(opts[0]), 0, 1};
    const char *pos[1];
    int npos;
    struct ingest g = {.ctx = ctx};
    FILE *in = stdin;
    const char *name = "stdin";
    struct stat sb;

    int rc = cli_parse(ctx, &spec, argc, argv, pos, &npos);
    if (rc != CLI_CONTINUE)
        return rc;
    if (batch < 1 || batch > 100000 || retries > 100) {
        cli_errorf("ingest: --batch must be in [1, 100000] and --retries in [0, 100]");
        return CLI_EXIT_USAGE;
    }
    if (npos == 1 && strcmp(pos[0], "-") != 0) {
        name = pos[0];
        in = fopen(name, "r");
        if (!in) {
            cli_errorf("ingest: cannot open %s: %s", name, strerror(errno));
            return CLI_EXIT_USAGE;
        }
    }
    g.batch_max = batch;
    g.retries = retries;
    g.progress = isatty(STDERR_FILENO);
    if (fstat(fileno(in), &sb) == 0 && S_ISREG(sb.st_mode))
        g.total_bytes = sb.st_size;
    g.events = calloc((size_t)batch, sizeof(*g.events));
    g.lines = calloc((size_t)batch, sizeof(*g.lines));
    g.rej = calloc(MAX_REPORTED, sizeof(*g.rej));
    g.client = cli_client(ctx);
    if (!g.client) {
        rc = CLI_EXIT_CONNECT;
    } else if (!g.events || !g.lines || !g.rej) {
        cli_errorf("out of memory");
        rc = CLI_EXIT_SERVER;
    } else {
        rc = run(&g, in, name);
    }
    clear_batch(&g);
    for (size_t i = 0; i < g.nrej; i++) {
        free(g.rej[i].field);
        free(g.rej[i].reason);
    }
    free(g.rej);
    free(g.lines);
    free(g.events);
    if (in != stdin)
        fclose(in);
    return rc;
}
