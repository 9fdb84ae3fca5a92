/* The token file of the public API: who may call (a bearer token's SHA-256, or a client
 * certificate's identity), for which tenant, with which roles and quota overrides; and the
 * watcher that re-reads the file when it changes (docs/security.md, "Tokens").
 *
 * Format, one grant per line ('#' starts a comment, blank lines are skipped):
 *   sha256:<64 hex> tenant=<name> roles=ingest,read[,admin] [events_per_s=N] [calls_per_s=N]
 *   cert:<subject CN or SAN> tenant=<name> roles=... [...]
 * Only the hash of a secret is stored, so the file reveals no usable token. */
#ifndef EDDY_TOKENS_H
#define EDDY_TOKENS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

enum token_role {
    TOKEN_ROLE_INGEST = 1 << 0, /* Ingest */
    TOKEN_ROLE_READ = 1 << 1,   /* Recommend, GetUserProfile, TopProducts, EventCounts */
    TOKEN_ROLE_ADMIN = 1 << 2,  /* DeleteUser, Reprocess, Drain, ... */
};

#define TOKEN_TENANT_MAX 64   /* bytes of a tenant name */
#define TOKEN_IDENTITY_MAX 256 /* bytes of a certificate identity */
#define TOKEN_SECRET_MAX 512   /* bytes of a bearer secret */
#define TOKENS_MAX 100000      /* grants in one file */

/* What a grant gives, copied out of the table (plain data). 'who' names the grant in logs
 * without revealing it: "sha256:<first 12 hex>" or "cert:<identity>". A limit below zero
 * means "not set here" (the flag's default applies). */
struct token_grant {
    char tenant[TOKEN_TENANT_MAX + 1];
    char who[TOKEN_IDENTITY_MAX + 8];
    unsigned roles; /* enum token_role bits */
    double events_per_s, calls_per_s;
};

/* A parsed file. Immutable once built, so any number of threads may read one. */
typedef struct token_table token_table;

/* Parse the text of a token file ('len' bytes). Caller owns *out; free with
 * token_table_free. EDDY_ERR_INVALID with "line N: why" in 'err' on the first bad line
 * (a malformed hash, an unknown role or key, a missing tenant or roles, a duplicate). */
eddy_err token_table_parse(const char *text, size_t len, token_table **out, char *err,
                           size_t errlen);

/* Accepts NULL. */
void token_table_free(token_table *t);

/* Number of grants. */
size_t token_table_count(const token_table *t);

/* The grant of bearer secret 'secret' ('len' bytes, hashed here) or of certificate identity
 * 'identity'; false if there is none. */
bool token_table_find_secret(const token_table *t, const char *secret, size_t len,
                             struct token_grant *out);
bool token_table_find_cert(const token_table *t, const char *identity,
                           struct token_grant *out);

/* The file line's key of 'secret': "sha256:" + 64 lower-case hex digits + NUL (72 bytes). */
#define TOKEN_HASH_KEY_LEN 72
void token_hash_key(const char *secret, size_t len, char out[TOKEN_HASH_KEY_LEN]);

/* A token file and the thread that watches it. Thread-safe: lookups from any thread, a
 * reload swaps the table under a write lock. */
typedef struct token_file token_file;

/* Read and parse 'path' now (an unreadable or bad file is an error, said in 'err'), then
 * poll its size, mtime and inode every 'poll_ms' (> 0) on a thread of its own, re-reading
 * it when they change. A bad file on a reload keeps the table in use and logs why. Caller
 * owns *out; close with token_file_close. */
eddy_err token_file_open(const char *path, int64_t poll_ms, token_file **out, char *err,
                         size_t errlen);

/* Stop the watcher and free everything. Accepts NULL. */
void token_file_close(token_file *tf);

/* Re-read the file now if it changed since the last read (what the watcher does at each
 * poll). EDDY_OK if it is unchanged or was taken, else the error (the old table stays). */
eddy_err token_file_reload(token_file *tf);

/* token_table_find_* on the table in use. */
bool token_file_find_secret(token_file *tf, const char *secret, size_t len,
                            struct token_grant *out);
bool token_file_find_cert(token_file *tf, const char *identity, struct token_grant *out);

#endif
