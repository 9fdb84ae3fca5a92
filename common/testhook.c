/* Test hooks read from the environment (see testhook.h). */
#include "common/testhook.h"

#include <stdlib.h>
#include <string.h>

int64_t testhook_pause_ms(const char *phase)
{
    const char *env = getenv("EDDY_TEST_PAUSE_AT");
    const char *colon = env ? strchr(env, ':') : NULL;
    size_t len = strlen(phase);
    if (!colon || (size_t)(colon - env) != len || strncmp(env, phase, len) != 0)
        return 0;
    char *end;
    long long ms = strtoll(colon + 1, &end, 10);
    return ms > 0 && *end == '\0' ? ms : 0;
}
