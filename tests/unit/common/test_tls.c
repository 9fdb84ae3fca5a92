/* TLS settings: loopback detection and protected mode, --tls-client-auth parsing, and the
 * start-time check of the certificate files (a key that is not the certificate's is
 * refused). Certificates are made with the openssl CLI in a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/tls.h"

static void test_loopback(void **state)
{
    (void)state;
    const char *yes[] = {"127.0.0.1:7070", "127.1.2.3:0", "localhost:7070", "[::1]:7070"};
    const char *no[] = {"0.0.0.0:7070", "[::]:7070", "10.0.0.5:7070", "eddy.example:7070",
                        ":7070", "128.0.0.1:7070"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        assert_true(tls_listen_is_loopback(yes[i]));
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        assert_false(tls_listen_is_loopback(no[i]));
}

static void test_client_auth_names(void **state)
{
    (void)state;
    enum tls_client_auth a;
    assert_int_equal(tls_parse_client_auth("require", &a), EDDY_OK);
    assert_int_equal(a, TLS_CLIENT_AUTH_REQUIRE);
    assert_string_equal(tls_client_auth_name(a), "require");
    assert_int_equal(tls_parse_client_auth("request", &a), EDDY_OK);
    assert_int_equal(a, TLS_CLIENT_AUTH_REQUEST);
    assert_int_equal(tls_parse_client_auth("none", &a), EDDY_OK);
    assert_int_equal(a, TLS_CLIENT_AUTH_NONE);
    assert_int_equal(tls_parse_client_auth("yes", &a), EDDY_ERR_INVALID);
    assert_int_equal(tls_parse_client_auth("", &a), EDDY_ERR_INVALID);
}

static void test_protected_mode(void **state)
{
    (void)state;
    char err[512];
    struct tls_config t = {0};
    assert_int_equal(tls_server_configure(&t, "", "0.0.0.0:7070", false, err, sizeof(err)),
                     EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "protected mode"));
    assert_int_equal(tls_server_configure(&t, "", "0.0.0.0:7070", true, err, sizeof(err)),
                     EDDY_OK);
    assert_int_equal(tls_server_configure(&t, "", "127.0.0.1:7070", false, err, sizeof(err)),
                     EDDY_OK);
    assert_int_equal(t.client_auth, TLS_CLIENT_AUTH_NONE);
    /* client certificates without a server certificate make no sense */
    assert_int_equal(tls_server_configure(&t, "require", "127.0.0.1:0", false, err,
                                          sizeof(err)),
                     EDDY_ERR_INVALID);
    assert_int_equal(tls_server_configure(&t, "maybe", "127.0.0.1:0", false, err, sizeof(err)),
                     EDDY_ERR_INVALID);
}

/* openssl: a self-signed EC certificate DIR/NAME.crt with its key DIR/NAME.key. */
static void make_cert(const char *dir, const char *name)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s/%s.key -subj /CN=%s -days 1 -out %s/%s.crt 2>/dev/null",
             dir, name, name, dir, name);
    assert_int_equal(system(cmd), 0);
}

static void test_files_checked(void **state)
{
    (void)state;
    char dir[] = "/tmp/eddy-test-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    make_cert(dir, "a");
    make_cert(dir, "b");
    char a_crt[256], a_key[256], b_key[256], missing[256], err[512];
    snprintf(a_crt, sizeof(a_crt), "%s/a.crt", dir);
    snprintf(a_key, sizeof(a_key), "%s/a.key", dir);
    snprintf(b_key, sizeof(b_key), "%s/b.key", dir);
    snprintf(missing, sizeof(missing), "%s/none.crt", dir);

    struct tls_config t = {.cert = a_crt, .key = a_key};
    assert_int_equal(tls_server_configure(&t, "", "0.0.0.0:0", false, err, sizeof(err)), EDDY_OK);
    t = (struct tls_config){.cert = a_crt, .key = b_key};
    assert_int_equal(tls_server_check(&t, err, sizeof(err)), EDDY_ERR_INVALID);
    assert_non_null(strstr(err, "is not the key"));
    t = (struct tls_config){.cert = missing, .key = a_key};
    assert_int_equal(tls_server_check(&t, err, sizeof(err)), EDDY_ERR_IO);
    t = (struct tls_config){.cert = a_crt};
    assert_int_equal(tls_server_check(&t, err, sizeof(err)), EDDY_ERR_INVALID);
    /* request without a CA to verify client certificates against */
    t = (struct tls_config){.cert = a_crt, .key = a_key};
    assert_int_equal(tls_server_configure(&t, "request", "127.0.0.1:0", false, err, sizeof(err)),
                     EDDY_ERR_INVALID);
    /* with --tls-ca the default is request */
    t = (struct tls_config){.cert = a_crt, .key = a_key, .ca = a_crt};
    assert_int_equal(tls_server_configure(&t, "", "127.0.0.1:0", false, err, sizeof(err)),
                     EDDY_OK);
    assert_int_equal(t.client_auth, TLS_CLIENT_AUTH_REQUEST);

    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loopback),
        cmocka_unit_test(test_client_auth_names),
        cmocka_unit_test(test_protected_mode),
        cmocka_unit_test(test_files_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
