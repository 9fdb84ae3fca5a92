/* node/cluster/ckptpub.c: the etcd record of a checkpoint and which partitions a leaving
 * node checkpoints last. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/cluster/ckptpub.h"

static void test_record_of_a_checkpoint(void **state)
{
    char dir[] = "/tmp/eddy-ckptpub-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct checkpoint_info ci = {0};
    snprintf(ci.path, sizeof(ci.path), "%s/../%s/p00007-00000000000000000042.ckp", dir,
             strrchr(dir, '/') + 1);
    FILE *f = fopen(ci.path, "w");
    assert_non_null(f);
    fclose(f);
    ci.partition = 7;
    ci.seq = 42;
    ci.bytes = 1234;
    ci.crc = 0xdeadbeef;
    ci.created_ms = 1700000000000;
    struct cluster_checkpoint rec;
    ckptpub_record(&ci, "state-1", &rec);
    assert_string_equal(rec.id, "p00007-00000000000000000042.ckp");
    char want[256];
    snprintf(want, sizeof(want), "%s/p00007-00000000000000000042.ckp", dir);
    assert_string_equal(rec.path, want); /* absolute, without the "..": other nodes read it */
    assert_string_equal(rec.node, "state-1");
    assert_int_equal(rec.seq, 42);
    assert_int_equal(rec.bytes, 1234);
    assert_int_equal(rec.crc, 0xdeadbeef);
    assert_int_equal(rec.created_ms, 1700000000000);
    /* the JSON other nodes parse carries the same record */
    char *json = cluster_checkpoint_to_json(&rec);
    struct cluster_checkpoint back;
    assert_int_equal(cluster_checkpoint_from_json(json, strlen(json), &back), EDDY_OK);
    assert_string_equal(back.path, rec.path);
    assert_int_equal(back.seq, 42);
    free(json);
    unlink(want);
    rmdir(dir);

    /* a path that cannot be resolved is kept as given */
    snprintf(ci.path, sizeof(ci.path), "relative/p00001-x.ckp");
    ckptpub_record(&ci, "n", &rec);
    assert_string_equal(rec.path, "relative/p00001-x.ckp");
    assert_string_equal(rec.id, "p00001-x.ckp");
}

static void test_final_checkpoint_choice(void **state)
{
    assert_true(ckptpub_final_wanted(true, false, 1));
    assert_true(ckptpub_final_wanted(false, true, 5)); /* moving away: the target may need it */
    assert_false(ckptpub_final_wanted(true, false, 0)); /* no event: nothing to keep */
    assert_false(ckptpub_final_wanted(false, false, 9)); /* someone else's copy */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_of_a_checkpoint),
        cmocka_unit_test(test_final_checkpoint_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
