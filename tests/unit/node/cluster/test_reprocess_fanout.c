/* The ingest node's merge of the state nodes' Reprocess answers (reprocess_merge) and the
 * stage-2 driver's cuts from them (reprocess_collect_cuts), on answers built by hand: no
 * network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "node/cluster/reprocess_driver.h"
#include "node/cluster/reprocess_fanout.h"

/* One node's answer: 'np' partitions starting at 'first_part' (descending, so the merge
 * must sort), 'records' replayed from 'first_seq', the given times, half-lives "1".."3". */
struct node_answer {
    Eddy__V1__ReprocessResponse resp;
    Eddy__V1__ReprocessedPartition parts[4], *pptr[4];
    Eddy__V1__ReprocessParameter params[RP_PARAMS], *pp[RP_PARAMS];
    char values[RP_PARAMS][8];
};

static void answer(struct reprocess_answer *a, struct node_answer *na, const char *node,
                   uint32_t first_part, size_t np, uint64_t records, uint64_t first_seq,
                   int64_t duration, int64_t pause, bool stage2)
{
    memset(a, 0, sizeof(*a));
    snprintf(a->node, sizeof(a->node), "%s", node);
    a->res.code = GRPC_STATUS_OK;
    eddy__v1__reprocess_response__init(&na->resp);
    for (size_t i = 0; i < np; i++) {
        eddy__v1__reprocessed_partition__init(&na->parts[i]);
        na->parts[i].partition = first_part + (uint32_t)(np - 1 - i);
        na->parts[i].next_seq = 100 + na->parts[i].partition;
        na->pptr[i] = &na->parts[i];
    }
    for (int i = 0; i < RP_PARAMS; i++) {
        eddy__v1__reprocess_parameter__init(&na->params[i]);
        snprintf(na->values[i], sizeof(na->values[i]), "%d", i + 1);
        na->params[i].name = (char *)reprocess_param_names[i];
        na->params[i].value = na->values[i];
        na->pp[i] = &na->params[i];
    }
    na->resp.partitions = na->pptr;
    na->resp.n_partitions = np;
    na->resp.records_replayed = records;
    na->resp.first_seq = first_seq;
    na->resp.duration_ms = duration;
    na->resp.pause_ms = pause;
    na->resp.stage2_rebuilt = stage2;
    na->resp.parameters = na->pp;
    na->resp.n_parameters = RP_PARAMS;
    a->resp = &na->resp;
}

/* Three nodes' answers merge into one: partitions sorted, records summed, the earliest
 * first seq of the nodes that replayed any, the longest duration and pause, stage 2 only
 * if every node rebuilt it, the first node's half-lives with the request's new ones. */
static void test_merge(void **state)
{
    (void)state;
    static struct node_answer na[3];
    struct reprocess_answer a[3];
    answer(&a[0], &na[0], "s1", 4, 4, 50, 30, 900, 12, true);
    answer(&a[1], &na[1], "s2", 0, 2, 0, 5, 1500, 3, true); /* replayed nothing: seq 5 ignored */
    answer(&a[2], &na[2], "s3", 2, 2, 70, 20, 100, 40, false);
    int64_t set[RP_PARAMS] = {0};
    set[RP_POPULARITY] = 86400000;
    struct reprocess_merged mg;
    char err[256] = "";
    assert_int_equal(reprocess_merge(a, 3, true, 8, set, &mg, err, sizeof(err)), GRPC_STATUS_OK);
    assert_int_equal(mg.m.n_partitions, 8);
    for (uint32_t p = 0; p < 8; p++)
        assert_int_equal(mg.m.partitions[p]->partition, p);
    assert_int_equal(mg.m.records_replayed, 120);
    assert_int_equal(mg.m.first_seq, 20);
    assert_int_equal(mg.m.duration_ms, 1500);
    assert_int_equal(mg.m.pause_ms, 40);
    assert_false(mg.m.stage2_rebuilt);
    assert_int_equal(mg.m.n_parameters, RP_PARAMS);
    assert_string_equal(mg.m.parameters[RP_AFFINITY]->value, "1");
    assert_string_equal(mg.m.parameters[RP_POPULARITY]->value, "86400000");
    assert_string_equal(mg.m.parameters[RP_NEIGHBOURS]->value, "3");
    assert_string_equal(na[0].values[RP_POPULARITY], "2"); /* the answer itself unchanged */
    reprocess_merged_release(&mg);

    /* no node replayed anything: first seq 0; all rebuilt stage 2 */
    na[0].resp.records_replayed = 0;
    na[2].resp.records_replayed = 0;
    na[2].resp.stage2_rebuilt = true;
    memset(set, 0, sizeof(set));
    assert_int_equal(reprocess_merge(a, 3, false, 8, set, &mg, err, sizeof(err)), GRPC_STATUS_OK);
    assert_int_equal(mg.m.first_seq, 0);
    assert_true(mg.m.stage2_rebuilt);
    assert_string_equal(mg.m.parameters[RP_POPULARITY]->value, "2");
    reprocess_merged_release(&mg);
}

/* The first failed node is the answer; with all, fewer partitions than the map's too. */
static void test_merge_failures(void **state)
{
    (void)state;
    static struct node_answer na[3];
    struct reprocess_answer a[3];
    answer(&a[0], &na[0], "s1", 4, 4, 50, 30, 900, 12, true);
    answer(&a[1], &na[1], "s2", 0, 2, 10, 5, 1500, 3, true);
    answer(&a[2], &na[2], "s3", 2, 2, 70, 20, 100, 40, true);
    int64_t set[RP_PARAMS] = {0};
    struct reprocess_merged mg;
    char err[1024] = "";
    size_t nparts, ok;

    /* a partition moving: 8 rebuilt of 9 */
    assert_int_equal(reprocess_merge(a, 3, true, 9, set, &mg, err, sizeof(err)),
                     GRPC_STATUS_UNAVAILABLE);
    assert_non_null(strstr(err, "only 8 of 9 partitions"));
    assert_int_equal(reprocess_merge(a, 3, false, 9, set, &mg, err, sizeof(err)),
                     GRPC_STATUS_OK); /* one partition asked for: no count */
    reprocess_merged_release(&mg);

    a[1].res.code = GRPC_STATUS_ABORTED;
    snprintf(a[1].res.details, sizeof(a[1].res.details), "busy");
    a[2].res.code = GRPC_STATUS_UNAVAILABLE;
    a[2].resp = NULL;
    assert_ptr_equal(reprocess_answers_failed(a, 3, &nparts, &ok), &a[1]);
    assert_int_equal(nparts, 4);
    assert_int_equal(ok, 1);
    assert_int_equal(reprocess_merge(a, 3, true, 8, set, &mg, err, sizeof(err)),
                     GRPC_STATUS_ABORTED);
    assert_string_equal(err, "state node s2: busy (1 of 3 state nodes finished their partitions)");
    reprocess_merged_release(&mg); /* nothing to release: safe */

    a[1].res.code = GRPC_STATUS_OK; /* an OK status without an answer is a failure too */
    a[1].resp = NULL;
    assert_ptr_equal(reprocess_answers_failed(a, 3, &nparts, &ok), &a[1]);
}

/* The driver's SWAP carries every rebuilt partition's next seq, at most 'total'. */
static void test_collect_cuts(void **state)
{
    (void)state;
    static struct node_answer na[2];
    struct reprocess_answer a[2];
    answer(&a[0], &na[0], "s1", 0, 3, 1, 1, 1, 1, true);
    answer(&a[1], &na[1], "s2", 3, 2, 1, 1, 1, 1, true);
    struct reprocess_cuts c = {0};
    assert_true(reprocess_collect_cuts(a, 2, 5, &c));
    assert_int_equal(c.n, 5);
    uint32_t seen = 0;
    for (size_t i = 0; i < c.n; i++) {
        assert_ptr_equal(c.ptrs[i], &c.arr[i]);
        assert_int_equal(c.ptrs[i]->next_seq, 100 + c.ptrs[i]->partition);
        seen |= 1u << c.ptrs[i]->partition;
    }
    assert_int_equal(seen, 0x1f);
    free(c.arr);
    free(c.ptrs);
    assert_true(reprocess_collect_cuts(a, 2, 4, &c)); /* never past 'total' */
    assert_int_equal(c.n, 4);
    free(c.arr);
    free(c.ptrs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_merge_failures),
        cmocka_unit_test(test_collect_cuts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
