/* The token file: parsing, lookups and the watcher that re-reads it (see tokens.h).
 *
 * DESIGN
 * Why a watcher thread: lookups run on the gRPC CQ threads before any handler (the gate
 * must refuse a flood before it queues), and those threads must not block on the file
 * system. So a thread of its own stats the file every poll_ms and, when the size, mtime or
 * inode changed, reads and parses it off the CQ threads; the new table replaces the old
 * one under a write lock held only for the pointer swap. Lookups take the read lock and
 * copy what they need (struct token_grant), so a table is never freed under a reader. */
#include "common/tokens.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/strmap.h"
#include "common/thread.h"

#define FILE_MAX_BYTES (16 << 20) /* a token file larger than this is refused */

struct token_table {
    struct strmap map; /* "sha256:<hex>" or "cert:<identity>" -> struct token_grant */
};

struct token_file {
    char *path;
    int64_t poll_ms;
    pthread_rwlock_t lock; /* guards 'table' (the pointer) */
    token_table *table;
    /* the file as last seen (read, or found bad); guarded by reload_mu */
    pthread_mutex_t reload_mu;
    bool seen;
    off_t size;
    struct timespec mtime;
    ino_t ino;
    /* the watcher */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool started;
    pthread_t thread;
};

/* ---------------------------------------------------------------- table */

void token_hash_key(const char *secret, size_t len, char out[TOKEN_HASH_KEY_LEN])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    memcpy(out, "sha256:", 7);
    if (EVP_Digest(secret, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32) {
        memset(md, 0, sizeof(md)); /* cannot happen with libcrypto; matches no line */
        n = 32;
    }
    for (unsigned int i = 0; i < 32; i++) {
        out[7 + 2 * i] = hex[md[i] >> 4];
        out[8 + 2 * i] = hex[md[i] & 15];
    }
    out[TOKEN_HASH_KEY_LEN - 1] = '\0';
}

void token_table_free(token_table *t)
{
    if (!t)
        return;
    strmap_release(&t->map, free);
    free(t);
}

size_t token_table_count(const token_table *t)
{
    return t ? t->map.n : 0;
}

static bool valid_tenant(const char *s, size_t n)
{
    if (n == 0 || n > TOKEN_TENANT_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static bool parse_roles(const char *s, size_t n, unsigned *roles)
{
    *roles = 0;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] != ',')
            j++;
        size_t w = j - i;
        if (w == 6 && memcmp(s + i, "ingest", 6) == 0)
            *roles |= TOKEN_ROLE_INGEST;
        else if (w == 4 && memcmp(s + i, "read", 4) == 0)
            *roles |= TOKEN_ROLE_READ;
        else if (w == 5 && memcmp(s + i, "admin", 5) == 0)
            *roles |= TOKEN_ROLE_ADMIN;
        else
            return false;
        i = j + 1;
    }
    return *roles != 0;
}

static bool parse_rate(const char *s, size_t n, double *out)
{
    char buf[32];
    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno || *end || !isfinite(v) || v < 0)
        return false;
    *out = v;
    return true;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Parse one line (without its '\n') into 'g' and its key; false with 'why' set. */
static bool parse_line(const char *s, size_t n, struct token_grant *g, char *key,
                       size_t keylen, const char **why)
{
    memset(g, 0, sizeof(*g));
    g->events_per_s = g->calls_per_s = -1;
    size_t i = 0, fields = 0;
    bool have_roles = false;
    while (i < n) {
        while (i < n && is_space(s[i]))
            i++;
        size_t b = i;
        while (i < n && !is_space(s[i]))
            i++;
        if (i == b)
            break;
        const char *f = s + b;
        size_t w = i - b;
        if (fields++ == 0) {
            if (w == 7 + 64 && memcmp(f, "sha256:", 7) == 0) {
                for (size_t k = 7; k < w; k++) {
                    char c = f[k];
                    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                          (c >= 'A' && c <= 'F'))) {
                        *why = "the hash is not 64 hex digits";
                        return false;
                    }
                    key[k] = (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
                }
                memcpy(key, f, 7);
                key[w] = '\0';
                snprintf(g->who, sizeof(g->who), "%.19s", key);
            } else if (w > 5 && memcmp(f, "cert:", 5) == 0 && w - 5 <= TOKEN_IDENTITY_MAX) {
                snprintf(key, keylen, "%.*s", (int)w, f);
                snprintf(g->who, sizeof(g->who), "%s", key);
            } else if (w > 7 && memcmp(f, "sha256:", 7) == 0) {
                *why = "the hash is not 64 hex digits";
                return false;
            } else {
                *why = "a line starts with sha256:<hex> or cert:<identity>";
                return false;
            }
            continue;
        }
        const char *eq = memchr(f, '=', w);
        if (!eq) {
            *why = "expected key=value";
            return false;
        }
        size_t kl = (size_t)(eq - f), vl = w - kl - 1;
        const char *v = eq + 1;
        if (kl == 6 && memcmp(f, "tenant", 6) == 0) {
            if (!valid_tenant(v, vl)) {
                *why = "tenant must be 1-64 of [A-Za-z0-9._-]";
                return false;
            }
            memcpy(g->tenant, v, vl);
            g->tenant[vl] = '\0';
        } else if (kl == 5 && memcmp(f, "roles", 5) == 0) {
            if (!parse_roles(v, vl, &g->roles)) {
                *why = "roles must be a comma-separated list of ingest, read, admin";
                return false;
            }
            have_roles = true;
        } else if (kl == 12 && memcmp(f, "events_per_s", 12) == 0) {
            if (!parse_rate(v, vl, &g->events_per_s)) {
                *why = "events_per_s must be a number >= 0";
                return false;
            }
        } else if (kl == 11 && memcmp(f, "calls_per_s", 11) == 0) {
            if (!parse_rate(v, vl, &g->calls_per_s)) {
                *why = "calls_per_s must be a number >= 0";
                return false;
            }
        } else {
            *why = "unknown key (tenant, roles, events_per_s, calls_per_s)";
            return false;
        }
    }
    if (!g->tenant[0] || !have_roles) {
        *why = "tenant= and roles= are required";
        return false;
    }
    return true;
}

eddy_err token_table_parse(const char *text, size_t len, token_table **out, char *err,
                           size_t errlen)
{
    eddy_err e = EDDY_ERR_NOMEM;
    struct token_grant *g = NULL;
    token_table *t = calloc(1, sizeof(*t));
    *out = NULL;
    if (!t)
        goto fail;
    strmap_init(&t->map, TOKENS_MAX);
    size_t pos = 0, line = 0;
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        const char *hash = memchr(s, '#', n);
        if (hash)
            n = (size_t)(hash - s);
        size_t k = 0;
        while (k < n && is_space(s[k]))
            k++;
        if (k == n)
            continue;
        char key[TOKEN_IDENTITY_MAX + 8];
        const char *why = NULL;
        if (!(g = malloc(sizeof(*g))))
            goto fail;
        if (memchr(s, '\0', n) || !parse_line(s, n, g, key, sizeof(key), &why)) {
            snprintf(err, errlen, "line %zu: %s", line, why ? why : "a NUL byte");
            e = EDDY_ERR_INVALID;
            goto fail;
        }
        bool added = false;
        void **slot = strmap_slot(&t->map, key, strlen(key), &added, &e);
        if (!slot) {
            snprintf(err, errlen, "line %zu: %s", line,
                     e == EDDY_ERR_FULL ? "more than 100000 grants" : "out of memory");
            goto fail;
        }
        if (!added) {
            snprintf(err, errlen, "line %zu: %s is listed twice", line, g->who);
            e = EDDY_ERR_INVALID;
            goto fail;
        }
        *slot = g;
        g = NULL;
    }
    *out = t;
    return EDDY_OK;
fail:
    if (e == EDDY_ERR_NOMEM)
        snprintf(err, errlen, "out of memory");
    free(g);
    token_table_free(t);
    return e;
}

static bool find(const token_table *t, const char *key, struct token_grant *out)
{
    const struct token_grant *g = t ? strmap_get(&t->map, key, strlen(key)) : NULL;
    if (g && out)
        *out = *g;
    return g != NULL;
}

bool token_table_find_secret(const token_table *t, const char *secret, size_t len,
                             struct token_grant *out)
{
    char key[TOKEN_HASH_KEY_LEN];
    token_hash_key(secret, len, key);
    return find(t, key, out);
}

bool token_table_find_cert(const token_table *t, const char *identity,
                           struct token_grant *out)
{
    char key[TOKEN_IDENTITY_MAX + 8];
    if (!identity || !*identity || strlen(identity) > TOKEN_IDENTITY_MAX)
        return false;
    snprintf(key, sizeof(key), "cert:%s", identity);
    return find(t, key, out);
}

/* ---------------------------------------------------------------- file */

/* Read the whole file into a NUL-terminated buffer (caller frees) and its stat. */
static eddy_err read_file(const char *path, char **buf, size_t *len, struct stat *st,
                          char *err, size_t errlen)
{
    eddy_err e = EDDY_ERR_IO;
    *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return e;
    }
    if (fstat(fileno(f), st) != 0 || st->st_size > FILE_MAX_BYTES) {
        snprintf(err, errlen, "%s: cannot stat it or larger than 16 MiB", path);
        goto out;
    }
    size_t cap = (size_t)st->st_size + 1, n = 0;
    if (!(*buf = malloc(cap))) {
        e = EDDY_ERR_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    n = fread(*buf, 1, cap - 1, f);
    if (ferror(f)) {
        snprintf(err, errlen, "cannot read %s", path);
        free(*buf);
        *buf = NULL;
        goto out;
    }
    (*buf)[n] = '\0';
    *len = n;
    e = EDDY_OK;
out:
    fclose(f);
    return e;
}

static bool same_file(const token_file *tf, const struct stat *st)
{
    return tf->seen && st->st_size == tf->size && st->st_ino == tf->ino &&
           st->st_mtim.tv_sec == tf->mtime.tv_sec && st->st_mtim.tv_nsec == tf->mtime.tv_nsec;
}

static void remember(token_file *tf, const struct stat *st)
{
    tf->seen = true;
    tf->size = st->st_size;
    tf->ino = st->st_ino;
    tf->mtime = st->st_mtim;
}

/* Read and parse the file unless it is the one last seen (good or bad); on success swap
 * it in. *changed says whether it was read. Under reload_mu. */
static eddy_err load(token_file *tf, bool *changed, char *err, size_t errlen)
{
    struct stat st;
    *changed = false;
    if (stat(tf->path, &st) == 0) {
        if (same_file(tf, &st))
            return EDDY_OK;
        remember(tf, &st);
    }
    *changed = true;
    char *buf = NULL;
    size_t len = 0;
    token_table *t = NULL;
    eddy_err e = read_file(tf->path, &buf, &len, &st, err, errlen);
    if (e == EDDY_OK) {
        remember(tf, &st); /* what was read, should the file have changed since stat */
        e = token_table_parse(buf, len, &t, err, errlen);
    }
    free(buf);
    if (e != EDDY_OK)
        return e;
    pthread_rwlock_wrlock(&tf->lock);
    token_table *old = tf->table;
    tf->table = t;
    pthread_rwlock_unlock(&tf->lock);
    token_table_free(old);
    return EDDY_OK;
}

eddy_err token_file_reload(token_file *tf)
{
    char err[512];
    bool changed = false;
    pthread_mutex_lock(&tf->reload_mu);
    eddy_err e = load(tf, &changed, err, sizeof(err));
    pthread_mutex_unlock(&tf->reload_mu);
    if (e != EDDY_OK) {
        /* once per version of the file: the next poll sees it unchanged */
        log_error("msg=\"token file not reloaded, the previous tokens stay\" path=\"%s\" "
                  "error=\"%s\"", tf->path, err);
    } else if (changed) {
        pthread_rwlock_rdlock(&tf->lock);
        size_t n = token_table_count(tf->table);
        pthread_rwlock_unlock(&tf->lock);
        log_info("msg=\"token file reloaded\" path=\"%s\" grants=%zu", tf->path, n);
    }
    return e;
}

static void *watch_main(void *arg)
{
    thread_name("tokens");
    token_file *tf = arg;
    pthread_mutex_lock(&tf->mu);
    while (!tf->stop) {
        struct timespec until = clock_mono_after(tf->poll_ms);
        pthread_cond_timedwait(&tf->cv, &tf->mu, &until);
        if (tf->stop)
            break;
        pthread_mutex_unlock(&tf->mu);
        token_file_reload(tf); /* a stat, and a read only when the file changed */
        pthread_mutex_lock(&tf->mu);
    }
    pthread_mutex_unlock(&tf->mu);
    return NULL;
}

eddy_err token_file_open(const char *path, int64_t poll_ms, token_file **out, char *err,
                         size_t errlen)
{
    *out = NULL;
    token_file *tf = calloc(1, sizeof(*tf));
    if (!tf || !(tf->path = strdup(path))) {
        free(tf);
        snprintf(err, errlen, "out of memory");
        return EDDY_ERR_NOMEM;
    }
    tf->poll_ms = poll_ms > 0 ? poll_ms : 1000;
    pthread_rwlock_init(&tf->lock, NULL);
    pthread_mutex_init(&tf->reload_mu, NULL);
    pthread_mutex_init(&tf->mu, NULL);
    clock_cond_init(&tf->cv);
    bool changed = false;
    eddy_err e = load(tf, &changed, err, errlen);
    if (e == EDDY_OK) {
        if (pthread_create(&tf->thread, NULL, watch_main, tf) != 0) {
            snprintf(err, errlen, "cannot start the token file's watcher");
            e = EDDY_ERR_NOMEM;
        } else {
            tf->started = true;
        }
    }
    if (e != EDDY_OK) {
        token_file_close(tf);
        return e;
    }
    *out = tf;
    return EDDY_OK;
}

void token_file_close(token_file *tf)
{
    if (!tf)
        return;
    if (tf->started) {
        pthread_mutex_lock(&tf->mu);
        tf->stop = true;
        pthread_cond_signal(&tf->cv);
        pthread_mutex_unlock(&tf->mu);
        pthread_join(tf->thread, NULL);
    }
    token_table_free(tf->table);
    pthread_rwlock_destroy(&tf->lock);
    pthread_mutex_destroy(&tf->reload_mu);
    pthread_mutex_destroy(&tf->mu);
    pthread_cond_destroy(&tf->cv);
    free(tf->path);
    free(tf);
}

bool token_file_find_secret(token_file *tf, const char *secret, size_t len,
                            struct token_grant *out)
{
    char key[TOKEN_HASH_KEY_LEN];
    token_hash_key(secret, len, key); /* outside the lock */
    pthread_rwlock_rdlock(&tf->lock);
    bool ok = find(tf->table, key, out);
    pthread_rwlock_unlock(&tf->lock);
    return ok;
}

bool token_file_find_cert(token_file *tf, const char *identity, struct token_grant *out)
{
    pthread_rwlock_rdlock(&tf->lock);
    bool ok = token_table_find_cert(tf->table, identity, out);
    pthread_rwlock_unlock(&tf->lock);
    return ok;
}
