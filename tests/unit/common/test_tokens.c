/* The token file: parsing (hash keys, roles, per-tenant limits, certificate lines,
 * comments) and every kind of bad line; lookups by secret (only its SHA-256 is stored) and
 * by certificate identity; reloads that take a new file and keep the old table on a bad one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/tokens.h"


static void key_of(const char *secret, char *out)
{
    token_hash_key(secret, strlen(secret), out);
}

static void test_hash_key(void **state)
{
    (void)state;
    char k[TOKEN_HASH_KEY_LEN];
    key_of("abc", k); /* the FIPS 180-2 test vector */
    assert_string_equal(
        k, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_parse_and_find(void **state)
{
    (void)state;
    char ka[TOKEN_HASH_KEY_LEN], kb[TOKEN_HASH_KEY_LEN], text[1024], err[256] = "";
    key_of("secret-a", ka);
    key_of("secret-b", kb);
    for (char *p = kb + 7; *p; p++) /* hex may be written in upper case */
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    snprintf(text, sizeof(text),
             "# tenants\n"
             "\n"
             "%s tenant=acme roles=ingest,read   # the shop\n"
             "  %s\ttenant=ops roles=admin events_per_s=0 calls_per_s=2.5\r\n"
             "cert:reporting.example tenant=bi roles=read",
             ka, kb);
    token_table *t = NULL;
    assert_int_equal(token_table_parse(text, strlen(text), &t, err, sizeof(err)), EDDY_OK);
    assert_int_equal(token_table_count(t), 3);
    struct token_grant g;
    assert_true(token_table_find_secret(t, "secret-a", 8, &g));
    assert_string_equal(g.tenant, "acme");
    assert_int_equal(g.roles, TOKEN_ROLE_INGEST | TOKEN_ROLE_READ);
    assert_true(g.events_per_s < 0 && g.calls_per_s < 0); /* not set: the flags apply */
    assert_int_equal(strncmp(g.who, ka, 19), 0);          /* names the grant, not the secret */
    assert_int_equal(strlen(g.who), 19);
    assert_true(token_table_find_secret(t, "secret-b", 8, &g));
    assert_string_equal(g.tenant, "ops");
    assert_int_equal(g.roles, TOKEN_ROLE_ADMIN);
    assert_true(g.events_per_s == 0 && g.calls_per_s == 2.5);
    assert_false(token_table_find_secret(t, "secret-", 7, &g));
    assert_false(token_table_find_secret(t, ka, strlen(ka), &g)); /* the hash is no token */
    assert_true(token_table_find_cert(t, "reporting.example", &g));
    assert_string_equal(g.tenant, "bi");
    assert_string_equal(g.who, "cert:reporting.example");
    assert_false(token_table_find_cert(t, "reporting", &g));
    assert_false(token_table_find_secret(t, "reporting.example", 17, &g));
    token_table_free(t);
}

/* 'tmpl' with each '@' replaced by 'k' (and each '~' by 'k' cut to 70 characters). */
static void expand(char *out, size_t len, const char *tmpl, const char *k)
{
    size_t n = 0;
    for (const char *p = tmpl; *p && n + 80 < len; p++) {
        if (*p == '@' || *p == '~') {
            size_t w = *p == '@' ? strlen(k) : 70;
            memcpy(out + n, k, w);
            n += w;
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

static void test_bad_lines(void **state)
{
    (void)state;
    char k[TOKEN_HASH_KEY_LEN];
    key_of("x", k);
    static const struct { const char *tmpl, *why; } bad[] = {
        {"@ tenant=a", "line 1: tenant= and roles= are required"},
        {"@ roles=read", "line 1: tenant= and roles= are required"},
        {"@ tenant=a roles=read,write", "line 1: roles must be"},
        {"@ tenant=a roles=", "line 1: roles must be"},
        {"@ tenant=a b roles=read", "line 1: expected key=value"},
        {"@ tenant=a/b roles=read", "line 1: tenant must be"},
        {"@ tenant=a roles=read colour=red", "line 1: unknown key"},
        {"@ tenant=a roles=read events_per_s=-1", "line 1: events_per_s must be"},
        {"@ tenant=a roles=read calls_per_s=fast", "line 1: calls_per_s must be"},
        {"# ok\n@ tenant=a roles=read\n@ tenant=b roles=read", "line 3: sha256:"},
        {"~ tenant=a roles=read", "line 1: the hash is not 64 hex digits"},
        {"~g tenant=a roles=read", "line 1: the hash is not 64 hex digits"},
        {"token@ tenant=a roles=read", "line 1: a line starts with"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[512], err[256] = "";
        expand(text, sizeof(text), bad[i].tmpl, k);
        token_table *t = (token_table *)&text; /* must be reset to NULL */
        assert_int_equal(token_table_parse(text, strlen(text), &t, err, sizeof(err)),
                         EDDY_ERR_INVALID);
        assert_null(t);
        if (strncmp(err, bad[i].why, strlen(bad[i].why)) != 0)
            fail_msg("case %zu: \"%s\" gave \"%s\"", i, text, err);
    }
}

static void write_file(const char *path, const char *text)
{
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0); /* a new inode: seen as changed at once */
}

static void test_file_reload(void **state)
{
    (void)state;
    char dir[] = "/tmp/eddy-test-tokens-XXXXXX", path[256], ka[TOKEN_HASH_KEY_LEN],
         kb[TOKEN_HASH_KEY_LEN], text[512], err[256] = "";
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokens", dir);
    key_of("alpha", ka);
    key_of("beta", kb);
    token_file *tf = NULL;
    assert_int_equal(token_file_open(path, 3600000, &tf, err, sizeof(err)), EDDY_ERR_IO);
    assert_null(tf);
    snprintf(text, sizeof(text), "%s tenant=a roles=read\n", ka);
    write_file(path, text);
    /* an hour between polls: only token_file_reload re-reads it in this test */
    assert_int_equal(token_file_open(path, 3600000, &tf, err, sizeof(err)), EDDY_OK);
    struct token_grant g;
    assert_true(token_file_find_secret(tf, "alpha", 5, &g));
    assert_false(token_file_find_secret(tf, "beta", 4, &g));

    snprintf(text, sizeof(text), "%s tenant=b roles=ingest\n", kb);
    write_file(path, text);
    assert_int_equal(token_file_reload(tf), EDDY_OK);
    assert_false(token_file_find_secret(tf, "alpha", 5, &g)); /* removed: revoked */
    assert_true(token_file_find_secret(tf, "beta", 4, &g));
    assert_string_equal(g.tenant, "b");

    write_file(path, "sha256:nothex tenant=c roles=read\n");
    assert_int_equal(token_file_reload(tf), EDDY_ERR_INVALID);
    assert_true(token_file_find_secret(tf, "beta", 4, &g)); /* the old table stays */
    assert_int_equal(token_file_reload(tf), EDDY_OK);      /* same bad file: not re-read */
    unlink(path);
    assert_int_equal(token_file_reload(tf), EDDY_ERR_IO);
    assert_true(token_file_find_secret(tf, "beta", 4, &g));
    token_file_close(tf);
    token_file_close(NULL);
    rmdir(dir);
}

/* The watcher thread picks a change up by itself (polled every 10 ms here). */
static void test_file_watcher(void **state)
{
    (void)state;
    char dir[] = "/tmp/eddy-test-tokens-XXXXXX", path[256], ka[TOKEN_HASH_KEY_LEN],
         text[512], err[256] = "";
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokens", dir);
    key_of("alpha", ka);
    write_file(path, "# nobody yet\n");
    token_file *tf = NULL;
    assert_int_equal(token_file_open(path, 10, &tf, err, sizeof(err)), EDDY_OK);
    assert_false(token_file_find_secret(tf, "alpha", 5, NULL));
    snprintf(text, sizeof(text), "%s tenant=a roles=read\n", ka);
    write_file(path, text);
    int polls = 0;
    while (!token_file_find_secret(tf, "alpha", 5, NULL) && polls++ < 1000)
        usleep(10000); /* waits for the condition itself, at most 10 s */
    assert_true(token_file_find_secret(tf, "alpha", 5, NULL));
    token_file_close(tf);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_key),
        cmocka_unit_test(test_parse_and_find),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_file_reload),
        cmocka_unit_test(test_file_watcher),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
