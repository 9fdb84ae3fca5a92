/* node/cluster/expsync.c against a real etcd: the key of an experiment and its encoding
 * (checked against the key's name), two nodes' registries agreeing through the watch
 * (create on one, served by the other; a key written or deleted by hand followed), a
 * change made on a version another node has replaced refused rather than lost, and etcd
 * unreachable: changes fail UNAVAILABLE, the definitions last read stay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/etcd.h"
#include "common/log.h"
#include "node/cluster/expsync.h"
#include "tests/support/etcd_proc.h"

/* An experiment 'name' with variants A and B (weights 'wa', 50). */
static void definition(Eddy__V1__Experiment *e, Eddy__V1__Variant *v, Eddy__V1__Variant **vp,
                       const char *name, uint32_t wa)
{
    eddy__v1__experiment__init(e);
    eddy__v1__variant__init(&v[0]);
    eddy__v1__variant__init(&v[1]);
    v[0].name = (char *)"A";
    v[0].weight = wa;
    v[1].name = (char *)"B";
    v[1].weight = 50;
    vp[0] = &v[0];
    vp[1] = &v[1];
    e->name = (char *)name;
    e->variants = vp;
    e->n_variants = 2;
}

/* Wait (10 s at most) until 'r' holds 'name' with variant A at weight 'wa' (0: absent). */
static bool holds(expreg *r, const char *name, uint32_t wa)
{
    int64_t deadline = now_ms() + 10000;
    for (;;) {
        Eddy__V1__Experiment *e = NULL;
        assert_int_equal(expreg_get(r, name, &e), EDDY_OK);
        bool ok = wa == 0 ? e == NULL : e && e->n_variants == 2 && e->variants[0]->weight == wa;
        if (e)
            eddy__v1__experiment__free_unpacked(e, NULL);
        if (ok)
            return true;
        if (now_ms() > deadline)
            return false;
        sleep_ms(10);
    }
}

static void test_key_and_encoding(void **state)
{
    (void)state;
    char key[128];
    assert_true(expsync_key("shop", "ranking", key, sizeof(key)));
    assert_string_equal(key, "/eddy/shop/experiments/ranking");
    assert_false(expsync_key("shop", "ranking", key, 20)); /* does not fit */

    Eddy__V1__Experiment e;
    Eddy__V1__Variant v[2], *vp[2];
    definition(&e, v, vp, "ranking", 50);
    uint8_t buf[256];
    size_t len = eddy__v1__experiment__pack(&e, buf);
    Eddy__V1__Experiment *d = expsync_decode("ranking", buf, len);
    assert_non_null(d);
    assert_string_equal(d->variants[1]->name, "B");
    eddy__v1__experiment__free_unpacked(d, NULL);
    /* under another name's key, not decodable, or not a valid definition: not one */
    assert_null(expsync_decode("other", buf, len));
    assert_null(expsync_decode("ranking", "\xff\xff", 2));
    v[1].name = (char *)"A"; /* two variants named A */
    len = eddy__v1__experiment__pack(&e, buf);
    assert_null(expsync_decode("ranking", buf, len));
}

static void test_nodes_agree_through_etcd(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct etcd_proc *ep = etcd_proc_new();
    assert_non_null(ep);
    etcd_client *ca = etcd_client_new(ep->url, 1000), *cb = etcd_client_new(ep->url, 1000);
    etcd_client *raw = etcd_client_new(ep->url, 2000);
    assert_true(ca && cb && raw);
    expreg *a = NULL, *b = NULL;
    expsync *sa = NULL, *sb = NULL;
    assert_int_equal(expreg_new(NULL, &a), EDDY_OK);
    assert_int_equal(expreg_new(NULL, &b), EDDY_OK);
    assert_int_equal(expsync_new(a, "t", &sa), EDDY_OK);
    assert_int_equal(expsync_new(b, "t", &sb), EDDY_OK);
    Eddy__V1__Experiment e, *out = NULL;
    Eddy__V1__Variant v[2], *vp[2];
    char why[512] = "";

    /* not started (the node has not joined): refused, not kept in memory only */
    definition(&e, v, vp, "early", 50);
    assert_int_equal(expreg_create(a, &e, 1, &out, why, sizeof(why)), EDDY_ERR_UNAVAILABLE);
    assert_non_null(strstr(why, "not joined"));
    assert_true(holds(a, "early", 0));

    /* one written before the nodes start is read at start */
    definition(&e, v, vp, "before", 30);
    uint8_t buf[256];
    size_t len = eddy__v1__experiment__pack(&e, buf);
    assert_int_equal(etcd_put(raw, "/eddy/t/experiments/before", buf, len, 0, NULL), EDDY_OK);
    assert_int_equal(expsync_start(sa, ca, why, sizeof(why)), EDDY_OK);
    assert_int_equal(expsync_start(sb, cb, why, sizeof(why)), EDDY_OK);
    assert_true(holds(a, "before", 30));
    assert_true(holds(b, "before", 30));

    /* created on A: in etcd under its key, served by B */
    definition(&e, v, vp, "ranking", 50);
    assert_int_equal(expreg_create(a, &e, 1000, &out, why, sizeof(why)), EDDY_OK);
    eddy__v1__experiment__free_unpacked(out, NULL);
    struct etcd_kv kv;
    bool found = false;
    assert_int_equal(etcd_get(raw, "/eddy/t/experiments/ranking", &kv, &found), EDDY_OK);
    assert_true(found);
    Eddy__V1__Experiment *stored = expsync_decode("ranking", kv.value, kv.value_len);
    assert_non_null(stored);
    assert_int_equal(stored->created_ms, 1000);
    assert_int_equal(stored->state, EDDY__V1__EXPERIMENT_STATE__EXPERIMENT_STATE_RUNNING);
    eddy__v1__experiment__free_unpacked(stored, NULL);
    etcd_kv_release(&kv);
    assert_true(holds(b, "ranking", 50));
    /* the same name created on B: taken */
    assert_int_equal(expreg_create(b, &e, 2000, NULL, why, sizeof(why)), EDDY_ERR_CONFLICT);

    /* changed on B, seen by A */
    definition(&e, v, vp, "ranking", 70);
    assert_int_equal(expreg_update(b, &e, 3000, NULL, why, sizeof(why)), EDDY_OK);
    assert_true(holds(a, "ranking", 70));

    /* A's registry is behind a change made elsewhere (by hand, the way another node's
     * would land): stopping on A's version must not write the old variants back. Either
     * A has not seen the change (refused: CONFLICT), or it has (stopped with it). */
    for (int round = 0; round < 20; round++) {
        uint32_t w = 100 + (uint32_t)round;
        definition(&e, v, vp, "ranking", w);
        len = eddy__v1__experiment__pack(&e, buf);
        assert_int_equal(etcd_put(raw, "/eddy/t/experiments/ranking", buf, len, 0, NULL),
                         EDDY_OK);
        eddy_err err = expreg_stop(a, "ranking", 4000, NULL, why, sizeof(why));
        assert_true(err == EDDY_OK || err == EDDY_ERR_CONFLICT);
        assert_int_equal(etcd_get(raw, "/eddy/t/experiments/ranking", &kv, &found), EDDY_OK);
        stored = expsync_decode("ranking", kv.value, kv.value_len);
        assert_non_null(stored);
        assert_int_equal(stored->variants[0]->weight, w); /* never lost */
        eddy__v1__experiment__free_unpacked(stored, NULL);
        etcd_kv_release(&kv);
        if (err == EDDY_ERR_CONFLICT)
            assert_non_null(strstr(why, "changed on another node"));
        assert_true(holds(a, "ranking", w));
    }

    /* deleted by hand: gone from both */
    assert_int_equal(etcd_delete(raw, "/eddy/t/experiments/before"), EDDY_OK);
    assert_true(holds(a, "before", 0));
    assert_true(holds(b, "before", 0));

    /* etcd gone: changes fail UNAVAILABLE with the reason, the definitions stay */
    etcd_proc_kill(ep);
    definition(&e, v, vp, "later", 50);
    why[0] = '\0';
    assert_int_equal(expreg_create(a, &e, 5000, NULL, why, sizeof(why)), EDDY_ERR_UNAVAILABLE);
    assert_non_null(strstr(why, "etcd unreachable"));
    assert_true(holds(a, "later", 0));
    assert_true(holds(b, "ranking", 119));

    expsync_free(sa);
    expsync_free(sb);
    expreg_free(a);
    expreg_free(b);
    etcd_client_free(ca);
    etcd_client_free(cb);
    etcd_client_free(raw);
    etcd_proc_free(ep);
}

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_and_encoding),
        cmocka_unit_test(test_nodes_agree_through_etcd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
