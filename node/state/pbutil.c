/* In-place edits of unpacked protobuf-c messages. */
#include "node/state/pbutil.h"

#include <stdlib.h>
#include <string.h>

void pb_clear_str(char **field)
{
    if (*field && *field != protobuf_c_empty_string)
        free(*field);
    *field = (char *)protobuf_c_empty_string;
}

eddy_err pb_set_str(char **field, const char *val)
{
    if (val && *field && strcmp(*field, val) == 0)
        return EDDY_OK;
    char *copy = NULL;
    if (val && val[0]) {
        copy = strdup(val);
        if (!copy)
            return EDDY_ERR_NOMEM;
    }
    pb_clear_str(field);
    if (copy)
        *field = copy;
    return EDDY_OK;
}

eddy_err pb_grow(void **arr, size_t n, size_t size)
{
    /* Unpacked arrays are allocated at their exact size, so there is no spare capacity to
     * track: grow by one. The arrays edited this way are short (bounded by flags). */
    void *p = realloc(*arr, (n + 1) * size);
    if (!p)
        return EDDY_ERR_NOMEM;
    *arr = p;
    return EDDY_OK;
}
