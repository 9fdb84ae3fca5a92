/* The project's one error type (like curl's CURLcode), with its text and its gRPC status.
 * Conversion from LevelDB's char **errptr lives in node/state/store.c, to gRPC here. */
#ifndef EDDY_ERR_H
#define EDDY_ERR_H

#include <grpc/status.h>

typedef enum eddy_err {
    EDDY_OK = 0,
    EDDY_ERR_NOMEM,        /* allocation failed */
    EDDY_ERR_INVALID,      /* bad argument or malformed input */
    EDDY_ERR_NOT_FOUND,    /* no such user, key or file */
    EDDY_ERR_IO,           /* disk or LevelDB failure */
    EDDY_ERR_CORRUPT,      /* stored data failed to decode */
    EDDY_ERR_FULL,         /* a bounded queue or buffer is full: back off */
    EDDY_ERR_TOO_LARGE,    /* over a configured limit */
    EDDY_ERR_UNAVAILABLE,  /* shutting down, or a peer is unreachable */
    EDDY_ERR_TIMEOUT,      /* a deadline passed */
    EDDY_ERR_NET,          /* bind or connect failed */
    EDDY_ERR_NOT_OWNER,    /* this node does not own the partition (stale epoch) */
    EDDY_ERR_CONFLICT,     /* compare-and-swap lost */
    EDDY_ERR_KEY,          /* encrypted with another key, or encrypted/plain against the config */
    EDDY_ERR__COUNT
} eddy_err;

/* A static, human-readable description of 'err'. */
const char *eddy_strerror(eddy_err err);

/* The canonical gRPC status for 'err'. */
grpc_status_code eddy_err_to_grpc(eddy_err err);

#endif
