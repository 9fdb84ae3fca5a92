/* Text and gRPC status of each eddy_err. */
#include "common/err.h"

static const struct {
    const char *text;
    grpc_status_code code;
} table[EDDY_ERR__COUNT] = {
    [EDDY_OK] = {"ok", GRPC_STATUS_OK},
    [EDDY_ERR_NOMEM] = {"out of memory", GRPC_STATUS_RESOURCE_EXHAUSTED},
    [EDDY_ERR_INVALID] = {"invalid argument", GRPC_STATUS_INVALID_ARGUMENT},
    [EDDY_ERR_NOT_FOUND] = {"not found", GRPC_STATUS_NOT_FOUND},
    [EDDY_ERR_IO] = {"I/O error", GRPC_STATUS_INTERNAL},
    [EDDY_ERR_CORRUPT] = {"stored data is corrupt", GRPC_STATUS_DATA_LOSS},
    [EDDY_ERR_FULL] = {"queue full", GRPC_STATUS_RESOURCE_EXHAUSTED},
    [EDDY_ERR_TOO_LARGE] = {"over a configured limit", GRPC_STATUS_INVALID_ARGUMENT},
    [EDDY_ERR_UNAVAILABLE] = {"unavailable", GRPC_STATUS_UNAVAILABLE},
    [EDDY_ERR_TIMEOUT] = {"deadline exceeded", GRPC_STATUS_DEADLINE_EXCEEDED},
    [EDDY_ERR_NET] = {"network error", GRPC_STATUS_UNAVAILABLE},
    [EDDY_ERR_NOT_OWNER] = {"not the owner of the partition", GRPC_STATUS_FAILED_PRECONDITION},
    [EDDY_ERR_CONFLICT] = {"conflicting update", GRPC_STATUS_ABORTED},
    [EDDY_ERR_KEY] = {"checkpoint key mismatch", GRPC_STATUS_FAILED_PRECONDITION},
};

const char *eddy_strerror(eddy_err err)
{
    if ((unsigned)err >= EDDY_ERR__COUNT)
        return "unknown error";
    return table[err].text;
}

grpc_status_code eddy_err_to_grpc(eddy_err err)
{
    if ((unsigned)err >= EDDY_ERR__COUNT)
        return GRPC_STATUS_UNKNOWN;
    return table[err].code;
}
