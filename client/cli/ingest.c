/* eddy ingest: JSON lines -> batches of Eddy.Ingest, up to --inflight of them outstanding,
 * with retries on backpressure, an optional progress bar, and every rejection reported with
 * the line it came from.
 *
 * DESIGN: the main thread reads, parses, sends and does all the accounting; libeddy's
 * completion thread only hands each answer back to its batch under 'mu' and wakes the main
 * thread. A batch keeps its events until it is answered, so a resend carries the same event
 * ids and the server's deduplication makes it count once. The node may apply batches
 * outstanding together in any order, so they overlap only within --inflight-span of event
 * time (fits_span). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "client/jsonl.h"
#include "common/clock.h"

#define MAX_LINE_BYTES (1 << 20)   /* a longer line is rejected, not buffered */
#define MAX_BATCH_BYTES (2 << 20)  /* flush a batch early: nodes take 4 MiB requests */
#define MAX_REPORTED 10000         /* rejections kept for the report; the rest are counted */
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_INFLIGHT 64

struct rejection {
    uint64_t line;
    int64_t index; /* index in its batch; -1 for a rejection made by the client */
    char *field;
    char *reason;
};

struct line_range {
    uint64_t first, last;
};

/* One batch of events. The main thread fills and sends it; from the send to the answer
 * only the completion callback writes 'answered', 'st', 'err' and 'resp', under
 * ingest.mu. */
struct batch {
    Eddy__V1__Event **events; /* owned, freed once answered for good */
    uint64_t *lines;          /* line number of each event */
    size_t n, bytes;
    int64_t min_ts, max_ts; /* the events' time span (timestamp_ms) */
    bool inflight;
    int64_t attempts, backoff_ms, first_sent_ms;
    struct ingest *g;

    bool answered;
    eddy_status st;
    eddy_error err;
    Eddy__V1__IngestResponse *resp; /* owned once answered */
};

/* The state of one `eddy ingest` run; main thread only, except what struct batch says. */
struct ingest {
    struct cli_ctx *ctx;
    eddy_client *client;
    int64_t batch_max, retries;
    int64_t span_ms; /* --inflight-span: 0 = no limit */

    struct batch *slots; /* [inflight] */
    size_t nslots, ninflight;
    struct batch *cur; /* the batch being filled: a slot not in flight */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled by each answer */

    uint64_t accepted, duplicates, late, rejected;
    struct rejection *rej;
    size_t nrej;

    bool progress;
    int64_t start_ms, drawn_ms;
    int64_t total_bytes; /* size of the input if it is a regular file, else 0 */
    int64_t read_bytes;
    uint64_t line_no;
    bool stopped;   /* a batch failed for good: read no further */
    eddy_error err; /* the error that stopped the run */
    struct line_range *failed; /* [nslots]: the batches not recorded (those out when the
                                  run stopped, at most) */
    size_t nfailed;
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

/* Events answered so far (accepted, duplicate, late or rejected) per second of the run. */
static double events_per_s(const struct ingest *g, int64_t elapsed_ms)
{
    uint64_t done = g->accepted + g->duplicates + g->late + g->rejected;
    return elapsed_ms > 0 ? (double)done * 1000.0 / (double)elapsed_ms : 0.0;
}

static void draw_progress(struct ingest *g, bool done)
{
    const int64_t every_ms = 100; /* a redraw per answer would flood a slow terminal */

    if (!g->progress)
        return;
    if (done) {
        fputs("\r\033[K", stderr);
        return;
    }
    int64_t now = clock_mono_ms(), elapsed = now - g->start_ms;
    if (now - g->drawn_ms < every_ms)
        return;
    g->drawn_ms = now;
    double rate = events_per_s(g, elapsed);
    if (g->total_bytes > 0) {
        int pct = (int)(g->read_bytes * 100 / g->total_bytes);
        int fill = pct * 30 / 100;
        char eta[32] = "";
        if (g->read_bytes > 0) { /* the time the bytes read so far took, for the rest */
            int64_t left_s = (int64_t)((double)elapsed * (double)(g->total_bytes - g->read_bytes) /
                                       (double)g->read_bytes / 1000.0);
            snprintf(eta, sizeof(eta), ", ETA %" PRId64 ":%02" PRId64, left_s / 60, left_s % 60);
        }
        fprintf(stderr,
                "\r[%.*s%*s] %3d%%  %" PRIu64 " lines, %" PRIu64 " accepted, %.0f events/s%s\033[K",
                fill, "##############################", 30 - fill, "", pct, g->line_no,
                g->accepted, rate, eta);
    } else {
        fprintf(stderr, "\r%" PRIu64 " lines, %" PRIu64 " accepted, %.0f events/s\033[K",
                g->line_no, g->accepted, rate);
    }
    fflush(stderr);
}

/* Stop reading: the run ends with 'err' (the first such error is the one reported). */
static void stop(struct ingest *g, const eddy_error *err)
{
    if (!g->stopped)
        g->err = *err;
    g->stopped = true;
}

static void stop_nomem(struct ingest *g)
{
    eddy_error err = {.code = EDDY_STATUS_RESOURCE_EXHAUSTED};
    snprintf(err.message, sizeof(err.message), "out of memory");
    stop(g, &err);
}

static void batch_clear(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        jsonl_event_free(b->events[i]);
    b->n = 0;
    b->bytes = 0;
    b->min_ts = INT64_MAX;
    b->max_ts = INT64_MIN;
    b->attempts = 0;
    b->backoff_ms = BACKOFF_FIRST_MS;
}

/* libeddy's completion thread: hand the answer to its batch. */
static void on_answer(void *ud, eddy_status st, const eddy_error *err,
                      Eddy__V1__IngestResponse *resp)
{
    struct batch *b = ud;
    struct ingest *g = b->g;

    pthread_mutex_lock(&g->mu);
    b->st = st;
    b->err = *err;
    b->resp = resp;
    b->answered = true;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Send (or resend) 'b'. A call that cannot even start counts as answered with its error,
 * so that take_answer decides on it like on any other. */
static void batch_send(struct ingest *g, struct batch *b)
{
    eddy_error err;

    if (b->attempts == 0)
        b->first_sent_ms = clock_mono_ms();
    b->answered = false; /* no callback is pending: the lock is not needed yet */
    b->resp = NULL;
    b->inflight = true;
    g->ninflight++;
    eddy_status st = eddy_ingest_async(g->client, b->events, b->n, on_answer, b, &err);
    if (st != EDDY_STATUS_OK) {
        pthread_mutex_lock(&g->mu);
        b->st = st;
        b->err = err;
        b->answered = true;
        pthread_mutex_unlock(&g->mu);
    }
}

/* Whether 'b', answered with an error, is sent again: UNAVAILABLE and RESOURCE_EXHAUSTED
 * mean the write was not made (and event ids make a resend safe anyway). A tenant quota's
 * delay that fits in --timeout does not use up a retry, as libeddy's own wait would not. */
static bool resend(struct ingest *g, struct batch *b)
{
    if (g->stopped ||
        (b->st != EDDY_STATUS_UNAVAILABLE && b->st != EDDY_STATUS_RESOURCE_EXHAUSTED))
        return false;
    int64_t quota_ms = b->st == EDDY_STATUS_RESOURCE_EXHAUSTED ? b->err.retry_after_ms : 0;
    bool quota_wait = quota_ms > 0 &&
                      clock_mono_ms() - b->first_sent_ms + quota_ms < g->ctx->timeout_ms;
    if (!quota_wait && b->attempts >= g->retries)
        return false;
    sleep_ms(quota_ms > b->backoff_ms ? quota_ms : b->backoff_ms);
    if (!quota_wait) {
        b->attempts++;
        b->backoff_ms = b->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b->backoff_ms * 2;
    }
    batch_send(g, b);
    return true;
}

/* Wait for the answer to one batch in flight and take it: count it with its rejections,
 * send it again, or record it as not recorded and stop the run. */
static void take_answer(struct ingest *g)
{
    struct batch *b = NULL;

    pthread_mutex_lock(&g->mu);
    for (;;) {
        for (size_t i = 0; i < g->nslots && !b; i++)
            if (g->slots[i].inflight && g->slots[i].answered)
                b = &g->slots[i];
        if (b)
            break;
        pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    b->inflight = false;
    g->ninflight--;
    if (b->st != EDDY_STATUS_OK) {
        if (resend(g, b))
            return;
        if (g->nfailed < g->nslots)
            g->failed[g->nfailed++] = (struct line_range){b->lines[0], b->lines[b->n - 1]};
        stop(g, &b->err);
        batch_clear(b);
        return;
    }
    Eddy__V1__IngestResponse *resp = b->resp;
    b->resp = NULL;
    g->accepted += resp->accepted;
    g->duplicates += resp->duplicates;
    g->late += resp->late;
    for (size_t i = 0; i < resp->n_rejected; i++) {
        const Eddy__V1__Rejection *r = resp->rejected[i];
        uint64_t line = r->index < b->n ? b->lines[r->index] : 0;
        if (add_rejection(g, line, r->index, r->field, r->reason) != 0)
            stop_nomem(g);
    }
    eddy_response_free(resp);
    batch_clear(b);
    draw_progress(g, false);
}

/* Whether 'b' may join the batches in flight: the node may apply those in any order, so
 * the event time they span together must stay within --inflight-span (by default the
 * node's default --out-of-orderness), or an event could find its window closed by a
 * later one applied first and count as late. */
static bool fits_span(const struct ingest *g, const struct batch *b)
{
    int64_t lo = b->min_ts, hi = b->max_ts;

    if (g->span_ms <= 0)
        return true;
    for (size_t i = 0; i < g->nslots; i++) {
        const struct batch *o = &g->slots[i];
        if (o->inflight && o->n > 0) {
            lo = o->min_ts < lo ? o->min_ts : lo;
            hi = o->max_ts > hi ? o->max_ts : hi;
        }
    }
    return hi - lo <= g->span_ms;
}

/* Send the batch being filled (if any) and make g->cur a free one, waiting for answers
 * while --inflight batches are out. */
static void flush_batch(struct ingest *g)
{
    if (g->cur->n > 0) {
        while (g->ninflight > 0 && !fits_span(g, g->cur))
            take_answer(g);
        batch_send(g, g->cur);
    }
    for (;;) {
        for (size_t i = 0; i < g->nslots; i++) {
            if (!g->slots[i].inflight) {
                g->cur = &g->slots[i];
                return;
            }
        }
        take_answer(g);
    }
}

/* Take every answer still to come: the callbacks must not outlive the run. */
static void drain(struct ingest *g)
{
    while (g->ninflight > 0)
        take_answer(g);
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
    int64_t elapsed_ms = clock_mono_ms() - g->start_ms;
    double rate = events_per_s(g, elapsed_ms);

    qsort(g->rej, g->nrej, sizeof(*g->rej), by_line);
    if (g->ctx->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "accepted", (double)g->accepted);
        cJSON_AddNumberToObject(o, "duplicates", (double)g->duplicates);
        cJSON_AddNumberToObject(o, "late", (double)g->late);
        cJSON_AddNumberToObject(o, "rejected_count", (double)g->rejected);
        cJSON_AddNumberToObject(o, "lines", (double)g->line_no);
        cJSON_AddNumberToObject(o, "elapsed_ms", (double)elapsed_ms);
        cJSON_AddNumberToObject(o, "events_per_second", (double)(int64_t)(rate + 0.5));
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
    printf("elapsed:     %.2f s (%.0f events/s)\n", (double)elapsed_ms / 1000.0, rate);
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
    struct batch *b = g->cur;
    b->events[b->n] = ev;
    b->lines[b->n] = g->line_no;
    b->min_ts = ev->timestamp_ms < b->min_ts ? ev->timestamp_ms : b->min_ts;
    b->max_ts = ev->timestamp_ms > b->max_ts ? ev->timestamp_ms : b->max_ts;
    b->n++;
    b->bytes += len;
    return 0;
}

static int by_first_line(const void *a, const void *b)
{
    const struct line_range *x = a, *y = b;
    return (x->first > y->first) - (x->first < y->first);
}

static int run(struct ingest *g, FILE *in, const char *name)
{
    char *buf = malloc(MAX_LINE_BYTES + 1);
    bool too_long, read_failed = false;
    int64_t len;
    int rc = CLI_EXIT_OK;

    if (!buf)
        stop_nomem(g);
    while (!g->stopped && (len = read_line(in, buf, &too_long, &g->read_bytes)) >= 0) {
        g->line_no++;
        if (!too_long && jsonl_is_blank(buf, (size_t)len))
            continue;
        if (take_line(g, buf, (size_t)len, too_long) != 0)
            stop_nomem(g);
        else if ((int64_t)g->cur->n >= g->batch_max || g->cur->bytes >= MAX_BATCH_BYTES)
            flush_batch(g);
    }
    read_failed = !g->stopped && ferror(in);
    if (!g->stopped && !read_failed)
        flush_batch(g);
    drain(g);
    draw_progress(g, true);
    if (read_failed) {
        cli_errorf("ingest: reading %s: %s", name, strerror(errno));
        rc = CLI_EXIT_USAGE;
    } else if (!g->stopped) {
        rc = print_summary(g);
        if (rc == CLI_EXIT_OK && g->rejected > 0)
            rc = CLI_EXIT_REJECTED;
    } else {
        /* Show what was recorded before the failure, then the failure itself: with batches
         * in flight, lines after a batch that was not recorded may have been. */
        print_summary(g);
        fflush(stdout);
        qsort(g->failed, g->nfailed, sizeof(*g->failed), by_first_line);
        for (size_t i = 0; i < g->nfailed; i++)
            cli_errorf("ingest stopped: the batch of lines %" PRIu64 "-%" PRIu64
                       " of %s was not recorded",
                       g->failed[i].first, g->failed[i].last, name);
        if (g->nfailed == 0)
            cli_errorf("ingest stopped at line %" PRIu64 " of %s", g->line_no, name);
        rc = cli_fail(g->ctx, &g->err);
    }
    free(buf);
    return rc;
}

/* The batches' arrays and the lock; -1 when out of memory (then ingest_release frees what
 * was made). */
static int ingest_init(struct ingest *g, int64_t inflight)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->slots = calloc((size_t)inflight, sizeof(*g->slots));
    g->failed = calloc((size_t)inflight, sizeof(*g->failed));
    g->rej = calloc(MAX_REPORTED, sizeof(*g->rej));
    if (!g->slots || !g->failed || !g->rej)
        return -1;
    g->nslots = (size_t)inflight;
    for (size_t i = 0; i < g->nslots; i++) {
        struct batch *b = &g->slots[i];
        b->g = g;
        batch_clear(b);
        b->events = calloc((size_t)g->batch_max, sizeof(*b->events));
        b->lines = calloc((size_t)g->batch_max, sizeof(*b->lines));
        if (!b->events || !b->lines)
            return -1;
    }
    g->cur = &g->slots[0];
    return 0;
}

/* Free what ingest_init made; no batch may be in flight (see drain). */
static void ingest_release(struct ingest *g)
{
    for (size_t i = 0; i < g->nslots; i++) {
        batch_clear(&g->slots[i]);
        free(g->slots[i].events);
        free(g->slots[i].lines);
    }
    for (size_t i = 0; i < g->nrej; i++) {
        free(g->rej[i].field);
        free(g->rej[i].reason);
    }
    free(g->rej);
    free(g->failed);
    free(g->slots);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

int cmd_ingest(struct cli_ctx *ctx, int argc, char **argv)
{
    int64_t batch = 500, retries = 5, inflight = 4, span = 5000;
    const struct cli_opt opts[] = {
        {"batch", FLAG_INT, &batch, "N", "events per Ingest call (default 500)"},
        {"inflight", FLAG_INT, &inflight, "N",
         "Ingest calls outstanding at once (default 4; 1 sends the batches in file order)"},
        {"inflight-span", FLAG_DURATION, &span, "DURATION",
         "largest event-time span of the batches outstanding together (default 5s, the "
         "node's default --out-of-orderness; 0 = no limit)"},
        {"retries", FLAG_INT, &retries, "N",
         "resends of a batch answered UNAVAILABLE or RESOURCE_EXHAUSTED (default 5)"},
    };
    const struct cli_spec spec = {
        "ingest", "[FILE|-]",
        "Send events from FILE (default: stdin), one JSON object per line in the UserEvent\n"
        "shape (eventId, userId, sessionId, timestamp, eventType, productId, category, brand,\n"
        "price, searchQuery, metadata). Blank lines are skipped. Prints accepted, duplicates,\n"
        "late and rejected counts, the elapsed time and rate, and each rejection as\n"
        "\"line N: reason\". Exit code 4 if any event was rejected. A progress bar (rate, and\n"
        "ETA for a file) is drawn on stderr when it is a terminal.",
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
    if (batch < 1 || batch > 100000 || retries < 0 || retries > 100 || inflight < 1 ||
        inflight > MAX_INFLIGHT || span < 0) {
        cli_errorf("ingest: --batch must be in [1, 100000], --retries in [0, 100] and "
                   "--inflight in [1, %d]",
                   MAX_INFLIGHT);
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
    g.span_ms = span;
    g.progress = isatty(STDERR_FILENO);
    if (fstat(fileno(in), &sb) == 0 && S_ISREG(sb.st_mode))
        g.total_bytes = sb.st_size;
    bool made = ingest_init(&g, inflight) == 0;
    g.client = cli_client(ctx);
    if (!g.client) {
        rc = CLI_EXIT_CONNECT;
    } else if (!made) {
        cli_errorf("out of memory");
        rc = CLI_EXIT_SERVER;
    } else {
        g.start_ms = clock_mono_ms();
        rc = run(&g, in, name);
    }
    ingest_release(&g);
    if (in != stdin)
        fclose(in);
    return rc;
}
