/* The gate's decisions with the clock passed in: the role each method needs, a missing,
 * unknown or under-privileged token, the audit flag and the caller it names, per-tenant
 * quotas (flag defaults, overrides from the token file, tenants independent, the retry
 * delay), the metrics, and the audit line's description of a request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/auth.h"
#include "common/tokens.h"
#include "eddy/v1/cluster.pb-c.h"
#include "eddy/v1/eddy.pb-c.h"

#define MS 1000000LL
#define INGEST "/eddy.v1.Eddy/Ingest"
#define RECOMMEND "/eddy.v1.Eddy/Recommend"
#define DELETE "/eddy.v1.Eddy/DeleteUser"

struct fixture {
    char dir[64], path[128];
    metrics *reg;
    auth *a;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/eddy-test-auth-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/tokens", f->dir);
    char k[4][TOKEN_HASH_KEY_LEN];
    token_hash_key("tok-ingest", 10, k[0]);
    token_hash_key("tok-read", 8, k[1]);
    token_hash_key("tok-admin", 9, k[2]);
    token_hash_key("tok-small", 9, k[3]);
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fprintf(fp, "%s tenant=shop roles=ingest,read\n%s tenant=bi roles=read\n"
                "%s tenant=ops roles=admin calls_per_s=0\n"
                "%s tenant=small roles=ingest events_per_s=5 calls_per_s=100\n",
            k[0], k[1], k[2], k[3]);
    fclose(fp);
    f->reg = metrics_new();
    char err[256];
    struct auth_opts o = {.token_file = f->path, .poll_ms = 3600000, .events_per_s = 1000,
                          .calls_per_s = 2, .metrics = f->reg};
    assert_int_equal(auth_new(&o, &f->a, err, sizeof(err)), EDDY_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    auth_free(f->a);
    metrics_free(f->reg);
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct rpc_gate_verdict check(auth *a, const char *method, const char *tok,
                                     size_t events, int64_t now_ns)
{
    struct rpc_gate_verdict v;
    char md[64];
    memset(&v, 0, sizeof(v));
    if (tok)
        snprintf(md, sizeof(md), "%s%s", strchr(tok, ' ') ? "" : "Bearer ", tok);
    auth_check(a, method, tok ? md : NULL, tok ? strlen(md) : 0, NULL, events, now_ns, &v);
    return v;
}

static uint64_t scrape(metrics *reg, const char *series)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(reg, 1 << 20, &text, &len), EDDY_OK);
    const char *p = strstr(text, series);
    uint64_t v = p ? strtoull(p + strlen(series) + 1, NULL, 10) : UINT64_MAX;
    free(text);
    return v;
}

static void test_method_roles(void **state)
{
    (void)state;
    assert_int_equal(auth_method_roles(INGEST), TOKEN_ROLE_INGEST);
    assert_int_equal(auth_method_roles(RECOMMEND), TOKEN_ROLE_READ);
    assert_int_equal(auth_method_roles("/eddy.v1.Eddy/EventCounts"), TOKEN_ROLE_READ);
    assert_int_equal(auth_method_roles(DELETE), TOKEN_ROLE_ADMIN);
    assert_int_equal(auth_method_roles("/eddy.v1.Eddy/Reprocess"), TOKEN_ROLE_ADMIN);
    assert_int_equal(auth_method_roles("/eddy.cluster.v1.Coordinator/Drain"), TOKEN_ROLE_ADMIN);
    assert_int_equal(auth_method_roles("/eddy.v1.Eddy/SomethingNew"), TOKEN_ROLE_ADMIN);
    assert_int_equal(auth_method_roles("/grpc.health.v1.Health/Check"), 0);
    assert_int_equal(
        auth_method_roles("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), 0);
    assert_int_equal(
        auth_method_roles("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"), 0);
    assert_int_equal(auth_method_roles("/eddy.state.v1.State/Apply"), 0);
}

static void test_tokens_and_roles(void **state)
{
    struct fixture *f = *state;
    struct rpc_gate_verdict v = check(f->a, RECOMMEND, NULL, 0, 0);
    assert_int_equal(v.code, GRPC_STATUS_UNAUTHENTICATED);
    assert_false(v.audit);
    v = check(f->a, RECOMMEND, "tok-unknown", 0, 0);
    assert_int_equal(v.code, GRPC_STATUS_UNAUTHENTICATED);
    v = check(f->a, RECOMMEND, "tok-read", 0, 0);
    assert_int_equal(v.code, GRPC_STATUS_OK);
    v = check(f->a, RECOMMEND, "bearer tok-read", 0, 0); /* the scheme is case-insensitive */
    assert_int_equal(v.code, GRPC_STATUS_OK);
    v = check(f->a, RECOMMEND, "Basic tok-read", 0, 0); /* another scheme is no token */
    assert_int_equal(v.code, GRPC_STATUS_UNAUTHENTICATED);
    v = check(f->a, INGEST, "tok-read", 3, 0);
    assert_int_equal(v.code, GRPC_STATUS_PERMISSION_DENIED);
    v = check(f->a, DELETE, "tok-read", 0, 0);
    assert_int_equal(v.code, GRPC_STATUS_PERMISSION_DENIED);
    assert_true(v.audit); /* a refused admin call is audited too */
    assert_int_equal(strncmp(v.who, "bi/sha256:", 10), 0);
    v = check(f->a, DELETE, NULL, 0, 0);
    assert_true(v.audit);
    assert_string_equal(v.who, "anonymous");
    v = check(f->a, DELETE, "tok-admin", 0, 0);
    assert_int_equal(v.code, GRPC_STATUS_OK);
    assert_true(v.audit);
    assert_int_equal(strncmp(v.who, "ops/sha256:", 11), 0);
    v = check(f->a, "/grpc.health.v1.Health/Check", NULL, 0, 0);
    assert_int_equal(v.code, GRPC_STATUS_OK);
    assert_int_equal(scrape(f->reg, "eddy_auth_failures_total{reason=\"missing_token\"}"), 2);
    assert_int_equal(scrape(f->reg, "eddy_auth_failures_total{reason=\"unknown_token\"}"), 2);
    assert_int_equal(scrape(f->reg, "eddy_auth_failures_total{reason=\"permission_denied\"}"),
                     2);
}

static void test_quotas(void **state)
{
    struct fixture *f = *state;
    int64_t t0 = 1000 * MS;
    /* default 2 calls/s per tenant: shop's third call at t0 waits 500 ms */
    assert_int_equal(check(f->a, RECOMMEND, "tok-ingest", 0, t0).code, GRPC_STATUS_OK);
    assert_int_equal(check(f->a, INGEST, "tok-ingest", 10, t0).code, GRPC_STATUS_OK);
    struct rpc_gate_verdict v = check(f->a, RECOMMEND, "tok-ingest", 0, t0);
    assert_int_equal(v.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_int_equal(v.retry_after_ms, 500);
    assert_non_null(strstr(v.msg, "retry after 500 ms"));
    /* another tenant is not affected */
    assert_int_equal(check(f->a, RECOMMEND, "tok-read", 0, t0).code, GRPC_STATUS_OK);
    assert_int_equal(check(f->a, RECOMMEND, "tok-ingest", 0, t0 + 500 * MS).code,
                     GRPC_STATUS_OK);
    /* calls_per_s=0 in the file: unlimited for ops, whatever the flag says */
    for (int i = 0; i < 50; i++)
        assert_int_equal(check(f->a, DELETE, "tok-admin", 0, t0).code, GRPC_STATUS_OK);
    /* events_per_s=5 in the file for 'small': a batch of 5, then 3 more wait 600 ms */
    assert_int_equal(check(f->a, INGEST, "tok-small", 5, t0).code, GRPC_STATUS_OK);
    v = check(f->a, INGEST, "tok-small", 3, t0);
    assert_int_equal(v.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_int_equal(v.retry_after_ms, 600);
    assert_int_equal(check(f->a, INGEST, "tok-small", 3, t0 + 600 * MS).code, GRPC_STATUS_OK);
    assert_int_equal(scrape(f->reg, "eddy_auth_failures_total{reason=\"quota_calls\"}"), 1);
    assert_int_equal(scrape(f->reg, "eddy_auth_failures_total{reason=\"quota_events\"}"), 1);
}

static void test_audit(void **state)
{
    struct fixture *f = *state;
    Eddy__V1__DeleteUserRequest d = EDDY__V1__DELETE_USER_REQUEST__INIT;
    d.user_id = (char *)"u\"1\n";
    char out[256];
    auth_describe_request(&d.base, out, sizeof(out));
    assert_string_equal(out, "user_id=u?1?");
    Eddy__V1__ReprocessRequest r = EDDY__V1__REPROCESS_REQUEST__INIT;
    r.target_case = EDDY__V1__REPROCESS_REQUEST__TARGET_PARTITION;
    r.partition = 0;
    auth_describe_request(&r.base, out, sizeof(out));
    assert_string_equal(out, "partition=0");
    Eddy__Cluster__V1__DrainRequest dr = EDDY__CLUSTER__V1__DRAIN_REQUEST__INIT;
    dr.node_id = (char *)"node-2";
    dr.undo = 1;
    auth_describe_request(&dr.base, out, sizeof(out));
    assert_string_equal(out, "node_id=node-2 undo=true");
    auth_audit(f->a, DELETE, "ops/sha256:0123", &d.base, GRPC_STATUS_OK, 2 * MS);
    auth_audit(f->a, "/eddy.cluster.v1.Coordinator/Drain", "ops/x", &dr.base,
               GRPC_STATUS_PERMISSION_DENIED, MS);
    assert_int_equal(scrape(f->reg, "eddy_admin_calls_total{method=\"DeleteUser\",code=\"OK\"}"),
                     1);
    assert_int_equal(
        scrape(f->reg, "eddy_admin_calls_total{method=\"Drain\",code=\"PermissionDenied\"}"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_method_roles),
        cmocka_unit_test_setup_teardown(test_tokens_and_roles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quotas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
