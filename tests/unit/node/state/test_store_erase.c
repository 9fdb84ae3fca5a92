/* store_compact_range as DeleteUser's purge: after it, no byte of any file of the database
 * holds a deleted key or any of its overwritten values, whether the versions were still in
 * the memtable or already in tables of lower levels; a survivor's value is still found
 * raw (the byte search can see values). */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>
#include <cmocka.h>

#include "node/state/store.h"
#include "node/state/store_txn.h"

#include "store_fixture.h"

#define PART 3
#define VERSIONS 5
#define RND 64

/* 'n' random bytes but NUL, then a NUL. Not hex: among hex, four bytes in a row (snappy's
 * shortest copy) often repeat earlier ones of a block, so a value stored whole could
 * still be missed by a byte search; among random bytes they practically never do. */
static void random_text(char *out, size_t n)
{
    assert_int_equal(getrandom(out, n, 0), (ssize_t)n);
    for (size_t i = 0; i < n; i++)
        out[i] = out[i] ? out[i] : 1;
    out[n] = '\0';
}

static void user_key(struct store_key *k, const char *id)
{
    key_init(k, PART, T_USER);
    key_str(k, id);
}

/* One committed txn write, then a flush: each version reaches LevelDB as its own write
 * (the dirty set would keep only the last one), as the apply path's flushes do. */
static void commit_put(store *s, const char *id, const char *val)
{
    store_txn *t = store_txn_new(s);
    struct store_key k;
    user_key(&k, id);
    assert_int_equal(store_txn_put(t, &k, val, strlen(val)), EDDY_OK);
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    store_txn_free(t);
    assert_int_equal(store_flush(s), EDDY_OK);
}

/* DeleteUser's way: a txn delete, left in the dirty set for the purge to flush. */
static void commit_del(store *s, const char *id)
{
    store_txn *t = store_txn_new(s);
    struct store_key k;
    user_key(&k, id);
    assert_int_equal(store_txn_del(t, &k), EDDY_OK);
    assert_int_equal(store_txn_commit(t, true), EDDY_OK);
    store_txn_free(t);
    assert_true(store_dirty_bytes(s) > 0);
}

/* The purge of partition PART, as ckptsched's purge_one calls it. */
static int purge(store *s)
{
    struct store_key start, end;
    start.len = 0;
    key_u16(&start, PART);
    key_prefix_end(&start, &end);
    int snapshots = -1;
    assert_int_equal(store_compact_range(s, &start, &end, &snapshots), EDDY_OK);
    return snapshots;
}

/* The number of files of 'dir' whose name ends with 'suffix' ("": every file) holding
 * the bytes of 'needle' anywhere. */
static int files_named_holding(const char *dir, const char *suffix, const char *needle)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int found = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[512];
        size_t nl = strlen(de->d_name), sl = strlen(suffix);
        if (de->d_name[0] == '.' || nl < sl || strcmp(de->d_name + nl - sl, suffix) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        FILE *fp = fopen(path, "rb");
        if (!fp && errno == ENOENT)
            continue; /* a compaction's input, deleted since the listing */
        assert_non_null(fp);
        char *buf = NULL;
        size_t len = 0, cap = 0, got;
        do {
            if (len + 65536 > cap) {
                cap = (len + 65536) * 2;
                buf = realloc(buf, cap);
                assert_non_null(buf);
            }
            got = fread(buf + len, 1, cap - len, fp);
            len += got;
        } while (got > 0);
        fclose(fp);
        if (memmem(buf, len, needle, strlen(needle))) {
            print_message("%s holds a needle\n", de->d_name);
            found++;
        }
        free(buf);
    }
    closedir(d);
    return found;
}

static int files_holding(const char *dir, const char *needle)
{
    return files_named_holding(dir, "", needle);
}

/* files_holding, searched again (up to 10 s) while it finds none. */
static int files_holding_settled(const char *dir, const char *needle)
{
    int found = 0;
    for (int i = 0; i < 1000 && (found = files_holding(dir, needle)) == 0; i++)
        usleep(10000);
    return found;
}

struct case_data {
    char id[RND + 2];        /* the deleted user: "m" + random, between the survivors */
    char vals[VERSIONS][RND + 1];
    char lo[RND + 1], hi[RND + 1]; /* the survivors' values */
};

static void case_init(struct case_data *c)
{
    c->id[0] = 'm';
    random_text(c->id + 1, RND);
    for (size_t i = 0; i < VERSIONS; i++)
        random_text(c->vals[i], RND);
    random_text(c->lo, RND);
    random_text(c->hi, RND);
}

/* A new case on 's': the user table written behind, as the engine has it, and survivors
 * on both sides of the user, which keep its key off every table's first and last key
 * (MANIFEST records those: docs/security.md, "Not reached yet"). */
static void case_start(store *s, struct case_data *c)
{
    case_init(c);
    store_set_behind(s, 1u << T_USER);
    commit_put(s, "a-survivor", c->lo);
    commit_put(s, "z-survivor", c->hi);
}

/* The user's versions [from, to), each its own LevelDB write. */
static void put_versions(store *s, const struct case_data *c, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        commit_put(s, c->id, c->vals[i]);
}

static void assert_erased(const struct fx *f, const struct case_data *c)
{
    assert_int_equal(files_holding(f->dir, c->id), 0);
    for (size_t i = 0; i < VERSIONS; i++)
        assert_int_equal(files_holding(f->dir, c->vals[i]), 0);
    /* the search sees values that are there: a background compaction of LevelDB's may be
     * writing their new table and deleting the old one while the search lists the files
     * (a clean-clone CI missed one once), so it looks again until it sees them */
    assert_true(files_holding_settled(f->dir, c->lo) > 0);
    assert_true(files_holding_settled(f->dir, c->hi) > 0);
    struct store_key k;
    user_key(&k, c->id);
    char *v = (char *)"x";
    size_t n = 0;
    assert_int_equal(store_get(f->s, &k, &v, &n), EDDY_OK);
    assert_null(v);
}

/* Every version still in the memtable: one compaction alone writes it to a table on level
 * 2 with every version inside and never compacts that level. */
static void test_erases_versions_in_memtable(void **state)
{
    struct fx *f = *state;
    struct case_data c;
    case_start(f->s, &c);
    put_versions(f->s, &c, 0, VERSIONS);
    commit_del(f->s, c.id);
    assert_int_equal(purge(f->s), 0);
    assert_erased(f, &c);
}

/* The first versions already in tables (a purge of the partition earlier), the later ones
 * and the delete in the memtable. */
static void test_erases_versions_in_lower_levels(void **state)
{
    struct fx *f = *state;
    struct case_data c;
    case_start(f->s, &c);
    put_versions(f->s, &c, 0, 2);
    assert_int_equal(purge(f->s), 0);
    put_versions(f->s, &c, 2, VERSIONS);
    commit_del(f->s, c.id);
    assert_int_equal(purge(f->s), 0);
    assert_erased(f, &c);
}

/* The old versions in a table LevelDB wrote on its own, the memtable being full (on the
 * deepest level, 2, of a fresh database), and the delete in a later memtable. */
static void test_erases_versions_in_full_memtable(void **state)
{
    struct fx *f = *state;
    store_close(f->s);
    struct store_opts so = {f->dir, 0, 64 << 10};
    char err[256];
    assert_int_equal(store_open(&so, &f->s, err, sizeof(err)), EDDY_OK);
    struct case_data c;
    case_start(f->s, &c);
    put_versions(f->s, &c, 0, VERSIONS);
    /* another partition's rows fill the memtable: the write after it finds it full and
     * LevelDB writes it to a table */
    for (int i = 0; i < 128; i++) {
        store_txn *t = store_txn_new(f->s);
        struct store_key k;
        key_init(&k, PART + 1, T_USER);
        key_u64(&k, (uint64_t)i);
        char val[RND + 1];
        random_text(val, RND);
        char big[16 * RND];
        for (size_t j = 0; j < sizeof(big); j++)
            big[j] = val[j % RND];
        assert_int_equal(store_txn_put(t, &k, big, sizeof(big)), EDDY_OK);
        assert_int_equal(store_txn_commit(t, true), EDDY_OK);
        store_txn_free(t);
        assert_int_equal(store_flush(f->s), EDDY_OK);
    }
    for (int i = 0; i < 1000 && files_named_holding(f->dir, ".ldb", c.vals[0]) == 0; i++)
        usleep(10000); /* LevelDB's background write of the full memtable */
    assert_true(files_named_holding(f->dir, ".ldb", c.vals[0]) > 0);
    commit_del(f->s, c.id);
    assert_int_equal(purge(f->s), 0);
    assert_erased(f, &c);
}

/* A snapshot open at the purge is counted (it keeps what it sees); bounds that could be
 * keys are refused. */
static void test_counts_open_snapshots(void **state)
{
    struct fx *f = *state;
    store_snapshot *snap = store_snapshot_new(f->s);
    assert_non_null(snap);
    assert_int_equal(purge(f->s), 1);
    store_snapshot_free(snap);
    assert_int_equal(purge(f->s), 0);
    struct store_key k, end;
    user_key(&k, "u");
    key_prefix_end(&k, &end);
    assert_int_equal(store_compact_range(f->s, &k, &end, NULL), EDDY_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_erases_versions_in_memtable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_erases_versions_in_lower_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_erases_versions_in_full_memtable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counts_open_snapshots, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
