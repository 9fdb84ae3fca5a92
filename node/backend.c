/* The state backend interface's shared helper. */
#include "node/backend.h"

#include <stdarg.h>
#include <stdio.h>

void backend_status_set(struct backend_status *st, grpc_status_code code, const char *fmt, ...)
{
    va_list ap;
    st->code = code;
    va_start(ap, fmt);
    vsnprintf(st->message, sizeof(st->message), fmt, ap);
    va_end(ap);
}
