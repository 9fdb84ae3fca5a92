/* LevelDB's compaction thread, started by the process's first store_open: named
 * "eddy-leveldb" and at the nice value store_set_compaction_nice asked for, while the
 * opener keeps its own name and priority. A binary of its own: LevelDB starts the thread
 * once per process. */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <cmocka.h>

#include "node/state/store.h"

#include "store_fixture.h"

/* The id of this process's thread named 'name', or -1. */
static pid_t thread_named(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    pid_t found = -1;
    for (struct dirent *e; found < 0 && (e = readdir(d)) != NULL;) {
        char path[300], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f)) {
            comm[strcspn(comm, "\n")] = '\0';
            if (strcmp(comm, name) == 0)
                found = (pid_t)strtol(e->d_name, NULL, 10);
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

static int opener_nice; /* the test's own nice value, whatever it was started with */
static int asked;       /* above it: a thread may always lower its own priority */

static void test_compaction_thread_is_niced(void **state)
{
    (void)state;
    pid_t t = thread_named("eddy-leveldb");
    assert_true(t > 0);
    assert_int_equal(getpriority(PRIO_PROCESS, (id_t)t), asked);
    assert_int_equal(getpriority(PRIO_PROCESS, (id_t)gettid()), opener_nice);
    char self[16] = "";
    pthread_getname_np(pthread_self(), self, sizeof(self));
    assert_string_not_equal(self, "eddy-leveldb");
}

int main(void)
{
    opener_nice = getpriority(PRIO_PROCESS, (id_t)gettid());
    asked = opener_nice + 5 <= 19 ? opener_nice + 5 : 19;
    store_set_compaction_nice(asked);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_compaction_thread_is_niced, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
