/* What the store unit tests share: a fresh LevelDB in a temporary directory, opened as a
 * cmocka setup and closed and removed as its teardown. Header-only: include it after
 * <cmocka.h> in one test file each. */
#ifndef EDDY_TEST_STORE_FIXTURE_H
#define EDDY_TEST_STORE_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>

#include "node/state/store.h"

struct fx {
    char dir[64];
    store *s;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/eddy-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    struct store_opts so = {f->dir, 0, 0};
    char err[256];
    assert_int_equal(store_open(&so, &f->s, err, sizeof(err)), EDDY_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    store_close(f->s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

#endif
